// Pushes a built image to a registry with the OCI distribution API: every blob (layers, config) is checked with
// HEAD and skipped when present, else mounted from another repository of the same registry when we know one
// that has it, else uploaded (monolithic PUT for small blobs, PATCH chunks with Content-Range for big ones,
// streamed from disk); then the manifest is PUT with its exact bytes and the registry's Docker-Content-Digest
// is checked against ours. A few blobs go up in parallel; the first failure aborts the others.
import { createReadStream } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import * as http from "node:http";
import * as https from "node:https";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import type { Readable } from "node:stream";
import { NixociError, oneLine, quote } from "../util/errors.js";
import { writeFileAtomic } from "../util/fs.js";
import { RegistryAuth, resolveCredentials } from "./auth.js";
import { isDigest } from "../oci/digest.js";
import type { BuiltImage } from "../oci/image.js";

export type PushEvent =
  | { type: "blob-exists"; digest: string; size: number }
  | { type: "blob-mounted"; digest: string; size: number; from: string }
  | { type: "blob-upload-start"; digest: string; size: number }
  | { type: "blob-progress"; digest: string; size: number; sent: number }
  | { type: "blob-uploaded"; digest: string; size: number }
  | { type: "manifest-pushed"; digest: string; reference: string };

export interface PushTarget {
  /** "host[:port]" */
  registry: string;
  repository: string;
  tag?: string;
  /** Push by digest (must be the image's manifest digest) instead of a tag. */
  digest?: string;
}

export interface PushOptions {
  /** USER:PASS; else Docker's config.json; else anonymous. */
  creds?: string;
  /** Plain HTTP even for hosts other than localhost/127.0.0.1/[::1]. */
  insecure?: boolean;
  onEvent?: (e: PushEvent) => void;
  /** Repositories of the same registry that may hold the blobs (cross-repository mount candidates). */
  mountFrom?: string[];
  /**
   * The local record of repositories we pushed each digest to (mount hints for later pushes): a file path,
   * false for none; default $XDG_CACHE_HOME/nixoci/pushed.json (~/.cache/nixoci/pushed.json).
   */
  pushRecord?: string | false;
  /** Blobs up to this size are uploaded with one PUT; bigger ones in PATCH chunks (default 8 MiB). */
  monolithicLimit?: number;
  /** PATCH chunk size (default 16 MiB). */
  chunkSize?: number;
  /** Blob uploads in flight (default 3). */
  concurrency?: number;
  /** Socket idle timeout per request (default 120 s). */
  timeoutMs?: number;
  /** Environment for credentials and cache paths (default process.env). */
  env?: NodeJS.ProcessEnv;
}

export interface PushResult {
  manifestDigest: string;
  /** Blob digests uploaded, mounted from another repository, or already present. */
  uploaded: string[];
  mounted: string[];
  skipped: string[];
}

const DEFAULT_MONOLITHIC_LIMIT = 8 << 20;
const DEFAULT_CHUNK_SIZE = 16 << 20;
const MAX_MOUNT_TRIES = 3;

/** Plain HTTP for loopback registries (as skopeo/ctr/docker treat them) and when asked; HTTPS otherwise. */
export function registryBaseUrl(registry: string, insecure = false): string {
  const host = registry.replace(/:\d+$/, "");
  const loopback = host === "localhost" || host === "127.0.0.1" || host === "[::1]";
  return `${loopback || insecure ? "http" : "https"}://${apiHost(registry)}`;
}

/** Docker Hub's API lives on registry-1.docker.io. */
function apiHost(registry: string): string {
  return registry === "docker.io" || registry === "index.docker.io" ? "registry-1.docker.io" : registry;
}

export interface HttpResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

interface RequestInit {
  method: string;
  headers?: Record<string, string>;
  /** A buffer, or a factory for a fresh stream (called again when the request is retried). */
  body?: Buffer | (() => Readable);
  signal?: AbortSignal;
  /** Bytes of response body kept (default 4 MiB); the rest is discarded. */
  maxBody?: number;
  onSent?: (bytes: number) => void;
}

