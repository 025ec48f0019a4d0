// The blob upload resources of the distribution API: starting an upload (POST: a session, a monolithic upload
// with ?digest=, or a cross-repository mount with ?mount=&from=), chunks (PATCH, with Content-Range), the final
// PUT (?digest=, verified by the storage), the session's status (GET) and cancelling it (DELETE). Every answer
// about a session carries its Location, Range and Docker-Upload-UUID.
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Digest } from "../../oci/digest.js";
import { isValidName } from "../../oci/reference.js";
import { detachedBody } from "../../util/streams.js";
import { registryError, type RegistryError } from "./errors.js";
import { hasBody, sendEmpty } from "./http-io.js";
import { parseContentRange, uploadRange } from "./http-range.js";
import { requestDigest } from "./names.js";
import type { HandlerContext } from "./routes.js";
import type { RegistryStorage } from "./storage.js";

function uploadLocation(name: string, uuid: string): string {
  return `/v2/${name}/blobs/uploads/${uuid}`;
}

export class UploadHandlers {
  constructor(readonly storage: RegistryStorage) {}

  private uploadHeaders(name: string, uuid: string, size: number): Record<string, string> {
    return { Location: uploadLocation(name, uuid), Range: uploadRange(size), "Docker-Upload-UUID": uuid };
  }

  private created(res: ServerResponse, name: string, digest: Digest): void {
    sendEmpty(res, 201, { Location: `/v2/${name}/blobs/${digest}`, "Docker-Content-Digest": digest });
  }

  /** Chunk bounds from Content-Range (416 when malformed or inconsistent with Content-Length). */
  private chunkRange(req: IncomingMessage, size?: number): { offset?: number; length?: number } {
    const header = req.headers["content-range"];
    const lenHeader = req.headers["content-length"];
    const length = lenHeader !== undefined ? Number(lenHeader) : undefined;
    if (header === undefined) return { length };
    const r = parseContentRange(header);
    const bad = (why: string): RegistryError =>
      registryError("BLOB_UPLOAD_INVALID", {
        message: why,
        detail: { contentRange: header },
        headers: size !== undefined ? { Range: uploadRange(size) } : {},
      });
    if (!r) throw bad("invalid Content-Range (expected <start>-<end>)");
    if (length !== undefined && length !== r.end - r.start + 1)
      throw bad("Content-Range does not match Content-Length");
    return { offset: r.start, length: r.end - r.start + 1 };
  }

  async startUpload(
    req: IncomingMessage,
    res: ServerResponse,
    name: string,
    ctx: HandlerContext,
  ): Promise<void> {
    const mount = ctx.query.get("mount");
    const from = ctx.query.get("from");
    const digestParam = ctx.query.get("digest");
    if (mount !== null) {
      const digest = requestDigest(mount, "mount digest");
      if (from !== null && isValidName(from) && from !== name) {
        await ctx.authorize("pull", from);
        if (await this.storage.mountBlob(name, digest, from)) return this.created(res, name, digest);
      } else if (
        from === name &&
        (await this.storage.blobs.has(digest)) &&
        (await this.storage.blobLinked(name, digest))
      )
        return this.created(res, name, digest);
    }
    if (digestParam !== null && mount === null) {
      // Monolithic upload: the body is the whole blob.
      const digest = requestDigest(digestParam);
      const up = await this.storage.startUpload(name);
      try {
        await this.storage.appendUpload(name, up.uuid, detachedBody(req), {
          length: this.chunkRange(req).length,
        });
        await this.storage.finishUpload(name, up.uuid, digest);
      } catch (err) {
        await this.storage.cancelUpload(name, up.uuid);
        throw err;
      }
      return this.created(res, name, digest);
    }
    const up = await this.storage.startUpload(name);
    sendEmpty(res, 202, this.uploadHeaders(name, up.uuid, 0));
  }

  async patchUpload(req: IncomingMessage, res: ServerResponse, name: string, uuid: string): Promise<void> {
    const before = await this.storage.uploadStatus(name, uuid);
    const { offset, length } = this.chunkRange(req, before.size);
    if (offset !== undefined && offset !== before.size)
      throw registryError("BLOB_UPLOAD_INVALID", {
        message: "chunk out of order: its range does not start at the end of the upload",
        detail: { offset, size: before.size },
        headers: this.uploadHeaders(name, uuid, before.size),
      });
    const st = await this.storage.appendUpload(name, uuid, detachedBody(req), { offset, length });
    sendEmpty(res, 202, this.uploadHeaders(name, uuid, st.size));
  }

  async putUpload(
    req: IncomingMessage,
    res: ServerResponse,
    name: string,
    uuid: string,
    ctx: HandlerContext,
  ): Promise<void> {
    const before = await this.storage.uploadStatus(name, uuid);
    const digest = requestDigest(ctx.query.get("digest"));
    if (hasBody(req)) {
      const { offset, length } = this.chunkRange(req, before.size);
      await this.storage.appendUpload(name, uuid, detachedBody(req), { offset, length });
    }
    await this.storage.finishUpload(name, uuid, digest);
    this.created(res, name, digest);
  }

  async uploadStatus(res: ServerResponse, name: string, uuid: string): Promise<void> {
    const st = await this.storage.uploadStatus(name, uuid);
    sendEmpty(res, 204, this.uploadHeaders(name, uuid, st.size));
  }

  async deleteUpload(res: ServerResponse, name: string, uuid: string): Promise<void> {
    if (!(await this.storage.cancelUpload(name, uuid)))
      throw registryError("BLOB_UPLOAD_UNKNOWN", { detail: { uuid } });
    sendEmpty(res, 204);
  }
}
