// How a binary cache's files are reached: a directory (file://) or a web server (http(s)://). Both answer
// "absent" the way Nix expects (missing file; HTTP 404 or 403) and turn every other failure into an error
// naming the URL. Relative names come from narinfo files, so the file transport confines them to its root.
import { createReadStream } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import { readFile, stat } from "node:fs/promises";
import { resolve, sep } from "node:path";
import { PassThrough, Readable, Transform } from "node:stream";
import { fileURLToPath } from "node:url";
import * as zlib from "node:zlib";
import { NixociError } from "../util/errors.js";
import { holdErrors } from "../util/streams.js";

export interface CacheTransport {
  readonly url: string;
  /** A file's text, or undefined when the cache does not have it. */
  getText(name: string): Promise<string | undefined>;
  /** Whether the cache has a file, without reading it (HEAD for HTTP). */
  has(name: string): Promise<boolean>;
  /** A file's bytes as a stream, or undefined when absent. */
  getStream(name: string): Promise<Readable | undefined>;
}

export function openTransport(url: string): CacheTransport {
  const { base } = splitCacheUrl(url, READ_PARAMS);
  if (base.startsWith("file://")) return new FileTransport(base);
  if (base.startsWith("http://") || base.startsWith("https://")) return new HttpTransport(base);
  throw new NixociError(
    redactCredentials(url),
    "unsupported binary cache URL (expected file://, http:// or https://)",
  );
}

/** The store URL parameters nixoci reads from a cache it reads (Nix's, which override nix-cache-info). */
export const READ_PARAMS = ["priority", "want-mass-query"] as const;

/**
 * A cache URL without its query (`file:///d?priority=10` is the cache at /d), and its parameters. A parameter
 * not in `known` is refused rather than dropped: `?secret-key=` ignored would mean an unsigned cache.
 */
export function splitCacheUrl(
  url: string,
  known: readonly string[],
  hint = `nixoci reads ${known.join(" and ")}`,
): { base: string; params: Map<string, string> } {
  const q = url.indexOf("?");
  const params = new Map<string, string>();
  if (q < 0) return { base: url, params };
  for (const [k, v] of new URLSearchParams(url.slice(q + 1))) {
    if (!known.includes(k))
      throw new NixociError(
        redactCredentials(url.slice(0, q)),
        `unknown store URL parameter ${JSON.stringify(k)} (${hint})`,
      );
    params.set(k, v);
  }
  return { base: url.slice(0, q), params };
}

export class FileTransport implements CacheTransport {
  readonly root: string;

  /** Fails when the cache's directory is not there (a typo in --from), rather than reading it as empty. */
  async checkRoot(): Promise<void> {
    const st = await stat(this.root).catch(() => undefined);
    if (!st) throw new NixociError(this.url, "no such directory");
    if (!st.isDirectory()) throw new NixociError(this.url, "not a directory");
  }

  constructor(readonly url: string) {
    let dir: string;
    try {
      dir = fileURLToPath(url);
    } catch {
      throw new NixociError(url, "malformed file:// URL");
    }
    this.root = resolve(dir);
  }

  private file(name: string): string {
    const file = resolve(this.root, name);
    if (!file.startsWith(this.root + sep))
      throw new NixociError(`${this.url}/${name}`, "name escapes the cache");
    return file;
  }

  async getText(name: string): Promise<string | undefined> {
    const file = this.file(name);
    try {
      if ((await stat(file)).size > MAX_TEXT_BYTES) throw tooLarge(`${this.url}/${name}`);
      return await readFile(file, "utf8");
    } catch (err) {
      if (isAbsent(err)) return undefined;
      if (err instanceof NixociError) throw err;
      throw new NixociError(`${this.url}/${name}`, (err as Error).message);
    }
  }

  async has(name: string): Promise<boolean> {
    try {
      return (await stat(this.file(name))).isFile();
    } catch (err) {
      if (isAbsent(err)) return false;
      throw err;
    }
  }

  async getStream(name: string): Promise<Readable | undefined> {
    const file = this.file(name);
    if (!(await this.has(name))) return undefined;
    return createReadStream(file, { highWaterMark: 1 << 20 });
  }
}

/**
 * The most a text file of a cache (nix-cache-info, a narinfo) may hold: a narinfo with ten thousand references is
 * under 1 MiB. A server that sends more (or never stops) gets an error, not all of the process's memory.
 */
const MAX_TEXT_BYTES = 16 << 20;

function tooLarge(target: string): NixociError {
  return new NixociError(
    target,
    `larger than ${MAX_TEXT_BYTES >> 20} MiB: not a nix-cache-info or narinfo file`,
  );
}

function isAbsent(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === "ENOENT" || code === "ENOTDIR";
}

const RETRIES = 3;

/** How long a request may wait for the response head (connect included) before it counts as failed. */
const HEAD_TIMEOUT_MS = 60_000;

/**
 * How long a response body may bring no byte before the download counts as stalled (Nix's
 * `stalled-download-timeout`; it defaults to 300 s there). The environment variable of that name, in seconds,
 * overrides it. A whole NAR may take as long as it needs while it keeps flowing.
 */
