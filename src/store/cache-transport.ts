// How a binary cache's files are reached: a directory (file://) or a web server (http(s)://). Both answer
// "absent" the way Nix expects (missing file; HTTP 404 or 403) and turn every other failure into an error
// naming the URL. Relative names come from narinfo files, so the file transport confines them to its root.
import { createReadStream } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import { resolve, sep } from "node:path";
import { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import { NixociError } from "../util/errors.js";

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
  if (url.startsWith("file://")) return new FileTransport(url);
  if (url.startsWith("http://") || url.startsWith("https://")) return new HttpTransport(url);
  throw new NixociError(url, "unsupported binary cache URL (expected file://, http:// or https://)");
}

class FileTransport implements CacheTransport {
  readonly root: string;

  constructor(readonly url: string) {
    let dir: string;
    try {
      dir = fileURLToPath(url.split("?")[0]);
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
    try {
      return await readFile(this.file(name), "utf8");
    } catch (err) {
      if (isAbsent(err)) return undefined;
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

function isAbsent(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === "ENOENT" || code === "ENOTDIR";
}

const RETRIES = 3;
const TIMEOUT_MS = 60_000;

class HttpTransport implements CacheTransport {
  private readonly base: string;

  constructor(readonly url: string) {
    try {
      new URL(url);
    } catch {
      throw new NixociError(url, "malformed URL");
    }
    this.base = url.replace(/\/+$/, "");
  }

  /** One request with retries on network errors and 5xx (as Nix does); 404 and 403 mean absent. */
  private async request(name: string, method: "GET" | "HEAD"): Promise<Response | undefined> {
    const target = `${this.base}/${name}`;
    let lastError = "";
    for (let attempt = 0; attempt < RETRIES; attempt++) {
      if (attempt) await new Promise((r) => setTimeout(r, 250 * 2 ** attempt));
      let res: Response;
      try {
        res = await fetch(target, { method, signal: AbortSignal.timeout(TIMEOUT_MS), redirect: "follow" });
      } catch (err) {
        lastError = (err as Error & { cause?: Error }).cause?.message ?? (err as Error).message;
        continue;
      }
      if (res.status === 404 || res.status === 403) {
        await res.body?.cancel();
        return undefined;
      }
      if (res.ok) return res;
      await res.body?.cancel();
      lastError = `HTTP ${res.status} ${res.statusText}`;
      if (res.status < 500) break;
    }
    throw new NixociError(target, lastError || "request failed");
  }

  async getText(name: string): Promise<string | undefined> {
    const res = await this.request(name, "GET");
    return res ? await res.text() : undefined;
  }

  async has(name: string): Promise<boolean> {
    return (await this.request(name, "HEAD")) !== undefined;
  }

  async getStream(name: string): Promise<Readable | undefined> {
    const res = await this.request(name, "GET");
    if (!res?.body) return undefined;
    return Readable.fromWeb(res.body as import("node:stream/web").ReadableStream<Uint8Array>);
  }
}
