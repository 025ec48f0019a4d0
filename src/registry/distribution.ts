// The OCI distribution API (v1.1) over RegistryStorage: route parsing and validation of names, tags and digests
// (before anything touches the filesystem), manifest checks, content negotiation (an OCI image is served as
// Docker schema 2 to clients that accept only that), byte ranges, and the request handlers. server.ts wraps
// them with auth, extra routes, error responses and accounting.
import { open } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { pipeline } from "node:stream/promises";
import { BLOB_READ_CHUNK } from "../oci/blob-store.js";
import { isDigest, sha256Digest, type Digest } from "../oci/digest.js";
import {
  DOCKER_CONFIG,
  DOCKER_LAYER_GZIP,
  DOCKER_MANIFEST,
  DOCKER_MANIFEST_LIST,
  OCI_CONFIG,
  OCI_INDEX,
  OCI_LAYER_GZIP,
  OCI_MANIFEST,
} from "../oci/media-types.js";
import { detachedBody } from "../util/streams.js";
import { RegistryError } from "./errors.js";
import type { ManifestSource, StoredManifest } from "./manifest-source.js";
import { requestedRange } from "./http-range.js";
import { MAX_MANIFEST_SIZE, uploadRange, type RegistryStorage } from "./storage.js";

// ---- names, tags, digests ----

/** Repository names (distribution spec). */
export const NAME_RE = /^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$/;
export const TAG_RE = /^[\w][\w.-]{0,127}$/;
/** docker-registry's limit (clients limit host + "/" + name to 255 too). */
export const MAX_NAME_LENGTH = 255;
/** The digest grammar of the image spec: algorithm ":" encoded. */
const DIGEST_GRAMMAR = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

export function isValidName(s: string): boolean {
  return s.length > 0 && s.length <= MAX_NAME_LENGTH && NAME_RE.test(s);
}

export function isValidTag(s: string): boolean {
  return TAG_RE.test(s);
}

/**
 * The order of tag lists, and of their `n`/`last` paging: the spec's "lexical order (i.e. case-insensitive
 * alphanumeric order)", comparing lowercased code units (tags are ASCII, so this is Unicode case folding, which
 * maps to lowercase: "_" sorts before letters); tags equal but for case by plain code units ("A" < "a"), so the
 * order is total and `last=X` continues after exactly X. Repository names are lowercase, so for them it is plain
 * code-unit order.
 */