export function stalledDownloadTimeoutMs(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.NIXOCI_STALLED_DOWNLOAD_TIMEOUT;
  if (raw === undefined || raw === "") return 60_000;
  const seconds = Number(raw);
  if (!Number.isFinite(seconds) || seconds <= 0)
    throw new NixociError(
      "NIXOCI_STALLED_DOWNLOAD_TIMEOUT",
      `not a positive number of seconds: ${JSON.stringify(raw)}`,
    );
  return seconds * 1000;
}

export interface HttpTransportOptions {
  /** Longest wait for the response head (default 60 s). */
  headTimeoutMs?: number;
  /** Longest time without a byte of a response body (default stalledDownloadTimeoutMs()). */
  stallTimeoutMs?: number;
}

/** Why a response body stopped, in words an operator can act on. */
function bodyFailure(err: unknown, received: number, expected: number | undefined): string {
  const cause = (err as Error & { cause?: Error }).cause?.message ?? (err as Error).message;
  const got = expected === undefined ? `${received} bytes` : `${received} of ${expected} bytes`;
  if (
    (err as NodeJS.ErrnoException).code === "ECONNRESET" ||
    /other side closed|aborted|ECONNRESET|socket/i.test(cause)
  )
    return `the cache closed the connection after ${got} (${cause})`;
  return `download failed after ${got}: ${cause}`;
}

/** `url` with any user and password replaced by "***" (for messages). */
export function redactCredentials(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@]*@/i, "$1***@");
}

/** HTTP statuses that redirect (fetch's and curl's set); at most MAX_REDIRECTS of them are followed per request. */
const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const MAX_REDIRECTS = 10;

/**
 * One keep-alive agent per scheme for the process: a plan or fetch step asks one cache for a hundred narinfos, each
 * on a connection already open. Node's http client rather than fetch(): undici costs ~30 ms to load in every
 * short-lived step and several times the CPU per request, and streams bodies through web streams.
 */
let agents: { http: http.Agent; https: https.Agent } | undefined;
function agentFor(url: URL): http.Agent {
  agents ??= {
    http: new http.Agent({ keepAlive: true, maxSockets: 32 }),
    https: new https.Agent({ keepAlive: true, maxSockets: 32 }),
  };
  return url.protocol === "https:" ? agents.https : agents.http;
}

/** A decoder for a Content-Encoding (a server may send a file stored compressed, as S3 does), or undefined for none. */
function contentDecoder(encoding: string | undefined): Transform | undefined {
  switch ((encoding ?? "").trim().toLowerCase()) {
    case "":
    case "identity":
      return undefined;
    case "gzip":
    case "x-gzip":
      return zlib.createGunzip();
    case "deflate":
      return zlib.createInflate();
    case "br":
      return zlib.createBrotliDecompress();
    default:
      throw new Error(`unsupported Content-Encoding ${JSON.stringify(encoding)}`);
  }
}

export class HttpTransport implements CacheTransport {
  private readonly base: string;
  private readonly headTimeoutMs: number;
  private readonly stallTimeoutMs: number;

  /** Basic credentials from the URL (http://USER:PASSWORD@HOST, as curl and Nix take them), sent as a header. */
  private readonly authorization?: string;

