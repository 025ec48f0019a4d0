// How a binary cache's files are reached: a directory (file://) or a web server (http(s)://). Both answer
// "absent" the way Nix expects (missing file; HTTP 404 or 403) and turn every other failure into an error
// naming the URL. Relative names come from narinfo files, so the file transport confines them to its root.
import { createReadStream } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import { resolve, sep } from "node:path";
import { Readable, Transform } from "node:stream";
import { fileURLToPath } from "node:url";
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
  if (/other side closed|terminated|ECONNRESET|socket/i.test(cause))
    return `the cache closed the connection after ${got} (${cause})`;
  return `download failed after ${got}: ${cause}`;
}

/** `url` with any user and password replaced by "***" (for messages). */
export function redactCredentials(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/@]*@/i, "$1***@");
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
   * One request with retries on network errors and 5xx (as Nix does); 404 and 403 mean absent. The head must
   * come within headTimeoutMs; the body, returned as a stream, must bring a byte at least every stallTimeoutMs.
   */
  private async request(name: string, method: "GET" | "HEAD"): Promise<Readable | undefined> {
    const target = `${this.base}/${name}`;
    let lastError = "";
    for (let attempt = 0; attempt < RETRIES; attempt++) {
      if (attempt) await new Promise((r) => setTimeout(r, 250 * 2 ** attempt));
      const abort = new AbortController();
      const headTimer = setTimeout(
        () => abort.abort(new Error(`no response within ${this.headTimeoutMs / 1000} s`)),
        this.headTimeoutMs,
      );
      let res: Response;
      try {
        res = await fetch(target, {
          method,
          signal: abort.signal,
          redirect: "follow",
          ...(this.authorization ? { headers: { Authorization: this.authorization } } : {}),
        });
      } catch (err) {
        lastError = abort.signal.aborted
          ? String((abort.signal.reason as Error).message)
          : ((err as Error & { cause?: Error }).cause?.message ?? (err as Error).message);
        continue;
      } finally {
        clearTimeout(headTimer);
      }
      if (res.status === 404 || res.status === 403) {
        await res.body?.cancel();
        return undefined;
      }
      if (res.ok) return this.watchedBody(res, target, abort);
      await res.body?.cancel();
      lastError = `HTTP ${res.status} ${res.statusText}`;
      if (res.status < 500) break;
    }
    throw new NixociError(target, lastError || "request failed");
  }

  /**
   * The body of `res` as a stream that fails with an error naming `target` when the server closes early or sends
   * nothing for stallTimeoutMs.
   */
  private watchedBody(res: Response, target: string, abort: AbortController): Readable {
    const length = res.headers.get("content-length");
    const expected = length !== null && /^\d+$/.test(length) ? Number(length) : undefined;
    const web = res.body ?? new ReadableStream<Uint8Array>({ start: (c) => c.close() });
    const source = Readable.fromWeb(web as import("node:stream/web").ReadableStream<Uint8Array>);
    let received = 0;
    let stalled = false;
    const stallMs = this.stallTimeoutMs;
    let timer: NodeJS.Timeout | undefined;
    const arm = (): void => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        stalled = true;
        abort.abort();
      }, stallMs);
    };
    const out = new Transform({
      transform(chunk: Buffer, _enc, done) {
        received += chunk.length;
        arm();
        done(null, chunk);
      },
    });
    arm();
    source.on("error", (err) => {
      const why = stalled
        ? `stalled: no data for ${stallMs / 1000} s after ${received}${expected === undefined ? "" : ` of ${expected}`} bytes`
        : bodyFailure(err, received, expected);
      out.destroy(new NixociError(target, why));
    });
    source.pipe(out);
    // Whatever ends the stream, the timer goes with it; a reader that gives up cancels the download.
    out.once("close", () => {
      clearTimeout(timer);
      if (!source.readableEnded) source.destroy();
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
