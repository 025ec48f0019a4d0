// The manifest resources of the distribution API: GET/HEAD (from the storage, else from the manifest source;
// served as stored or converted for the client's Accept list), PUT (checked and recorded by the storage), DELETE,
// and the referrers of a manifest (/v2/<name>/referrers/<digest>).
import type { IncomingMessage, ServerResponse } from "node:http";
import { isDigest, sha256Digest, type Digest } from "../../oci/digest.js";
import { DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST } from "../../oci/media-types.js";
import { isValidTag } from "../../oci/reference.js";
import { RegistryError, registryError } from "./errors.js";
import { etagMatches, readBody, sendBytes, sendEmpty } from "./http-io.js";
import type { ManifestSource, StoredManifest } from "./manifest-source.js";
import { MAX_MANIFEST_SIZE, parseManifest } from "./manifests.js";
import { pathDigest, requestDigest } from "./names.js";
import {
  negotiate,
  NotConvertible,
  ociIndexToDocker,
  ociManifestToDocker,
  parseAccept,
} from "./negotiation.js";
import type { HandlerContext } from "./routes.js";
import type { RegistryStorage } from "./storage.js";

export class ManifestHandlers {
  constructor(
    readonly storage: RegistryStorage,
    readonly source?: ManifestSource,
  ) {}

  /** A GET/HEAD/DELETE reference: a tag, or a sha256 digest; 400 for a malformed digest, 404 for the rest. */
  private readReference(name: string, reference: string): string {
    if (reference.includes(":")) {
      if (pathDigest(reference) === "unsupported")
        throw registryError("MANIFEST_UNKNOWN", { detail: { name, reference } });
      return reference;
    }
    if (!isValidTag(reference))
      throw registryError("MANIFEST_UNKNOWN", {
        message: "manifest unknown to registry (invalid tag)",
        detail: { name, reference },
      });
    return reference;
  }

  /** MANIFEST_UNKNOWN, in unknown repositories too (as docker-registry answers; the spec allows either). */
  private async notFound(name: string, reference: string): Promise<RegistryError> {
    return registryError("MANIFEST_UNKNOWN", { detail: { name, reference } });
  }

  /**
   * The repository that reads of `name` go to: `name` itself when the storage has it, else the one the manifest
   * source records it under (ManifestSource.recordedUnder: one per image, whatever the spelling).
   */
  async repositoryFor(name: string): Promise<string> {
    const recorded = this.source?.recordedUnder?.(name) ?? name;
    if (recorded === name || (await this.storage.hasRepository(name))) return name;
    return recorded;
  }

  /** From the storage, else from the manifest source (then recorded by digest in the repository). */
  private async lookup(
    name: string,
    reference: string,
    method: "GET" | "HEAD",
    accept: string[],
    res: ServerResponse,
  ): Promise<StoredManifest | undefined> {
    const repo = await this.repositoryFor(name);
    const stored = await this.storage.getManifest(repo, reference);
    if (stored || !this.source) return stored;
    const abort = new AbortController();
    const onClose = (): void => {
      if (!res.writableFinished) abort.abort();
    };
    res.once("close", onClose);
    let m: StoredManifest | undefined;
    try {
      m = await this.source.resolve(name, reference, { method, accept, signal: abort.signal });
    } finally {
      res.off("close", onClose);
    }
    if (!m) return undefined;
    const digest = sha256Digest(m.bytes);
    if (digest !== m.digest || (isDigest(reference) && reference !== digest))
      throw new Error(
        `manifest source answered ${name}:${reference} with bytes of digest ${digest} (said ${m.digest})`,
      );
    for (const child of m.children ?? []) await this.storage.adoptManifest(repo, child);
    await this.storage.adoptManifest(repo, m);
    return m;
  }