function header(h: http.IncomingHttpHeaders, name: string): string | undefined {
  const v = h[name.toLowerCase()];
  return Array.isArray(v) ? v[0] : v;
}

/** Formats a registry error response: `400 DIGEST_INVALID: provided digest did not match uploaded content`. */
export function describeError(res: HttpResponse): string {
  const text = res.body.toString("utf8");
  try {
    const j = JSON.parse(text) as { errors?: Array<{ code?: unknown; message?: unknown; detail?: unknown }> };
    if (Array.isArray(j.errors) && j.errors.length) {
      const parts = j.errors.map((e) => {
        const code = typeof e.code === "string" ? e.code : "ERROR";
        const msg = typeof e.message === "string" ? e.message : "";
        let detail = "";
        if (e.detail !== undefined && e.detail !== null && e.detail !== "") {
          detail = typeof e.detail === "string" ? e.detail : JSON.stringify(e.detail);
          detail = ` (${detail.length > 200 ? detail.slice(0, 200) + "…" : detail})`;
        }
        return `${code}${msg ? `: ${msg}` : ""}${detail}`;
      });
      return oneLine(`${res.status} ${parts.join("; ")}`);
    }
  } catch {
    // not JSON
  }
  const reason = http.STATUS_CODES[res.status] ?? "";
  const snippet = text.trim() ? ` ${quote(text.trim(), 120)}` : "";
  return oneLine(`${res.status}${reason ? ` ${reason}` : ""}${snippet}`);
}

/** One HTTP request (node:http/https), with the response body collected. */
export function httpRequest(
  url: URL,
  init: RequestInit,
  agent?: http.Agent,
  timeoutMs = 120_000,
): Promise<HttpResponse> {
  const mod = url.protocol === "https:" ? https : http;
  const headers: Record<string, string> = { "User-Agent": "nixoci", ...init.headers };
  if (Buffer.isBuffer(init.body)) headers["Content-Length"] ??= String(init.body.length);
  else if (!init.body && init.method !== "GET" && init.method !== "HEAD") headers["Content-Length"] ??= "0";
  return new Promise<HttpResponse>((resolve, reject) => {
    let settled = false;
    let source: Readable | undefined;
    const fail = (err: Error): void => {
      if (settled) return;
      settled = true;
      source?.destroy();
      req.destroy();
      reject(err);
    };
    const req = mod.request(url, { method: init.method, headers, agent, signal: init.signal }, (res) => {
      const chunks: Buffer[] = [];
      let kept = 0;
      const max = init.maxBody ?? 4 << 20;
      res.on("data", (c: Buffer) => {
        if (kept < max) {
          chunks.push(c);
          kept += c.length;
        }
      });
      res.on("end", () => {
        if (settled) return;
        settled = true;
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) });
        // The server answered before taking the whole body (an error, typically): stop sending, and do not
        // give the half-used connection back to the pool.
        if (source && !source.readableEnded) {
          source.destroy();
          req.destroy();
        }
      });
      res.on("error", fail);
    });
    req.setTimeout(timeoutMs, () => fail(new Error(`no answer for ${Math.round(timeoutMs / 1000)} s`)));
    req.on("error", fail);
    if (Buffer.isBuffer(init.body)) req.end(init.body);
    else if (init.body) {
      source = init.body();
      let sent = 0;
      source.on("data", (c: Buffer) => {
        sent += c.length;
        init.onSent?.(sent);
      });
      source.on("error", fail);
      source.pipe(req);
    } else req.end();
  });
}

function errnoMessage(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e?.name === "AbortError") return "aborted";
  return oneLine(e?.message ?? String(err));
}

/** A registry session for one repository: requests with authentication and error reporting. */
export class RegistryClient {
  readonly base: string;
  readonly input: string;
  private readonly agent: http.Agent;
  private auth: RegistryAuth | undefined;
  private readonly pullPush: string[];

