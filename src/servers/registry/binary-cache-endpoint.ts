// The local store served over HTTP as a Nix binary cache, next to the registry: `nix copy --from http://HOST`,
// `substituters = http://HOST` and nixoci's own BinaryCacheStore read it like any other cache.
//
//   GET /nix-cache-info            StoreDir, WantMassQuery: 1, Priority
//   GET /<hashpart>.narinfo        metadata of a valid path, signed (added to its existing signatures)
//   GET /nar/<hashpart>-<narhash>.nar[.zst|.xz]
//                                  the NAR, made from the store path on the fly, compressed as its name says
//   GET /<hashpart>.ls             the NAR listing (JSON, as `write-nar-listing` writes it)
//
// Nothing is kept on the server: the NAR URL names the path by its hash part and pins its content by NarHash,
// so any server process finds it again, and a URL whose NarHash is not the path's (a stale narinfo from a
// client's cache) is a 404 rather than other bytes. Compressed NARs are produced as they are sent, so their
// size and hash are not known in advance: those narinfos carry no FileHash/FileSize, which Nix 2.8 accepts
// (it requires only StorePath, URL, NarHash and NarSize, and checks the NAR against NarHash). Uncompressed
// NARs carry FileHash = NarHash and FileSize = NarSize, as Nix writes them.
//
// Every name taken from a URL is checked against a strict pattern before anything touches the filesystem:
// hash parts are 32 nix32 characters, NarHashes 52; the store path a hash part stands for comes from the
// store's own metadata (Nix's database, or nixoci's sidecar), and is served only if the store says it is
// valid. Every NAR is checked against NarHash/NarSize while it streams, and its last bytes are held back
// until the check passed: a path that changed on disk ends in an aborted response, never in a complete one.
import Database from "better-sqlite3";
import { readFile } from "node:fs/promises";
import type { IncomingMessage, ServerResponse } from "node:http";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { PassThrough, Transform, type Readable, type TransformCallback } from "node:stream";
import { pipeline } from "node:stream/promises";
import { serializeCacheInfo } from "../../nix/cache-info.js";
import { listNar, narListingBytes } from "../../nix/nar-listing.js";
import { serializeNarInfo, type NarInfo } from "../../nix/narinfo.js";
import { pathFingerprint, signFingerprint, type SecretKey } from "../../nix/signature.js";
import { parseStorePath } from "../../nix/store-path.js";
import { nixDbFor, type LocalStore } from "../../store/local-store.js";
import type { PathInfo } from "../../store/path-info.js";
import { SidecarDb } from "../../store/sidecar-db.js";
import { compressStream, compressionExtension, defaultLevel } from "../../util/compression.js";
import { Limiter } from "../../util/concurrency.js";
import { requestedRange } from "./http-range.js";
import { NarFileCache } from "./nar-file-cache.js";

/** How many bytes of recent NAR listings the endpoint keeps in memory. */
const LISTING_CACHE_BYTES = 32 << 20;

/** The compressions the endpoint produces on the fly. */
export type ServedCompression = "none" | "zstd" | "xz";

export interface BinaryCacheRoutesOptions {
  store: LocalStore;
  /** Signs every narinfo (the signature is added to the path's own ones). */
  signKey?: SecretKey;
  /** How NARs are offered in narinfos (default "zstd"). NAR URLs of the other kinds are served too. */
  compression?: ServedCompression;
  /** Compression level for zstd (1-22, default 3) or xz (0-9, default 6). */
  compressionLevel?: number;
  /** nix-cache-info's Priority (default 30: preferred over cache.nixos.org's 40). */
  priority?: number;
  /**
   * Nix's database to find paths by hash part in: default the one the LocalStore reads
   * (`/nix/var/nix/db/db.sqlite`, or ROOT/nix/var/nix/db for ROOT/nix/store); null: only nixoci's sidecar.
   */
  dbFile?: string | null;
  /**
   * NAR bodies (and listings) produced at once (default 2 per CPU): each is a store dump and, mostly, a compressor
   * process, so without a bound a crowd of clients starts a compressor each and every one gets slower (measured:
   * 200 downloaders ran 145 zstd processes at once for no more throughput than 8). Beyond it requests wait.
   */
  maxNarStreams?: number;
  /** Requests that may wait for a NAR stream (default 256); beyond, 503 with Retry-After, which Nix retries. */
  maxQueuedNarStreams?: number;
  /** Compressed NARs kept once made (nar-file-cache.ts); without it every download compresses again. */
  narCache?: NarFileCache;
  /** Called once per response body with the bytes written (all of them, or as many as got out). */
  onServed?: (bytes: number) => void;
  /** Called with unexpected errors (answered 500, or an aborted response once the body had started). */
  onError?: (err: unknown, path: string) => void;
}