export function compareTags(a: string, b: string): number {
  const [la, lb] = [a.toLowerCase(), b.toLowerCase()];
  if (la !== lb) return la < lb ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * "sha256" for the digests this registry stores; "unsupported" for well-formed digests of other algorithms
 * (sha512, or unregistered ones such as md5); "invalid" for anything else (sha256 with a wrong length...).
 */
export function classifyDigest(s: string): "sha256" | "unsupported" | "invalid" {
  if (isDigest(s)) return "sha256";
  if (s.length > 1024 || !DIGEST_GRAMMAR.test(s)) return "invalid";
  const [alg, enc] = [s.slice(0, s.indexOf(":")), s.slice(s.indexOf(":") + 1)];
  if (alg === "sha256") return "invalid";
  if (alg === "sha512") return /^[a-f0-9]{128}$/.test(enc) ? "unsupported" : "invalid";
  return "unsupported";
}

/** A digest from the request (path or ?digest=): sha256, else 400 DIGEST_INVALID / UNSUPPORTED. */
export function requestDigest(s: string | null | undefined, what = "digest"): Digest {
  if (s === null || s === undefined || s === "")
    throw new RegistryError(400, "DIGEST_INVALID", `${what} is missing`);
  const kind = classifyDigest(s);
  if (kind === "sha256") return s as Digest;
  if (kind === "unsupported")
    throw new RegistryError(400, "UNSUPPORTED", "digest algorithm not supported (sha256 only)", {
      digest: s,
    });
  throw new RegistryError(400, "DIGEST_INVALID", `invalid ${what}`, { digest: s });
}

/** Names that only a path traversal attempt produces: answered 404 whatever else is wrong with them. */
function looksLikeTraversal(name: string): boolean {
  return (
    name.includes("%") ||
    name.includes("\\") ||
    name.includes("//") ||
    name.startsWith("/") ||
    name.endsWith("/") ||
    name.split("/").some((seg) => seg === "." || seg === ".." || seg === "")
  );
}

export function checkName(name: string): string {
  if (isValidName(name)) return name;
  if (looksLikeTraversal(name))
    throw new RegistryError(404, "NAME_UNKNOWN", "repository name not known to registry", { name });
  throw new RegistryError(400, "NAME_INVALID", "invalid repository name", { name });
}

// ---- manifests ----

export const MANIFEST_MEDIA_TYPES: ReadonlySet<string> = new Set([
  OCI_MANIFEST,
  OCI_INDEX,
  DOCKER_MANIFEST,
  DOCKER_MANIFEST_LIST,
]);
const DOCKER_SCHEMA1 = [
  "application/vnd.docker.distribution.manifest.v1+json",
  "application/vnd.docker.distribution.manifest.v1+prettyjws",
];
const DOCKER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
const OCI_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
const MEDIA_TYPE_RE = /^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$/;

export interface ParsedDescriptor {
  mediaType: string;
  digest: Digest;
  size: number;
  /** A foreign / non-distributable layer (fetched from its urls; not required in the blob store). */
  foreign: boolean;
  platform?: { architecture: string; os: string; variant?: string; [k: string]: unknown };
  annotations?: Record<string, string>;
  urls?: string[];
}

export interface ParsedManifest {
  kind: "image" | "index";
  /** Blobs named (image manifests: config first, then layers). */
  blobs: ParsedDescriptor[];
  /** Manifests named (indexes). */
  manifests: ParsedDescriptor[];
  subject?: Digest;
  artifactType?: string;
  annotations?: Record<string, string>;
  json: Record<string, unknown>;
}

function invalid(message: string, detail?: unknown): RegistryError {
  return new RegistryError(400, "MANIFEST_INVALID", message, detail);
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function stringMap(x: unknown, where: string): Record<string, string> | undefined {
  if (x === undefined) return undefined;
  if (!isObject(x) || !Object.values(x).every((v) => typeof v === "string"))
    throw invalid(`${where} must be an object of strings`);
  return x as Record<string, string>;
}

function descriptor(x: unknown, where: string): ParsedDescriptor {
  if (!isObject(x)) throw invalid(`${where} is not a descriptor`, { field: where });
  const { mediaType, digest, size } = x;
  if (typeof mediaType !== "string" || !MEDIA_TYPE_RE.test(mediaType))
    throw invalid(`${where}.mediaType is missing or invalid`, { field: where });
  if (typeof digest !== "string" || !isDigest(digest))
    throw invalid(
      typeof digest === "string" && classifyDigest(digest) === "unsupported"
        ? `${where}.digest uses an unsupported algorithm (sha256 only)`
        : `${where}.digest is missing or invalid`,
      { field: where, digest },
    );
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0)
    throw invalid(`${where}.size is missing or invalid`, { field: where });
  const d: ParsedDescriptor = { mediaType, digest, size, foreign: false };
  d.annotations = stringMap(x.annotations, `${where}.annotations`);
  if (x.urls !== undefined) {
    if (!Array.isArray(x.urls) || !x.urls.every((u) => typeof u === "string"))
      throw invalid(`${where}.urls must be an array of strings`);
    d.urls = x.urls as string[];
  }
  d.foreign =
    (mediaType === DOCKER_FOREIGN_GZIP ||
      mediaType.startsWith("application/vnd.oci.image.layer.nondistributable")) &&
    (d.urls?.length ?? 0) > 0;
  if (x.platform !== undefined) {
    const p = x.platform;
    if (!isObject(p) || typeof p.architecture !== "string" || typeof p.os !== "string")
      throw invalid(`${where}.platform needs architecture and os`);
    d.platform = p as ParsedDescriptor["platform"];
  }
  return d;
}

/**
 * Parses and checks a manifest of one of the four supported types (OCI image manifest and index, Docker schema 2
 * manifest and manifest list) given as `mediaType` (the Content-Type it was pushed with). 400 MANIFEST_INVALID
 * for anything else.
 */
export function parseManifest(bytes: Buffer, mediaType: string): ParsedManifest {
  if (DOCKER_SCHEMA1.includes(mediaType))
    throw invalid("Docker schema 1 manifests are not supported", { mediaType });
  if (!MANIFEST_MEDIA_TYPES.has(mediaType)) throw invalid("unsupported manifest media type", { mediaType });
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString("utf8"));
  } catch {
    throw invalid("manifest is not valid JSON");
  }
  if (!isObject(json)) throw invalid("manifest is not a JSON object");
  if (json.schemaVersion !== 2)
    throw invalid("schemaVersion must be 2", { schemaVersion: json.schemaVersion });
  if (json.mediaType !== undefined && json.mediaType !== mediaType)
    throw invalid("the manifest's mediaType does not match its Content-Type", {
      mediaType: json.mediaType,
      contentType: mediaType,
    });
  const out: ParsedManifest = { kind: "image", blobs: [], manifests: [], json };
  if (json.artifactType !== undefined) {
    if (typeof json.artifactType !== "string" || !MEDIA_TYPE_RE.test(json.artifactType))
      throw invalid("artifactType is invalid");
    out.artifactType = json.artifactType;
  }
  out.annotations = stringMap(json.annotations, "annotations");
  if (json.subject !== undefined) out.subject = descriptor(json.subject, "subject").digest;
  if (mediaType === OCI_INDEX || mediaType === DOCKER_MANIFEST_LIST) {
    out.kind = "index";
    if (!Array.isArray(json.manifests)) throw invalid("manifests must be an array");
    out.manifests = json.manifests.map((d, i) => descriptor(d, `manifests[${i}]`));
  } else {
    if (json.manifests !== undefined) throw invalid("an image manifest has no manifests");
    const config = descriptor(json.config, "config");
    if (!Array.isArray(json.layers)) throw invalid("layers must be an array");
    out.blobs = [config, ...json.layers.map((d, i) => descriptor(d, `layers[${i}]`))];
    if (out.artifactType === undefined && mediaType === OCI_MANIFEST && out.subject)
      out.artifactType = config.mediaType;
  }
  return out;
}

