// The blob resources of the distribution API: GET/HEAD of a blob visible in the repository (streamed from the
// blob store, with ETag, If-None-Match and one byte range) and DELETE (unlinked from the repository; the blob
// store keeps the bytes). Uploads are upload-handlers.ts.
import { open } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { pipeline } from "node:stream/promises";
import { BLOB_READ_CHUNK } from "../../oci/blob-store.js";
import type { Digest } from "../../oci/digest.js";
import { registryError } from "./errors.js";
import { etagMatches, sendEmpty } from "./http-io.js";
import { requestedRange } from "./http-range.js";
import { pathDigest } from "./names.js";
import type { RegistryStorage } from "./storage.js";

export class BlobHandlers {
  constructor(
    readonly storage: RegistryStorage,
    /** The repository reads of a name go to (ManifestHandlers.repositoryFor: one per on-demand image). */
    readonly repositoryFor: (name: string) => Promise<string> = (name) => Promise.resolve(name),
  ) {}

  async getBlob(req: IncomingMessage, res: ServerResponse, name: string, digestRaw: string): Promise<void> {
    const kind = pathDigest(digestRaw);
    const unknown = registryError("BLOB_UNKNOWN", { detail: { digest: digestRaw } });
    if (kind !== "sha256") throw unknown;
    const digest = digestRaw as Digest;
    if (!(await this.storage.blobLinked(await this.repositoryFor(name), digest))) throw unknown;
    let fh;
    try {
      fh = await open(this.storage.blobs.path(digest), "r");
    } catch {
      throw unknown;
    }
    try {
      const size = (await fh.stat()).size;
      const headers: Record<string, string> = {
        "Docker-Content-Digest": digest,
        ETag: `"${digest}"`,
        "Accept-Ranges": "bytes",
        "Cache-Control": "max-age=31536000",
      };
      if (etagMatches(req.headers["if-none-match"], digest)) return sendEmpty(res, 304, headers);
      const range = requestedRange(req, size, headers.ETag);
      if (range === "unsatisfiable")
        throw registryError("RANGE_INVALID", {
          detail: { size },
          headers: { "Content-Range": `bytes */${size}` },
        });
      const start = range?.start ?? 0;
      const end = range?.end ?? size - 1;
      res.writeHead(range ? 206 : 200, {
        ...headers,
        "Content-Type": "application/octet-stream",
        "Content-Length": String(end - start + 1),
        ...(range ? { "Content-Range": `bytes ${start}-${end}/${size}` } : {}),
      });
      if (req.method === "HEAD" || end < start) {
        res.end();
        return;
      }
      const stream = fh.createReadStream({ start, end, highWaterMark: BLOB_READ_CHUNK, autoClose: true });
      fh = undefined; // the stream closes it
      await pipeline(stream, res);
    } finally {
      await fh?.close();
    }
  }

  async deleteBlob(res: ServerResponse, name: string, digestRaw: string): Promise<void> {
    const kind = pathDigest(digestRaw);
    if (kind !== "sha256" || !(await this.storage.unlinkBlob(name, digestRaw as Digest)))
      throw registryError("BLOB_UNKNOWN", { detail: { digest: digestRaw } });
    sendEmpty(res, 202);
  }
}