/** A route hook for the registry server; `close()` releases the database handle. */
export type BinaryCacheHandler = ((req: IncomingMessage, res: ServerResponse) => Promise<boolean>) & {
  close(): void;
};

const NIX32 = "[0123456789abcdfghijklmnpqrsvwxyz]";
const HASH_PART = `${NIX32}{32}`;
const NARINFO_RE = new RegExp(`^/(${HASH_PART})\\.narinfo$`);
const LS_RE = new RegExp(`^/(${HASH_PART})\\.ls$`);
const NAR_RE = new RegExp(`^/nar/(${HASH_PART})-(${NIX32}{52})\\.nar(\\.zst|\\.xz)?$`);
/** Longer request paths are never ours to serve ("/nar/" + 32 + "-" + 52 + ".nar.zst" is 98). */
const MAX_PATH = 128;

const NAR_TYPE = "application/x-nix-nar";
const IMMUTABLE = "public, max-age=31536000, immutable";
/** A narinfo may disappear (garbage collection) or gain signatures; clients re-ask after a minute. */
const NARINFO_CACHE = "public, max-age=60";

const EXT_TO_COMPRESSION: Record<string, ServedCompression> = { "": "none", ".zst": "zstd", ".xz": "xz" };

/** The request path without its query, or undefined when the target is not origin-form ("/..."). */
function requestPath(req: IncomingMessage): string | undefined {
  const url = req.url ?? "";
  if (!url.startsWith("/")) return undefined;
  const q = url.indexOf("?");
  return q < 0 ? url : url.slice(0, q);
}

/** Paths this endpoint answers (with 404 when the name is invalid or unknown); everything else falls through. */
function isOurs(path: string): boolean {
  if (path === "/nix-cache-info" || path.startsWith("/nar/")) return true;
  const slash = path.indexOf("/", 1);
  return slash < 0 && (path.endsWith(".narinfo") || path.endsWith(".ls"));
}

/** The NAR file name a narinfo points to: nar/<hashpart>-<narhash nix32>.nar<ext>. */
export function narUrlFor(hashPart: string, info: PathInfo, compression: ServedCompression): string {
  return `nar/${hashPart}-${info.narHash.toString("nix32").slice("sha256:".length)}.nar${compressionExtension(compression)}`;
}

/**
 * Finds the store path of a hash part the way Nix's queryPathFromHashPart does: a range query on Nix's
 * database (an index lookup), else nixoci's sidecar metadata file named by the hash part.
 */
class HashPartResolver {
  private db: Database.Database | undefined;
  private stmt: Database.Statement<[string, string], { path: string }> | undefined;
  private readonly sidecarDir: string;

  constructor(
    private readonly store: LocalStore,
    dbFile: string | undefined,
  ) {
    this.sidecarDir = new SidecarDb(store.realDir, store.storeDir).dir;
    if (dbFile) {
      this.db = new Database(dbFile, { readonly: true, fileMustExist: true });
      // '-' < '.': every "<prefix>-<name>" sorts in [prefix + "-", prefix + ".").
      this.stmt = this.db.prepare("select path from ValidPaths where path >= ? and path < ? limit 1");
    }
  }

  async resolve(hashPart: string): Promise<string | undefined> {
    const prefix = `${this.store.storeDir}/${hashPart}`;
    const row = this.stmt?.get(`${prefix}-`, `${prefix}.`);
    if (row) return row.path;
    let text: string;
    try {
      text = await readFile(join(this.sidecarDir, `${hashPart}.json`), "utf8");
    } catch {
      return undefined;
    }
    try {
      const path = (JSON.parse(text) as { path?: unknown }).path;
      return typeof path === "string" && path.startsWith(`${prefix}-`) ? path : undefined;
    } catch {
      return undefined;
    }
  }

  close(): void {
    this.db?.close();
    this.db = undefined;
    this.stmt = undefined;
  }
}

/**
 * Passes bytes on but keeps the latest chunk until the upstream has ended, so a verification failure at the
 * end of the NAR (reported when the verifier flushes) stops the response short of its last bytes.
 */
class HoldBack extends Transform {
  private held: Buffer | undefined;

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    const prev = this.held;
    this.held = chunk;
    done(null, prev);
  }

  override _flush(done: TransformCallback): void {
    done(null, this.held);
  }
}