// ---- content negotiation ----

/** The media types of an Accept header (parameters dropped, lowercased); [] when absent. */
export function parseAccept(header: string | string[] | undefined): string[] {
  const all = Array.isArray(header) ? header.join(",") : (header ?? "");
  return all
    .split(",")
    .map((s) => s.split(";")[0].trim().toLowerCase())
    .filter(Boolean);
}

const DOCKER_SCHEMA2_TYPES = new Set([DOCKER_MANIFEST, DOCKER_MANIFEST_LIST]);

/**
 * What to serve for a stored manifest given the client's Accept list: the manifest as it is; or its Docker
 * schema 2 conversion (an OCI manifest or index, to a client that accepts the Docker type but not the OCI one);
 * or `reject` (an OCI manifest that a Docker-only client cannot be given).
 */
export function negotiate(
  mediaType: string,
  accept: string[],
): { as: "as-is" } | { as: "docker"; to: string } | { as: "reject" } {
  if (
    accept.length === 0 ||
    accept.includes("*/*") ||
    accept.includes("application/*") ||
    accept.includes(mediaType)
  )
    return { as: "as-is" };
  if (mediaType === OCI_MANIFEST && accept.includes(DOCKER_MANIFEST))
    return { as: "docker", to: DOCKER_MANIFEST };
  if (mediaType === OCI_INDEX && accept.includes(DOCKER_MANIFEST_LIST))
    return { as: "docker", to: DOCKER_MANIFEST_LIST };
  if (
    (mediaType === OCI_MANIFEST || mediaType === OCI_INDEX) &&
    accept.some((t) => DOCKER_SCHEMA2_TYPES.has(t))
  )
    return { as: "reject" };
  return { as: "as-is" };
}

/** Why a manifest cannot be converted: thrown by the converters, becomes a 404's detail. */
export class NotConvertible extends Error {}

function withOptional<T extends Record<string, unknown>>(o: T, extra: Record<string, unknown>): T {
  for (const [k, v] of Object.entries(extra)) if (v !== undefined) (o as Record<string, unknown>)[k] = v;
  return o;
}

/**
 * An OCI image manifest as Docker schema 2 (same config and layer blobs: the config's JSON is Docker's image
 * config, gzip layers are Docker's rootfs.diff.tar.gzip). Annotations are kept (Docker ignores them; containerd's
 * snapshotters read them); subject and other OCI-only fields are dropped. Throws NotConvertible for artifacts,
 * non-image configs and layers Docker schema 2 cannot describe (uncompressed, zstd).
 */