  /** The manifest to serve for the client's Accept list (a stored Docker conversion when needed). */
  private async negotiated(
    name: string,
    m: StoredManifest,
    accept: string[],
    res: ServerResponse,
  ): Promise<StoredManifest> {
    const n = negotiate(m.mediaType, accept);
    if (n.as === "as-is") return m;
    const reject = (why: string): RegistryError =>
      registryError("MANIFEST_UNKNOWN", {
        message: `${m.mediaType} manifest found, but the Accept header does not allow it`,
        detail: { digest: m.digest, mediaType: m.mediaType, accept, reason: why },
      });
    if (n.as === "reject") return Promise.reject(reject("no conversion to the accepted types"));
    try {
      let bytes: Buffer;
      if (m.mediaType === OCI_MANIFEST) bytes = ociManifestToDocker(m.bytes);
      else
        bytes = await ociIndexToDocker(m.bytes, async (d) => {
          const child = await this.lookup(name, d.digest, "GET", accept, res);
          if (!child) throw new NotConvertible(`index entry ${d.digest} is not in the repository`);
          const converted = await this.negotiated(name, child, [DOCKER_MANIFEST], res);
          return { digest: converted.digest, size: converted.bytes.length };
        });
      const converted: StoredManifest = { digest: sha256Digest(bytes), mediaType: n.to, bytes };
      await this.storage.adoptManifest(await this.repositoryFor(name), converted);
      return converted;
    } catch (err) {
      if (err instanceof NotConvertible) throw reject(err.message);
      if (err instanceof RegistryError && err.code === "MANIFEST_UNKNOWN") throw reject(err.message);
      throw err;
    }
  }

  async getManifest(
    req: IncomingMessage,
    res: ServerResponse,
    name: string,
    reference: string,
  ): Promise<void> {
    const ref = this.readReference(name, reference);
    const method = req.method === "HEAD" ? "HEAD" : "GET";
    const accept = parseAccept(req.headers.accept);
    const found = await this.lookup(name, ref, method, accept, res);
    if (!found) throw await this.notFound(name, ref);
    const m = await this.negotiated(name, found, accept, res);
    const headers = {
      "Docker-Content-Digest": m.digest,
      ETag: `"${m.digest}"`,
    };
    if (etagMatches(req.headers["if-none-match"], m.digest)) return sendEmpty(res, 304, headers);
    sendBytes(res, 200, m.mediaType, m.bytes, headers);
  }

  async putManifest(
    req: IncomingMessage,
    res: ServerResponse,
    name: string,
    reference: string,
  ): Promise<void> {
    if (reference.includes(":")) requestDigest(reference, "manifest digest");
    else if (!isValidTag(reference))
      throw registryError("MANIFEST_INVALID", { message: "invalid tag", detail: { tag: reference } });
    const contentType = (req.headers["content-type"] ?? "").split(";")[0].trim().toLowerCase();
    if (!contentType)
      throw registryError("MANIFEST_INVALID", {
        message: "Content-Type is required (the manifest's media type)",
      });
    const bytes = await readBody(req, MAX_MANIFEST_SIZE);
    const digest = await this.storage.putManifest(name, reference, bytes, contentType);
    const headers: Record<string, string> = {
      Location: `/v2/${name}/manifests/${digest}`,
      "Docker-Content-Digest": digest,
    };
    const subject = (() => {
      try {
        return parseManifest(bytes, contentType).subject;
      } catch {
        return undefined;
      }
    })();
    if (subject) headers["OCI-Subject"] = subject;
    sendEmpty(res, 201, headers);
  }

  async deleteManifest(res: ServerResponse, name: string, reference: string): Promise<void> {
    const ref = this.readReference(name, reference);
    if (!(await this.storage.deleteManifest(name, ref))) throw await this.notFound(name, ref);
    sendEmpty(res, 202);
  }

  async referrers(res: ServerResponse, name: string, digestRaw: string, ctx: HandlerContext): Promise<void> {
    const kind = pathDigest(digestRaw);
    // Also for a repository nothing was pushed to (yet): a registry with the referrers API must not answer it with
    // 404, which clients read as "no referrers API" (and fall back to the tag schema). The name was validated by
    // the route; storage.referrers only reads, so nothing is created for it.
    const artifactType = ctx.query.get("artifactType") ?? undefined;
    const manifests =
      kind === "sha256" ? await this.storage.referrers(name, digestRaw as Digest, artifactType) : [];
    const body = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests }));
    sendBytes(
      res,
      200,
      OCI_INDEX,
      body,
      artifactType !== undefined ? { "OCI-Filters-Applied": "artifactType" } : {},
    );
  }
}