  constructor(
    readonly url: string,
    opts: HttpTransportOptions = {},
  ) {
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      throw new NixociError(redactCredentials(url), "malformed URL");
    }
    if (parsed.username || parsed.password) {
      const user = decodeURIComponent(parsed.username);
      const password = decodeURIComponent(parsed.password);
      this.authorization = `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;
      parsed.username = "";
      parsed.password = "";
      url = parsed.toString();
    }
    // Errors name the URL without the credentials.
    this.url = url;
    this.base = url.replace(/\/+$/, "");
    this.headTimeoutMs = opts.headTimeoutMs ?? HEAD_TIMEOUT_MS;
    this.stallTimeoutMs = opts.stallTimeoutMs ?? stalledDownloadTimeoutMs();
  }

  /**
   * The response head for `target`, redirects followed (credentials go to the first origin only, as fetch and curl
   * send them); the whole chain must answer within headTimeoutMs. Rejects with the reason in words.
   */
  private head(
    target: string,
    method: "GET" | "HEAD",
  ): Promise<{ res: http.IncomingMessage; req: http.ClientRequest }> {
    return new Promise((resolve, reject) => {
      let req: http.ClientRequest | undefined;
      let done = false;
      const finish = (err?: Error, res?: http.IncomingMessage): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (err) {
          req?.destroy();
          reject(err);
        } else resolve({ res: res!, req: req! });
      };
      const timer = setTimeout(
        () => finish(new Error(`no response within ${this.headTimeoutMs / 1000} s`)),
        this.headTimeoutMs,
      );
      const send = (url: URL, authorization: string | undefined, redirects: number): void => {
        const lib = url.protocol === "https:" ? https : http;
        req = lib.request(url, {
          method,
          agent: agentFor(url),
          headers: authorization ? { Authorization: authorization } : {},
        });
        req.on("error", (err) => finish(err));
        req.on("response", (res) => {
          const location = res.headers.location;
          if (!REDIRECTS.has(res.statusCode ?? 0) || !location) return finish(undefined, res);
          res.resume();
          if (redirects >= MAX_REDIRECTS) return finish(new Error(`more than ${MAX_REDIRECTS} redirects`));
          let next: URL;
          try {
            next = new URL(location, url);
          } catch {
            return finish(new Error(`a redirect to a malformed URL ${JSON.stringify(location)}`));
          }
          if (next.protocol !== "http:" && next.protocol !== "https:")
            return finish(new Error(`a redirect to ${next.protocol} (only http and https are followed)`));
          send(next, next.origin === url.origin ? authorization : undefined, redirects + 1);
        });
        req.end();
      };
      send(new URL(target), this.authorization, 0);
    });
  }

  /**
   * One request with retries on network errors and 5xx (as Nix does); 404 and 403 mean absent. The head must
   * come within headTimeoutMs; the body, returned as a stream, must bring a byte at least every stallTimeoutMs.
   */
  private async request(name: string, method: "GET" | "HEAD"): Promise<Readable | undefined> {
    const target = `${this.base}/${name}`;
    let lastError = "";
    for (let attempt = 0; attempt < RETRIES; attempt++) {
      if (attempt) await new Promise((r) => setTimeout(r, 250 * 2 ** attempt));
      let got: { res: http.IncomingMessage; req: http.ClientRequest };
      try {
        got = await this.head(target, method);
      } catch (err) {
        lastError = (err as Error).message;
        continue;
      }
      const { res, req } = got;
      const status = res.statusCode ?? 0;
      if (status === 404 || status === 403) {
        res.resume();
        return undefined;
      }
      if (status >= 200 && status < 300) return this.watchedBody(res, req, target);
      res.resume();
      lastError = `HTTP ${status} ${res.statusMessage ?? ""}`.trimEnd();
      if (status < 500) break;
    }
    throw new NixociError(target, lastError || "request failed");
  }

  /**
   * The body of `res` (decoded if the server sent it with a Content-Encoding) as a stream that fails with an error
   * naming `target` when the server closes early or sends nothing for stallTimeoutMs.
   */
  private watchedBody(res: http.IncomingMessage, req: http.ClientRequest, target: string): Readable {
    const length = res.headers["content-length"];
    const expected = length !== undefined && /^\d+$/.test(length) ? Number(length) : undefined;
    let decoder: Transform | undefined;
    try {
      decoder = contentDecoder(res.headers["content-encoding"]);
    } catch (err) {
      req.destroy();
      throw new NixociError(target, (err as Error).message);
    }
    let received = 0;
    let stalled = false;
    const stallMs = this.stallTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const arm = (): void => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        stalled = true;
        req.destroy();
      }, stallMs);
    };
    const counted = new Transform({
      transform(chunk: Buffer, _enc, done) {
        received += chunk.length;
        arm();
        done(null, chunk);
      },
    });
    const out = decoder ? new PassThrough({ highWaterMark: 1 << 20 }) : counted;
    arm();
    const fail = (err: Error): void => {
      const why = stalled
        ? `stalled: no data for ${stallMs / 1000} s after ${received}${expected === undefined ? "" : ` of ${expected}`} bytes`
        : bodyFailure(err, received, expected);
      out.destroy(new NixociError(target, why));
    };
    res.on("error", fail);
    // A connection that closes before the body's end: Node ends some such bodies without an error.
    res.on("close", () => {
      if (!res.complete) fail(Object.assign(new Error("socket closed"), { code: "ECONNRESET" }));
    });
    res.pipe(counted);
    if (decoder) {
      const encoding = res.headers["content-encoding"];
      decoder.on("error", (err) =>
        out.destroy(new NixociError(target, `bad ${encoding} data: ${err.message}`)),
      );
      counted.pipe(decoder).pipe(out);
    }
    // Whatever ends the stream, the timer (and decoder) go with it; a reader that gives up cancels the download.
    out.once("close", () => {
      clearTimeout(timer);
      decoder?.destroy();
      if (!res.complete) req.destroy();
    });
    return holdErrors(out);
  }

  async getText(name: string): Promise<string | undefined> {
    const body = await this.request(name, "GET");
    if (!body) return undefined;
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of body) {
      size += (chunk as Buffer).length;
      if (size > MAX_TEXT_BYTES) {
        body.destroy();
        throw tooLarge(`${this.base}/${name}`);
      }
      chunks.push(chunk as Buffer);
    }
    return Buffer.concat(chunks).toString("utf8");
  }

  async has(name: string): Promise<boolean> {
    const body = await this.request(name, "HEAD");
    body?.destroy();
    return body !== undefined;
  }

  async getStream(name: string): Promise<Readable | undefined> {
    return this.request(name, "GET");
  }
}
