// The OCI distribution API (v1.1) over RegistryStorage: the dispatcher of a parsed, authorized /v2 route to the
// handlers of its resource (catalog-handlers.ts, manifest-handlers.ts, blob-handlers.ts, upload-handlers.ts).
// Routes and their checks are routes.ts and names.ts; server.ts wraps this with auth, extra routes, error
// responses and accounting.
import type { IncomingMessage, ServerResponse } from "node:http";
import { BlobHandlers } from "./blob-handlers.js";
import { CatalogHandlers } from "./catalog-handlers.js";
import { registryError } from "./errors.js";
import { JSON_TYPE, sendBytes } from "./http-io.js";
import { ManifestHandlers } from "./manifest-handlers.js";
import type { ManifestSource } from "./manifest-source.js";
import type { HandlerContext, Route } from "./routes.js";
import type { RegistryStorage } from "./storage.js";
import { UploadHandlers } from "./upload-handlers.js";

export class Distribution {
  private readonly catalogs: CatalogHandlers;
  private readonly manifests: ManifestHandlers;
  private readonly blobs: BlobHandlers;
  private readonly uploads: UploadHandlers;

  constructor(
    readonly storage: RegistryStorage,
    readonly source?: ManifestSource,
  ) {
    this.catalogs = new CatalogHandlers(storage, source);
    this.manifests = new ManifestHandlers(storage, source);
    this.blobs = new BlobHandlers(storage, (name) => this.manifests.repositoryFor(name));
    this.uploads = new UploadHandlers(storage);
  }

  /** Dispatches a parsed, authorized /v2 route (the method is already checked). */
  async handle(req: IncomingMessage, res: ServerResponse, route: Route, ctx: HandlerContext): Promise<void> {
    const method = req.method ?? "GET";
    switch (route.kind) {
      case "base":
        return sendBytes(res, 200, JSON_TYPE, Buffer.from("{}"));
      case "catalog":
        return this.catalogs.catalog(res, ctx);
      case "tags":
        return this.catalogs.tags(res, route.name, ctx);
      case "manifest":
        if (method === "PUT") return this.manifests.putManifest(req, res, route.name, route.reference);
        if (method === "DELETE") return this.manifests.deleteManifest(res, route.name, route.reference);
        return this.manifests.getManifest(req, res, route.name, route.reference);
      case "referrers":
        return this.manifests.referrers(res, route.name, route.digest, ctx);
      case "blob":
        if (method === "DELETE") return this.blobs.deleteBlob(res, route.name, route.digest);
        return this.blobs.getBlob(req, res, route.name, route.digest);
      case "upload-start":
        return this.uploads.startUpload(req, res, route.name, ctx);
      case "upload":
        if (method === "PATCH") return this.uploads.patchUpload(req, res, route.name, route.uuid);
        if (method === "PUT") return this.uploads.putUpload(req, res, route.name, route.uuid, ctx);
        if (method === "DELETE") return this.uploads.deleteUpload(res, route.name, route.uuid);
        return this.uploads.uploadStatus(res, route.name, route.uuid);
      default:
        throw registryError("NOT_FOUND", { message: "no such route in the registry API" });
    }
  }
}