export function ociManifestToDocker(bytes: Buffer): Buffer {
  const m = parseManifest(bytes, OCI_MANIFEST);
  const config = m.blobs[0];
  if (m.json.artifactType !== undefined)
    throw new NotConvertible("the manifest is an artifact, not an image");
  if (config.mediaType !== OCI_CONFIG && config.mediaType !== DOCKER_CONFIG)
    throw new NotConvertible(`the config is ${config.mediaType}, not an image config`);
  const layers = m.blobs.slice(1).map((l) => {
    let mediaType: string;
    if (l.mediaType === OCI_LAYER_GZIP || l.mediaType === DOCKER_LAYER_GZIP) mediaType = DOCKER_LAYER_GZIP;
    else if (l.mediaType === OCI_NONDISTRIBUTABLE_GZIP || l.mediaType === DOCKER_FOREIGN_GZIP)
      mediaType = DOCKER_FOREIGN_GZIP;
    else
      throw new NotConvertible(
        `layer ${l.digest} is ${l.mediaType}; Docker schema 2 describes gzip-compressed layers only`,
      );
    return withOptional(
      { mediaType, size: l.size, digest: l.digest },
      { urls: l.urls, annotations: l.annotations },
    );
  });
  const out = withOptional(
    {
      schemaVersion: 2,
      mediaType: DOCKER_MANIFEST,
      config: withOptional(
        { mediaType: DOCKER_CONFIG, size: config.size, digest: config.digest },
        { annotations: config.annotations },
      ),
      layers,
    },
    { annotations: m.annotations },
  );
  return Buffer.from(JSON.stringify(out));
}

/**
 * An OCI index as a Docker manifest list: each OCI image manifest in it is converted (with `convertChild`, which
 * returns the converted child's descriptor); Docker manifests are kept; anything else is NotConvertible.
 */
export async function ociIndexToDocker(
  bytes: Buffer,
  convertChild: (d: ParsedDescriptor) => Promise<{ digest: Digest; size: number }>,
): Promise<Buffer> {
  const m = parseManifest(bytes, OCI_INDEX);
  if (m.json.artifactType !== undefined) throw new NotConvertible("the index is an artifact");
  const manifests = [];
  for (const d of m.manifests) {
    if (!d.platform) throw new NotConvertible(`index entry ${d.digest} has no platform`);
    let child: { mediaType: string; digest: Digest; size: number };
    if (d.mediaType === DOCKER_MANIFEST)
      child = { mediaType: DOCKER_MANIFEST, digest: d.digest, size: d.size };
    else if (d.mediaType === OCI_MANIFEST) child = { mediaType: DOCKER_MANIFEST, ...(await convertChild(d)) };
    else throw new NotConvertible(`index entry ${d.digest} is ${d.mediaType}`);
    manifests.push(withOptional(child, { platform: d.platform, annotations: d.annotations }));
  }
  return Buffer.from(
    JSON.stringify(
      withOptional(
        { schemaVersion: 2, mediaType: DOCKER_MANIFEST_LIST, manifests },
        { annotations: m.annotations },
      ),
    ),
  );
}

// ---- byte ranges ----

// Read by http-range.ts (shared with the binary cache endpoint); exported here too for the tests.
export { parseRange } from "./http-range.js";

/** Content-Range of a PATCH/PUT chunk: "start-end" (inclusive), also "bytes start-end[/total]"; null if malformed. */
export function parseContentRange(header: string): { start: number; end: number } | null {
  const m = /^(?:bytes[ =])?(\d+)-(\d+)(?:\/(?:\d+|\*))?$/.exec(header.trim());
  if (!m) return null;
  const start = Number(m[1]);
  const end = Number(m[2]);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || end < start - 1) return null;
  return { start, end };
}

// ---- routes ----

export type Route =
  | { kind: "base" }
  | { kind: "catalog" }
  | { kind: "token" }
  | { kind: "manifest"; name: string; reference: string }
  | { kind: "blob"; name: string; digest: string }
  | { kind: "upload-start"; name: string }
  | { kind: "upload"; name: string; uuid: string }
  | { kind: "tags"; name: string }
  | { kind: "referrers"; name: string; digest: string }
  | { kind: "unknown" };