  constructor(
    readonly registry: string,
    readonly repository: string,
    private readonly opts: Pick<PushOptions, "creds" | "insecure" | "timeoutMs" | "env" | "concurrency"> = {},
  ) {
    this.base = registryBaseUrl(registry, opts.insecure);
    this.input = `${registry}/${repository}`;
    const Agent = this.base.startsWith("https:") ? https.Agent : http.Agent;
    this.agent = new Agent({ keepAlive: true, maxSockets: (opts.concurrency ?? 3) + 2 });
    this.pullPush = [`repository:${repository}:pull,push`];
  }

  close(): void {
    this.agent.destroy();
  }

  private async getAuth(): Promise<RegistryAuth> {
    if (!this.auth) {
      const creds = await resolveCredentials(this.registry, this.opts.creds, this.opts.env);
      this.auth = new RegistryAuth(this.registry, creds, (url, headers) =>
        httpRequest(url, { method: "GET", headers }, undefined, this.opts.timeoutMs),
      );
    }
    return this.auth;
  }

  /** Resolves a path or a Location header against the registry. */
  url(pathOrLocation: string): URL {
    return new URL(pathOrLocation, this.base);
  }

  /**
   * Sends a request with the current authorization for `scopes`; on 401 answers the challenge and retries once.
   * Network failures become NixociErrors saying `what` failed.
   */
  async request(url: URL, init: RequestInit, what: string, scopes = this.pullPush): Promise<HttpResponse> {
    const auth = await this.getAuth();
    const sameOrigin = url.origin === new URL(this.base).origin;
    for (let attempt = 0; ; attempt++) {
      if (sameOrigin && auth.needsToken(scopes)) await auth.token(scopes, this.input);
      const headers = { ...init.headers };
      const authz = sameOrigin ? auth.header(scopes) : undefined;
      if (authz) headers.Authorization = authz;
      let res: HttpResponse;
      try {
        res = await httpRequest(url, { ...init, headers }, this.agent, this.opts.timeoutMs);
      } catch (err) {
        if (err instanceof NixociError) throw err;
        throw new NixociError(this.input, `${what} failed: ${errnoMessage(err)}`, { cause: err });
      }
      if (res.status === 401 && sameOrigin && attempt === 0) {
        await auth.answer(header(res.headers, "www-authenticate"), scopes, this.input, describeError(res));
        continue;
      }
      if (res.status === 401) {
        if (!auth.credentials)
          throw new NixociError(this.input, `authentication required (${describeError(res)})`);
        throw new NixociError(this.input, `${what} failed: authentication failed (${describeError(res)})`);
      }
      return res;
    }
  }

  private fail(what: string, res: HttpResponse): never {
    throw new NixociError(this.input, `${what} failed: ${describeError(res)}`);
  }

  /** Checks the API is there (and settles the authentication scheme). */
  async ping(): Promise<void> {
    const res = await this.request(this.url("/v2/"), { method: "GET" }, "registry check");
    if (res.status !== 200) this.fail("registry check", res);
  }

  async hasBlob(digest: string, signal?: AbortSignal): Promise<boolean> {
    const res = await this.request(
      this.url(`/v2/${this.repository}/blobs/${digest}`),
      { method: "HEAD", signal },
      "blob check",
    );
    if (res.status === 200) return true;
    if (res.status === 404) return false;
    // Registries with redirecting storage answer HEAD of an existing blob with a redirect to it.
    if (res.status >= 301 && res.status <= 308 && res.status !== 304 && header(res.headers, "location"))
      return true;
    return this.fail(`blob check of ${digest}`, res);
  }

  /**
   * Tries a cross-repository mount: "mounted" (201), else the upload session the registry opened instead
   * (202 + Location), else undefined (refused; start an upload normally).
   */
  async mountBlob(digest: string, from: string, signal?: AbortSignal): Promise<"mounted" | URL | undefined> {
    const url = this.url(
      `/v2/${this.repository}/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}`,
    );
    let res: HttpResponse;
    try {
      res = await this.request(url, { method: "POST", signal }, "blob mount", [
        ...this.pullPush,
        `repository:${from}:pull`,
      ]);
    } catch (err) {
      if (signal?.aborted) throw err;
      return undefined;
    }
    if (res.status === 201) return "mounted";
    const loc = header(res.headers, "location");
    if (res.status === 202 && loc) {
      this.noteMinChunk(res);
      return this.url(loc);
    }
    return undefined;
  }

