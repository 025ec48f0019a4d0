// The HTTP plumbing of the registry's handlers: writing empty and byte responses with their Content-Length,
// reading a bounded request body (drained before its 413, so the client sees the error), and the request
// predicates the handlers share (If-None-Match against a digest's ETag, whether a request has a body).
import type { IncomingMessage, ServerResponse } from "node:http";
import { registryError } from "./errors.js";

export const JSON_TYPE = "application/json";

export function sendEmpty(res: ServerResponse, status: number, headers: Record<string, string> = {}): void {
  res.writeHead(status, { ...headers, "Content-Length": "0" });
  res.end();
}

export function sendBytes(
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
export function readBody(req: IncomingMessage, limit: number): Promise<Buffer> {
  const tooLarge = registryError("SIZE_INVALID", {
    status: 413,
    message: "request body too large",
    detail: { limit },
  });
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

export function etagMatches(header: string | undefined, digest: string): boolean {
  if (!header) return false;
  return header.split(",").some((t) => {
    const v = t.trim().replace(/^W\//, "");
    return v === "*" || v === `"${digest}"`;
  });
}

export function hasBody(req: IncomingMessage): boolean {
  const len = req.headers["content-length"];
  if (len !== undefined) return Number(len) > 0;
  return req.headers["transfer-encoding"] !== undefined;
}