/**
 * The route of a raw request path (not decoded: names, tags and digests have no characters that need escapes,
 * so an escape is an error, never a way around the checks). undefined for paths outside /v2. Throws the
 * RegistryError for an invalid repository name.
 */
export function parseRoute(path: string): Route | undefined {
  if (path !== "/v2" && !path.startsWith("/v2/")) return undefined;
  if (path === "/v2" || path === "/v2/") return { kind: "base" };
  if (path === "/v2/_catalog") return { kind: "catalog" };
  if (path === "/v2/token") return { kind: "token" };
  const rest = path.slice(4);
  let m: RegExpExecArray | null;
  let route: Route;
  if ((m = /^(.+)\/blobs\/uploads\/?$/.exec(rest))) route = { kind: "upload-start", name: m[1] };
  else if ((m = /^(.+)\/blobs\/uploads\/([^/]+)$/.exec(rest)))
    route = { kind: "upload", name: m[1], uuid: m[2] };
  else if ((m = /^(.+)\/manifests\/([^/]+)$/.exec(rest)))
    route = { kind: "manifest", name: m[1], reference: m[2] };
  else if ((m = /^(.+)\/blobs\/([^/]+)$/.exec(rest))) route = { kind: "blob", name: m[1], digest: m[2] };
  else if ((m = /^(.+)\/referrers\/([^/]+)$/.exec(rest)))
    route = { kind: "referrers", name: m[1], digest: m[2] };
  else if ((m = /^(.+)\/tags\/list$/.exec(rest))) route = { kind: "tags", name: m[1] };
  else return { kind: "unknown" };
  checkName(route.name);
  return route;
}

const ALLOWED: Record<Route["kind"], string[]> = {
  base: ["GET", "HEAD"],
  catalog: ["GET"],
  token: ["GET"],
  manifest: ["GET", "HEAD", "PUT", "DELETE"],
  blob: ["GET", "HEAD", "DELETE"],
  "upload-start": ["POST"],
  upload: ["GET", "PATCH", "PUT", "DELETE"],
  tags: ["GET"],
  referrers: ["GET"],
  unknown: [],
};

/** A short name of the route for logs and metrics ("manifest.get", "upload.patch"...). */
export function routeName(route: Route | undefined, method: string): string {
  if (!route) return "other";
  if (route.kind === "base" || route.kind === "catalog" || route.kind === "token" || route.kind === "unknown")
    return route.kind;
  return `${route.kind}.${method.toLowerCase()}`;
}

/** 405 for a method the route does not have. */
export function checkMethod(route: Route, method: string): void {
  const allowed = ALLOWED[route.kind];
  if (route.kind === "unknown")
    throw new RegistryError(404, "NOT_FOUND", "no such route in the registry API");
  if (!allowed.includes(method))
    throw new RegistryError(405, "UNSUPPORTED", `method ${method} not allowed here`, undefined, {
      Allow: allowed.join(", "),
    });
}

/** What a request needs: pull or push on a repository (undefined for the catalog). */
export function routeAccess(
  route: Route,
  method: string,
): { action: "pull" | "push"; repo: string | undefined } | undefined {
  if (route.kind === "base" || route.kind === "token" || route.kind === "unknown") return undefined;
  if (route.kind === "catalog") return { action: "pull", repo: undefined };
  const push =
    !(method === "GET" || method === "HEAD") || route.kind === "upload" || route.kind === "upload-start";
  return { action: push ? "push" : "pull", repo: route.name };
}

// ---- handlers ----

export interface HandlerContext {
  /** Authorizes an extra repository (cross-repository mounts need pull on `from`); throws RegistryError. */
  authorize(action: "pull" | "push", repo: string): Promise<void>;
  query: URLSearchParams;
}

const JSON_TYPE = "application/json";

function sendEmpty(res: ServerResponse, status: number, headers: Record<string, string> = {}): void {
  res.writeHead(status, { ...headers, "Content-Length": "0" });
  res.end();
}

function sendBytes(
  res: ServerResponse,
  status: number,
  contentType: string,
  body: Buffer,
  headers: Record<string, string> = {},
): void {
  res.writeHead(status, { ...headers, "Content-Type": contentType, "Content-Length": String(body.length) });
  res.end(body);
}