  async startUpload(signal?: AbortSignal): Promise<URL> {
    const res = await this.request(
      this.url(`/v2/${this.repository}/blobs/uploads/`),
      { method: "POST", signal },
      "blob upload",
    );
    const loc = header(res.headers, "location");
    if (res.status !== 202) this.fail("blob upload", res);
    if (!loc) throw new NixociError(this.input, "blob upload failed: the registry gave no upload Location");
    this.noteMinChunk(res);
    return this.url(loc);
  }

  /** OCI distribution 1.1: a registry may require chunks of at least OCI-Chunk-Min-Length bytes. */
  private minChunk = 0;
  private noteMinChunk(res: HttpResponse): void {
    const v = Number(header(res.headers, "oci-chunk-min-length"));
    if (Number.isSafeInteger(v) && v > this.minChunk) this.minChunk = v;
  }

  /**
   * Uploads a blob (a file, streamed; or bytes) into an upload session: one PUT up to `monolithicLimit`,
   * else PATCH chunks with Content-Range and a closing PUT.
   */
  async uploadBlob(
    session: URL,
    source: string | Buffer,
    digest: string,
    size: number,
    opts: { monolithicLimit: number; chunkSize: number; signal?: AbortSignal; onSent?: (n: number) => void },
  ): Promise<void> {
    const file = typeof source === "string" ? source : undefined;
    const slice = (start: number, end: number): Buffer | (() => Readable) =>
      end < start
        ? Buffer.alloc(0)
        : file
          ? () => createReadStream(file, { start, end, highWaterMark: 1 << 20 })
          : (source as Buffer).subarray(start, end + 1);
    const what = `blob upload of ${digest}`;
    let location = session;
    if (size > opts.monolithicLimit) {
      const chunkSize = Math.max(opts.chunkSize, this.minChunk);
      for (let start = 0; start < size; start += chunkSize) {
        const end = Math.min(size, start + chunkSize) - 1;
        const res = await this.request(
          location,
          {
            method: "PATCH",
            headers: {
              "Content-Type": "application/octet-stream",
              "Content-Length": String(end - start + 1),
              "Content-Range": `${start}-${end}`,
            },
            body: slice(start, end),
            signal: opts.signal,
            onSent: (n) => opts.onSent?.(start + n),
          },
          what,
        );
        if (res.status !== 202) this.fail(what, res);
        const range = header(res.headers, "range");
        const m = range ? /^(?:bytes=)?0-(\d+)$/.exec(range) : null;
        if (range && (!m || Number(m[1]) !== end))
          throw new NixociError(
            this.input,
            `${what} failed: the registry has range ${quote(range)} after 0-${end}`,
          );
        const loc = header(res.headers, "location");
        if (loc) location = this.url(loc);
      }
      const res = await this.request(
        withQuery(location, "digest", digest),
        { method: "PUT", headers: { "Content-Length": "0" }, signal: opts.signal },
        what,
      );
      if (res.status !== 201 && res.status !== 204) this.fail(what, res);
    } else {
      const res = await this.request(
        withQuery(location, "digest", digest),
        {
          method: "PUT",
          headers: { "Content-Type": "application/octet-stream", "Content-Length": String(size) },
          body: slice(0, size - 1),
          signal: opts.signal,
          onSent: opts.onSent,
        },
        what,
      );
      if (res.status !== 201 && res.status !== 204) this.fail(what, res);
    }
    // The registry verified the content against ?digest= itself (DIGEST_INVALID otherwise).
  }