/** Keeps bytes [start, end] (inclusive) of the stream and drops the rest, reading to the end regardless. */
class Slice extends Transform {
  private offset = 0;

  constructor(
    private readonly first: number,
    private readonly last: number,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    const from = Math.max(this.first - this.offset, 0);
    const to = Math.min(this.last + 1 - this.offset, chunk.length);
    this.offset += chunk.length;
    done(null, from < to ? chunk.subarray(from, to) : undefined);
  }
}

/** Writes `source` to `res` with backpressure; fails when the client goes away. Does not end `res`. */
async function writeBody(
  res: ServerResponse,
  source: AsyncIterable<Buffer>,
  onBytes: (n: number) => void,
): Promise<void> {
  for await (const chunk of source) {
    if (res.destroyed) throw clientGone();
    onBytes(chunk.length);
    if (!res.write(chunk)) await drainedOrClosed(res);
  }
  if (res.destroyed) throw clientGone();
}

/** Resolves when `w` can take more, or will never again (closed). */
function drainedOrClosed(w: NodeJS.EventEmitter): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = (): void => {
      w.off("drain", done);
      w.off("close", done);
      resolve();
    };
    w.on("drain", done);
    w.on("close", done);
  });
}

/**
 * Passes `source` on, writing each chunk to `file` too (waiting while the file is behind). A file that fails (a
 * full disk) is left behind: the client still gets every byte, and the cache's commit then finds the failure.
 */
async function* copyTo(source: AsyncIterable<Buffer>, file: NodeJS.WritableStream & { destroyed: boolean }) {
  for await (const chunk of source) {
    if (!file.destroyed && !file.write(chunk)) await drainedOrClosed(file);
    yield chunk;
  }
}

function clientGone(): Error {
  return Object.assign(new Error("client closed the connection"), { code: "ERR_STREAM_PREMATURE_CLOSE" });
}