/**
 * How much of a too-large request body is read (and thrown away) before its 413, and for how long. A server that
 * answers and closes while the client is still sending resets the connection, and the client then usually sees
 * EPIPE/ECONNRESET instead of the error; so the rest of a body is read first and the connection stays usable.
 * Reading costs bandwidth and a connection, not memory; these bounds keep a client from holding either forever
 * (a slow sender or an endless chunked body): beyond them the server answers and closes (Connection: close).
 */
const DRAIN_MAX_BYTES = 16 << 20;
const DRAIN_MAX_MS = 30_000;

/**
 * Reads a request body of at most `limit` bytes. Beyond, 413 SIZE_INVALID once the body has ended (read to its
 * end within DRAIN_MAX_BYTES and DRAIN_MAX_MS), or at once when its Content-Length is over DRAIN_MAX_BYTES: a
 * body that could not be read to its end anyway is not worth reading at all.
 */
function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const tooLarge = new RegistryError(413, "SIZE_INVALID", "request body too large", { limit });
  const declared = Number(req.headers["content-length"]);
  if (Number.isFinite(declared) && declared > Math.max(limit, DRAIN_MAX_BYTES))
    return Promise.reject(tooLarge);
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    let timer: NodeJS.Timeout | undefined;
    let settled = false;
    // Events, not `for await`: leaving that loop early destroys the request, and with it the connection.
    const settle = (err?: Error): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.off("data", onData);
      if (err) {
        req.pause(); // not drained: the error response closes the connection (sendError)
        reject(err);
      } else resolve(Buffer.concat(chunks));
    };
    const onData = (c: Buffer): void => {
      n += c.length;
      if (n <= limit) {
        chunks.push(c);
        return;
      }
      chunks.length = 0; // over the limit: the rest is only read to its end
      timer ??= setTimeout(() => settle(tooLarge), DRAIN_MAX_MS);
      if (n > DRAIN_MAX_BYTES) settle(tooLarge);
    };
    req.on("data", onData);
    req.once("end", () => settle(n > limit ? tooLarge : undefined));
    req.once("error", (err) => settle(err));
    req.once("close", () => settle(new Error("request aborted")));
  });
}

function etagMatches(header: string | undefined, digest: string): boolean {
  if (!header) return false;
  return header.split(",").some((t) => {
    const v = t.trim().replace(/^W\//, "");
    return v === "*" || v === `"${digest}"`;
  });
}

function hasBody(req: IncomingMessage): boolean {
  const len = req.headers["content-length"];
  if (len !== undefined) return Number(len) > 0;
  return req.headers["transfer-encoding"] !== undefined;
}

function uploadLocation(name: string, uuid: string): string {
  return `/v2/${name}/blobs/uploads/${uuid}`;
}

/**
 * Pagination of tags/list and _catalog: `n` (limit) and `last` (exclusive start, in the order of compareTags,
 * which `items` are sorted by; `last` need not be in the list).
 */
function paginate(
  items: string[],
  query: URLSearchParams,
  linkBase: string,
): { page: string[]; link?: string } {
  const nRaw = query.get("n");
  const last = query.get("last");
  let list = last !== null ? items.filter((t) => compareTags(t, last) > 0) : items;
  if (nRaw === null) return { page: list };
  if (!/^\d{1,9}$/.test(nRaw))
    throw new RegistryError(400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested", {
      n: nRaw,
    });
  const n = Number(nRaw);
  if (list.length <= n) return { page: list };
  list = list.slice(0, n);
  if (n === 0) return { page: [] };
  const next = `${linkBase}?n=${n}&last=${encodeURIComponent(list[list.length - 1])}`;
  return { page: list, link: `<${next}>; rel="next"` };
}

export class Distribution {
  constructor(
    readonly storage: RegistryStorage,
    readonly source?: ManifestSource,
  ) {}