  /** PUTs manifest bytes under a tag or digest; returns the registry's digest for them. */
  async putManifest(reference: string, bytes: Buffer, mediaType: string, expected: string): Promise<string> {
    const res = await this.request(
      this.url(`/v2/${this.repository}/manifests/${reference}`),
      { method: "PUT", headers: { "Content-Type": mediaType }, body: bytes },
      "manifest push",
    );
    if (res.status !== 201 && res.status !== 200 && res.status !== 202) this.fail("manifest push", res);
    const got = header(res.headers, "docker-content-digest");
    if (got && got !== expected)
      throw new NixociError(
        this.input,
        `manifest push: the registry stored the manifest as ${quote(got)}, not ${expected} (did it rewrite it?)`,
      );
    return got ?? expected;
  }

  /** GETs a manifest's exact bytes (for checks and tools). */
  async getManifest(
    reference: string,
    accept: string[],
  ): Promise<{ bytes: Buffer; mediaType: string; digest?: string }> {
    const res = await this.request(
      this.url(`/v2/${this.repository}/manifests/${reference}`),
      { method: "GET", headers: { Accept: accept.join(", ") } },
      "manifest fetch",
      [`repository:${this.repository}:pull`],
    );
    if (res.status !== 200) this.fail("manifest fetch", res);
    return {
      bytes: res.body,
      mediaType: header(res.headers, "content-type") ?? "",
      digest: header(res.headers, "docker-content-digest"),
    };
  }
}

function withQuery(u: URL, key: string, value: string): URL {
  // Appended by hand: re-serialising searchParams would re-encode the registry's own state parameters.
  const s = u.toString();
  return new URL(`${s}${u.search ? "&" : "?"}${key}=${encodeURIComponent(value)}`);
}

// ---- The local record of pushed digests (cross-repository mount hints) ----

interface PushRecordFile {
  version: 1;
  /** registry -> digest -> repositories (most recent first) */
  registries: Record<string, Record<string, string[]>>;
}

const RECORD_MAX_REPOS = 4;
const RECORD_MAX_DIGESTS = 20_000;

export function defaultPushRecordPath(env: NodeJS.ProcessEnv = process.env): string {
  return join(env.XDG_CACHE_HOME || join(homedir(), ".cache"), "nixoci", "pushed.json");
}

async function readRecord(file: string): Promise<PushRecordFile> {
  try {
    const j = JSON.parse(await readFile(file, "utf8")) as PushRecordFile;
    if (j && j.version === 1 && typeof j.registries === "object" && j.registries) return j;
  } catch {
    // Missing or damaged: it only holds hints.
  }
  return { version: 1, registries: {} };
}

async function updateRecord(
  file: string,
  registry: string,
  repository: string,
  digests: string[],
): Promise<void> {
  const rec = await readRecord(file);
  const reg = (rec.registries[registry] ??= {});
  for (const d of digests) {
    const repos = (reg[d] ?? []).filter((r) => r !== repository);
    delete reg[d]; // re-insert: object key order is the recency order
    reg[d] = [repository, ...repos].slice(0, RECORD_MAX_REPOS);
  }
  const keys = Object.keys(reg);
  for (const k of keys.slice(0, Math.max(0, keys.length - RECORD_MAX_DIGESTS))) delete reg[k];
  await mkdir(dirname(file), { recursive: true });
  await writeFileAtomic(file, JSON.stringify(rec));
}

// ---- push ----