export function binaryCacheRoutes(opts: BinaryCacheRoutesOptions): BinaryCacheHandler {
  const { store } = opts;
  const compression = opts.compression ?? "zstd";
  if (!["none", "zstd", "xz"].includes(compression)) {
    throw new Error(`binary cache: unsupported compression ${JSON.stringify(compression)}`);
  }
  const priority = opts.priority ?? 30;
  if (!Number.isInteger(priority) || priority < -(2 ** 31) || priority >= 2 ** 31) {
    throw new Error(`binary cache: priority must be an integer, got ${priority}`);
  }
  const dbFile = opts.dbFile === null ? undefined : (opts.dbFile ?? nixDbFor(store.realDir));
  const resolver = new HashPartResolver(store, dbFile);
  const narStreams = new Limiter(opts.maxNarStreams ?? 2 * availableParallelism());
  const maxQueued = opts.maxQueuedNarStreams ?? 256;
  /** Runs `produce` in a NAR stream slot; 503 when too many wait, nothing when the client left meanwhile. */
  const inNarSlot = async (req: IncomingMessage, res: ServerResponse, produce: () => Promise<void>) => {
    if (narStreams.running >= narStreams.limit && narStreams.queued >= maxQueued) {
      send(req, res, 503, "text/plain; charset=utf-8", "too many NAR downloads at once; retry\n", {
        "Retry-After": "1",
        "Cache-Control": "no-store",
      });
      return;
    }
    await narStreams.run(async () => {
      if (!res.destroyed) await produce();
    });
  };
  const cacheInfo = serializeCacheInfo({ storeDir: store.storeDir, wantMassQuery: true, priority });

  const served = (bytes: number): void => {
    if (bytes > 0) opts.onServed?.(bytes);
  };

  const send = (
    req: IncomingMessage,
    res: ServerResponse,
    status: number,
    type: string,
    body: string | Buffer,
    headers: Record<string, string> = {},
  ): void => {
    const data = typeof body === "string" ? Buffer.from(body, "utf8") : body;
    res.writeHead(status, { "Content-Type": type, "Content-Length": String(data.length), ...headers });
    if (req.method === "HEAD") {
      res.end();
      return;
    }
    res.end(data);
    if (status < 300) served(data.length);
  };

  const notFound = (req: IncomingMessage, res: ServerResponse): void =>
    send(req, res, 404, "text/plain; charset=utf-8", "not found\n", { "Cache-Control": "no-store" });

  /** The valid path behind a hash part, or undefined. */
  const lookup = async (hashPart: string): Promise<PathInfo | undefined> => {
    const path = await resolver.resolve(hashPart);
    if (path === undefined) return undefined;
    let info: PathInfo | undefined;
    try {
      if (parseStorePath(path, store.storeDir).hashPart !== hashPart) return undefined;
      info = await store.queryPathInfo(path);
    } catch {
      return undefined; // a malformed row: not something to serve
    }
    // A NarSize of 0 (very old databases) cannot be published: Nix rejects such narinfos.
    return info && info.narSize > 0 ? info : undefined;
  };

  const narInfoText = (hashPart: string, info: PathInfo): string => {
    const sigs = [...info.sigs];
    if (opts.signKey) {
      const fp = pathFingerprint(info.path, info.narHash, info.narSize, info.references);
      const sig = signFingerprint(opts.signKey, fp);
      if (!sigs.includes(sig)) sigs.push(sig);
    }
    const narInfo: NarInfo = {
      storePath: info.path,
      url: narUrlFor(hashPart, info, compression),
      compression,
      narHash: info.narHash,
      narSize: info.narSize,
      references: info.references.map((r) => parseStorePath(r, store.storeDir).baseName),
      sigs,
    };
    if (compression === "none") {
      narInfo.fileHash = info.narHash;
      narInfo.fileSize = info.narSize;
    }
    if (info.deriver) {
      try {
        narInfo.deriver = parseStorePath(info.deriver, store.storeDir).baseName;
      } catch {
        // An odd deriver is left out; it is informational only.
      }
    }
    if (info.ca) narInfo.ca = info.ca;
    return serializeNarInfo(narInfo);
  };

  const serveNar = async (
    req: IncomingMessage,
    res: ServerResponse,
    info: PathInfo,
    kind: ServedCompression,
  ): Promise<void> => {
    const headers: Record<string, string> = { "Content-Type": NAR_TYPE, "Cache-Control": IMMUTABLE };
    let range: { start: number; end: number } | undefined;
    if (kind === "none") {
      headers["Accept-Ranges"] = "bytes";
      const r = requestedRange(req, info.narSize);
      if (r === "unsatisfiable") {
        send(req, res, 416, "text/plain; charset=utf-8", "range not satisfiable\n", {
          "Content-Range": `bytes */${info.narSize}`,
        });
        return;
      }
      range = r;
      if (range) {
        headers["Content-Range"] = `bytes ${range.start}-${range.end}/${info.narSize}`;
        headers["Content-Length"] = String(range.end - range.start + 1);
      } else {
        headers["Content-Length"] = String(info.narSize);
      }
    }
    // A compressed NAR made before is a file: no store dump, no compressor.
    const cacheKey =
      kind !== "none" && opts.narCache
        ? NarFileCache.key(
            info.narHash.toString("nix32").slice("sha256:".length),
            kind,
            opts.compressionLevel ?? defaultLevel(kind),
          )
        : undefined;
    const cached = cacheKey ? await opts.narCache!.get(cacheKey) : undefined;
    if (cached) {
      res.writeHead(200, { ...headers, "Content-Length": String(cached.size) });
      if (req.method === "HEAD") {
        await cached.file.close();
        res.end();
        return;
      }
      let sent = 0;
      const body = cached.file.createReadStream({ highWaterMark: 256 * 1024 });
      try {
        await writeBody(res, body, (n) => (sent += n));
      } finally {
        body.destroy(); // closes the file, also when the client left early
        served(sent);
      }
      res.end();
      return;
    }
    if (req.method === "HEAD") {
      res.writeHead(range ? 206 : 200, headers);
      res.end();
      return;
    }
    const nar: Readable = await store.narFromPath(info);
    const slice = range ? new Slice(range.start, range.end) : new PassThrough();
    const compressor =
      kind === "none"
        ? new PassThrough()
        : compressStream(kind, {
            level: opts.compressionLevel,
            input: `${info.path} (${kind})`,
            size: info.narSize, // ranges are served uncompressed only
          });
    res.statusCode = range ? 206 : 200;
    for (const [k, v] of Object.entries(headers)) res.setHeader(k, v);
    let bytes = 0;
    const keep = cacheKey ? await opts.narCache!.writer(cacheKey) : undefined;
    // A client that leaves stops the dump and the compressor at once (xz may not write a byte for seconds, and
    // each one holds a NAR slot), not when the next chunk finds the response gone.
    const gone = new AbortController();
    const onClose = (): void => {
      if (!res.writableFinished) gone.abort(clientGone());
    };
    res.on("close", onClose);
    try {
      // Written by hand rather than piped, so that a failure before the first byte (the verifier holds the
      // last chunk back: a small NAR fails before anything is sent) still gets a proper 500.
      await pipeline(
        nar,
        slice,
        new HoldBack(),
        compressor,
        (source: AsyncIterable<Buffer>) =>
          writeBody(res, keep ? copyTo(source, keep.stream) : source, (n) => (bytes += n)),
        { signal: gone.signal },
      );
      await keep?.commit();
    } catch (err) {
      await keep?.abort();
      throw gone.signal.aborted ? clientGone() : err;
    } finally {
      res.off("close", onClose);
      served(bytes);
    }
    res.end();
  };

  // Listings made lately, by path and NarHash (a path's listing never changes while its NarHash does not): a
  // plan step asks for every path's listing on each build, and making one reads the whole NAR.
  const listings = new Map<string, Buffer>();
  let listingBytes = 0;
  const serveListing = async (req: IncomingMessage, res: ServerResponse, info: PathInfo): Promise<void> => {
    const key = `${info.path} ${info.narHash.toString("nix32")}`;
    let body = listings.get(key);
    if (body) {
      listings.delete(key); // most recently used last
      listings.set(key, body);
    } else {
      const nar = await store.narFromPath(info);
      // The parser stops at the end of the root node; keep the iterator open so the rest (nothing, for a
      // well-formed NAR) is drained and the verifier's end-of-stream checks run before anything is sent.
      const it = nar[Symbol.asyncIterator]();
      const view: AsyncIterable<Buffer> = { [Symbol.asyncIterator]: () => ({ next: () => it.next() }) };
      let listing;
      try {
        listing = await listNar(view, { input: info.path });
        for (let r = await it.next(); !r.done; r = await it.next());
      } finally {
        nar.destroy();
      }
      body = narListingBytes(listing);
      if (body.length <= LISTING_CACHE_BYTES / 8) {
        listings.set(key, body);
        listingBytes += body.length;
        for (const [k, b] of listings) {
          if (listingBytes <= LISTING_CACHE_BYTES) break;
          listings.delete(k);
          listingBytes -= b.length;
        }
      }
    }
    send(req, res, 200, "application/json", body, { "Cache-Control": IMMUTABLE });
  };

  const handle = async (req: IncomingMessage, res: ServerResponse, path: string): Promise<void> => {
    if (path.length > MAX_PATH) return notFound(req, res);
    if (path === "/nix-cache-info") {
      send(req, res, 200, "text/x-nix-cache-info", cacheInfo, { "Cache-Control": NARINFO_CACHE });
      return;
    }
    let m = NARINFO_RE.exec(path);
    if (m) {
      const info = await lookup(m[1]);
      if (!info) return notFound(req, res);
      send(req, res, 200, "text/x-nix-narinfo", narInfoText(m[1], info), { "Cache-Control": NARINFO_CACHE });
      return;
    }
    m = NAR_RE.exec(path);
    if (m) {
      const [, hashPart, narHash, ext = ""] = m;
      const info = await lookup(hashPart);
      if (!info || info.narHash.algo !== "sha256" || info.narHash.toString("nix32") !== `sha256:${narHash}`) {
        return notFound(req, res);
      }
      if (req.method === "HEAD") return serveNar(req, res, info, EXT_TO_COMPRESSION[ext]);
      return inNarSlot(req, res, () => serveNar(req, res, info, EXT_TO_COMPRESSION[ext]));
    }
    m = LS_RE.exec(path);
    if (m) {
      const info = await lookup(m[1]);
      if (!info) return notFound(req, res);
      return inNarSlot(req, res, () => serveListing(req, res, info));
    }
    notFound(req, res);
  };

  const handler = async (req: IncomingMessage, res: ServerResponse): Promise<boolean> => {
    const path = requestPath(req);
    if (path === undefined || !isOurs(path)) return false;
    if (req.method !== "GET" && req.method !== "HEAD") {
      send(req, res, 405, "text/plain; charset=utf-8", "method not allowed\n", { Allow: "GET, HEAD" });
      return true;
    }
    try {
      await handle(req, res, path);
    } catch (err) {
      // A client that went away is not an error of ours (the response is only ever destroyed by the client
      // side: our own failures reach this point with the response still open).
      if (!res.destroyed) opts.onError?.(err, path);
      if (!res.headersSent && !res.destroyed) {
        for (const name of res.getHeaderNames()) res.removeHeader(name); // the NAR's, set but not sent
        send(req, res, 500, "text/plain; charset=utf-8", "internal error\n", { "Cache-Control": "no-store" });
      } else if (!res.writableEnded) {
        res.destroy();
      }
    }
    return true;
  };
  return Object.assign(handler, { close: () => resolver.close() });
}