  /** Dispatches a parsed, authorized /v2 route (the method is already checked). */
  async handle(req: IncomingMessage, res: ServerResponse, route: Route, ctx: HandlerContext): Promise<void> {
    const method = req.method ?? "GET";
    switch (route.kind) {
      case "base":
        return sendBytes(res, 200, JSON_TYPE, Buffer.from("{}"));
      case "catalog":
        return this.catalog(res, ctx);
      case "tags":
        return this.tags(res, route.name, ctx);
      case "manifest":
        if (method === "PUT") return this.putManifest(req, res, route.name, route.reference);
        if (method === "DELETE") return this.deleteManifest(res, route.name, route.reference);
        return this.getManifest(req, res, route.name, route.reference);
      case "blob":
        if (method === "DELETE") return this.deleteBlob(res, route.name, route.digest);
        return this.getBlob(req, res, route.name, route.digest);
      case "upload-start":
        return this.startUpload(req, res, route.name, ctx);
      case "upload":
        if (method === "PATCH") return this.patchUpload(req, res, route.name, route.uuid);
        if (method === "PUT") return this.putUpload(req, res, route.name, route.uuid, ctx);
        if (method === "DELETE") return this.deleteUpload(res, route.name, route.uuid);
        return this.uploadStatus(res, route.name, route.uuid);
      case "referrers":
        return this.referrers(res, route.name, route.digest, ctx);
      default:
        throw new RegistryError(404, "NOT_FOUND", "no such route in the registry API");
    }
  }

  private async catalog(res: ServerResponse, ctx: HandlerContext): Promise<void> {
    const { page, link } = paginate(await this.storage.listRepositories(), ctx.query, "/v2/_catalog");
    sendBytes(
      res,
      200,
      JSON_TYPE,
      Buffer.from(JSON.stringify({ repositories: page })),
      link ? { Link: link } : {},
    );
  }

  private async tags(res: ServerResponse, name: string, ctx: HandlerContext): Promise<void> {
    if (!(await this.storage.hasRepository(name)))
      throw new RegistryError(404, "NAME_UNKNOWN", "repository name not known to registry", { name });
    const { page, link } = paginate(await this.storage.listTags(name), ctx.query, `/v2/${name}/tags/list`);
    sendBytes(
      res,
      200,
      JSON_TYPE,
      Buffer.from(JSON.stringify({ name, tags: page })),
      link ? { Link: link } : {},
    );
  }

  // ---- manifests ----

  /** A GET/HEAD/DELETE reference: a tag, or a sha256 digest; 400 for a malformed digest, 404 for the rest. */
  private readReference(name: string, reference: string): string {
    if (reference.includes(":")) {
      const kind = classifyDigest(reference);
      if (kind === "invalid")
        throw new RegistryError(400, "DIGEST_INVALID", "invalid digest", { digest: reference });
      if (kind === "unsupported")
        throw new RegistryError(404, "MANIFEST_UNKNOWN", "manifest unknown to registry", { name, reference });
      return reference;
    }
    if (!isValidTag(reference))
      throw new RegistryError(404, "MANIFEST_UNKNOWN", "manifest unknown to registry (invalid tag)", {
        name,
        reference,
      });
    return reference;
  }

  /** MANIFEST_UNKNOWN, in unknown repositories too (as docker-registry answers; the spec allows either). */
  private async notFound(name: string, reference: string): Promise<RegistryError> {
    return new RegistryError(404, "MANIFEST_UNKNOWN", "manifest unknown to registry", { name, reference });
  }