export async function pushImage(
  image: BuiltImage,
  target: PushTarget,
  opts: PushOptions = {},
): Promise<PushResult> {
  const { registry, repository } = target;
  const input = `${registry}/${repository}`;
  if (target.digest !== undefined && target.digest !== image.manifest.digest)
    throw new NixociError(
      `${input}@${target.digest}`,
      `the image's manifest digest is ${image.manifest.digest}, not the requested digest`,
    );
  const reference = target.digest ?? target.tag ?? "latest";
  const emit = opts.onEvent ?? (() => undefined);

  // Every blob the manifest names, once each, with the file it is read from (the config may come from its
  // bytes when the store lacks it).
  const blobs: Array<{ digest: string; size: number; source: string | Buffer }> = [];
  const seen = new Set<string>();
  for (const d of [{ digest: image.config.digest, size: image.config.size }, ...image.layers]) {
    if (seen.has(d.digest)) continue;
    seen.add(d.digest);
    if (!isDigest(d.digest)) throw new NixociError(input, `malformed blob digest ${quote(d.digest)}`);
    const path = image.blobs.path(d.digest);
    const size = await image.blobs.size(d.digest);
    if (size === undefined && d.digest === image.config.digest) {
      blobs.push({ digest: d.digest, size: d.size, source: image.config.bytes });
      continue;
    }
    if (size === undefined) throw new NixociError(path, "blob to push is missing from the blob store");
    if (size !== d.size) throw new NixociError(path, `blob has ${size} bytes, the manifest says ${d.size}`);
    blobs.push({ digest: d.digest, size: d.size, source: path });
  }

  const recordFile =
    opts.pushRecord === false ? undefined : (opts.pushRecord ?? defaultPushRecordPath(opts.env));
  const record = recordFile ? await readRecord(recordFile) : undefined;
  const hints = (digest: string): string[] => {
    const out = [...(opts.mountFrom ?? []), ...(record?.registries[registry]?.[digest] ?? [])];
    return [...new Set(out)].filter((r) => r !== repository).slice(0, MAX_MOUNT_TRIES);
  };

  const client = new RegistryClient(registry, repository, opts);
  const result: PushResult = {
    manifestDigest: image.manifest.digest,
    uploaded: [],
    mounted: [],
    skipped: [],
  };
  const monolithicLimit = opts.monolithicLimit ?? DEFAULT_MONOLITHIC_LIMIT;
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
  if (!(chunkSize > 0)) throw new RangeError(`chunkSize must be > 0: ${chunkSize}`);
  try {
    await client.ping();
    const abort = new AbortController();
    const signal = abort.signal;
    const pushBlob = async (b: (typeof blobs)[number]): Promise<void> => {
      if (await client.hasBlob(b.digest, signal)) {
        result.skipped.push(b.digest);
        emit({ type: "blob-exists", digest: b.digest, size: b.size });
        return;
      }
      let session: URL | undefined;
      for (const from of hints(b.digest)) {
        const m = await client.mountBlob(b.digest, from, signal);
        if (m === "mounted") {
          result.mounted.push(b.digest);
          emit({ type: "blob-mounted", digest: b.digest, size: b.size, from });
          return;
        }
        if (m) {
          session = m;
          break;
        }
      }
      session ??= await client.startUpload(signal);
      emit({ type: "blob-upload-start", digest: b.digest, size: b.size });
      await client.uploadBlob(session, b.source, b.digest, b.size, {
        monolithicLimit,
        chunkSize,
        signal,
        onSent: (sent) => emit({ type: "blob-progress", digest: b.digest, size: b.size, sent }),
      });
      result.uploaded.push(b.digest);
      emit({ type: "blob-uploaded", digest: b.digest, size: b.size });
    };

    // Bounded parallelism; the first failure aborts the requests in flight and is the one reported.
    let firstError: unknown;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (firstError === undefined && next < blobs.length) {
        const b = blobs[next++];
        try {
          await pushBlob(b);
        } catch (err) {
          if (firstError === undefined) {
            firstError = err;
            abort.abort();
          }
        }
      }
    };
    const n = Math.max(1, Math.min(opts.concurrency ?? 3, blobs.length));
    await Promise.all(Array.from({ length: n }, worker));
    if (firstError !== undefined) throw firstError;

    const digest = await client.putManifest(
      reference,
      image.manifest.bytes,
      image.manifest.mediaType,
      image.manifest.digest,
    );
    result.manifestDigest = digest;
    emit({ type: "manifest-pushed", digest, reference });
  } finally {
    client.close();
  }
  if (recordFile) {
    try {
      await updateRecord(
        recordFile,
        registry,
        repository,
        blobs.map((b) => b.digest),
      );
    } catch {
      // Hints only: an unwritable cache directory must not fail a push that worked.
    }
  }
  return result;
}
