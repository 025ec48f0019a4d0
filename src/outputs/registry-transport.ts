// HTTP transport for the registry client: which URL a registry's API lives at, one request over node:http/https
// with the response body collected (bounded), and the one-line descriptions of error responses and network
// failures that every registry error message is built from. Nothing here knows about authentication or the
// distribution API's routes (that is registry-session.ts), so the session and the token fetches of
// registry-auth.ts share the same request function.
import * as http from "node:http";
import * as https from "node:https";
import type { Readable } from "node:stream";
import { oneLine, quote } from "../util/errors.js";

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

export interface RequestInit {
  method: string;
  headers?: Record<string, string>;
  /** A buffer, or a factory for a fresh stream (called again when the request is retried). */
  body?: Buffer | (() => Readable);
  signal?: AbortSignal;
  /** Bytes of response body kept (default 4 MiB); the rest is discarded. */
  maxBody?: number;
  onSent?: (bytes: number) => void;
}

/** A response header's (first) value. */
export function header(h: http.IncomingHttpHeaders, name: string): string | undefined {
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

/**
 * One GET whose response body is left to the caller as a stream (a layer blob is never collected): resolves with
 * the response once its headers are in. The idle timeout keeps running while the caller reads.
 */
export function httpGetStream(
  url: URL,
  headers: Record<string, string>,
  agent?: http.Agent,
  timeoutMs = 120_000,
): Promise<http.IncomingMessage> {
  const mod = url.protocol === "https:" ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(
      url,
      { method: "GET", headers: { "User-Agent": "nixoci", ...headers }, agent },
      (res) => resolve(res),
    );
    req.setTimeout(timeoutMs, () =>
      req.destroy(new Error(`no answer for ${Math.round(timeoutMs / 1000)} s`)),
    );
    req.on("error", reject);
    req.end();
  });
}

/** A network failure in one line ("aborted" for an aborted request). */
export function errnoMessage(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e?.name === "AbortError") return "aborted";
  return oneLine(e?.message ?? String(err));
}