  /** From the storage, else from the manifest source (then recorded by digest in the repository). */
  private async lookup(
    name: string,
    reference: string,
    method: "GET" | "HEAD",
    accept: string[],
    res: ServerResponse,
  ): Promise<StoredManifest | undefined> {
    const stored = await this.storage.getManifest(name, reference);
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
    await this.storage.adoptManifest(name, m);
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
      new RegistryError(
        404,
        "MANIFEST_UNKNOWN",
        `${m.mediaType} manifest found, but the Accept header does not allow it`,
        {
          digest: m.digest,
          mediaType: m.mediaType,
          accept,
          reason: why,
        },
      );
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
      await this.storage.adoptManifest(name, converted);
      return converted;
    } catch (err) {
      if (err instanceof NotConvertible) throw reject(err.message);
      if (err instanceof RegistryError && err.code === "MANIFEST_UNKNOWN") throw reject(err.message);
      throw err;
    }
  }

  private async getManifest(
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

  private async putManifest(
    req: IncomingMessage,
    res: ServerResponse,
    name: string,
    reference: string,
  ): Promise<void> {
    if (reference.includes(":")) requestDigest(reference, "manifest digest");
    else if (!isValidTag(reference))
      throw new RegistryError(400, "MANIFEST_INVALID", "invalid tag", { tag: reference });
    const contentType = (req.headers["content-type"] ?? "").split(";")[0].trim().toLowerCase();
    if (!contentType)
      throw new RegistryError(
        400,
        "MANIFEST_INVALID",
        "Content-Type is required (the manifest's media type)",
      );
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

  private async deleteManifest(res: ServerResponse, name: string, reference: string): Promise<void> {
    const ref = this.readReference(name, reference);
    if (!(await this.storage.deleteManifest(name, ref))) throw await this.notFound(name, ref);
    sendEmpty(res, 202);
  }

  private async referrers(
    res: ServerResponse,
    name: string,
    digestRaw: string,
    ctx: HandlerContext,
  ): Promise<void> {
    const kind = classifyDigest(digestRaw);
    if (kind === "invalid")
      throw new RegistryError(400, "DIGEST_INVALID", "invalid digest", { digest: digestRaw });
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

  // ---- blobs ----

  private async getBlob(
    req: IncomingMessage,
    res: ServerResponse,
    name: string,
    digestRaw: string,
  ): Promise<void> {
    const kind = classifyDigest(digestRaw);
    if (kind === "invalid")
      throw new RegistryError(400, "DIGEST_INVALID", "invalid digest", { digest: digestRaw });
    const unknown = new RegistryError(404, "BLOB_UNKNOWN", "blob unknown to registry", { digest: digestRaw });
    if (kind !== "sha256") throw unknown;
    const digest = digestRaw as Digest;
    if (!(await this.storage.blobLinked(name, digest))) throw unknown;
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
        throw new RegistryError(
          416,
          "RANGE_INVALID",
          "requested range not satisfiable",
          { size },
          {
            "Content-Range": `bytes */${size}`,
          },
        );
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

  private async deleteBlob(res: ServerResponse, name: string, digestRaw: string): Promise<void> {
    const kind = classifyDigest(digestRaw);
    if (kind === "invalid")
      throw new RegistryError(400, "DIGEST_INVALID", "invalid digest", { digest: digestRaw });
    if (kind !== "sha256" || !(await this.storage.unlinkBlob(name, digestRaw as Digest)))
      throw new RegistryError(404, "BLOB_UNKNOWN", "blob unknown to registry", { digest: digestRaw });
    sendEmpty(res, 202);
  }

  // ---- uploads ----

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
      new RegistryError(
        416,
        "BLOB_UPLOAD_INVALID",
        why,
        { contentRange: header },
        size !== undefined ? { Range: uploadRange(size) } : {},
      );
    if (!r) throw bad("invalid Content-Range (expected <start>-<end>)");
    if (length !== undefined && length !== r.end - r.start + 1)
      throw bad("Content-Range does not match Content-Length");
    return { offset: r.start, length: r.end - r.start + 1 };
  }

  private async startUpload(
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

  private async patchUpload(
    req: IncomingMessage,
    res: ServerResponse,
    name: string,
    uuid: string,
  ): Promise<void> {
    const before = await this.storage.uploadStatus(name, uuid);
    const { offset, length } = this.chunkRange(req, before.size);
    if (offset !== undefined && offset !== before.size)
      throw new RegistryError(
        416,
        "BLOB_UPLOAD_INVALID",
        "chunk out of order: its range does not start at the end of the upload",
        { offset, size: before.size },
        this.uploadHeaders(name, uuid, before.size),
      );
    const st = await this.storage.appendUpload(name, uuid, detachedBody(req), { offset, length });
    sendEmpty(res, 202, this.uploadHeaders(name, uuid, st.size));
  }

  private async putUpload(
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

  private async uploadStatus(res: ServerResponse, name: string, uuid: string): Promise<void> {
    const st = await this.storage.uploadStatus(name, uuid);
    sendEmpty(res, 204, this.uploadHeaders(name, uuid, st.size));
  }

  private async deleteUpload(res: ServerResponse, name: string, uuid: string): Promise<void> {
    if (!(await this.storage.cancelUpload(name, uuid)))
      throw new RegistryError(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", { uuid });
    sendEmpty(res, 204);
  }
}
