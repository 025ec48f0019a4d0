// The HTTP server of `nixoci serve`: the distribution API (distribution.ts) under /v2, the extra routes (binary
// cache endpoint, /metrics, /healthz, the page) everywhere else. Every request first goes through the one access
// decision (access.ts), then the auth checks the credentials it asks for. Every registry response carries
// Docker-Distribution-API-Version; errors are the spec's JSON; anything unexpected is a 500 UNKNOWN whose cause
// goes to onRequest (never to the client).
//
// Slow clients: request heads must arrive within 30 s (else 408; oversized ones get 431 from Node's parser);
// a request body must keep coming: fewer than 16 KiB in 30 s while the server waits for it (nothing of it
// buffered unread) ends the request with 408 and closes the connection, however long the body has been
// flowing, so a body trickled byte by byte does not hold a connection for ever, while a large upload at any
// useful speed takes as long as it needs. Idle connections close after 10 minutes (an on-demand build may keep
// a request silent that long), idle keep-alive connections after 95 s (see keepAliveTimeout below).
import * as http from "node:http";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { oneLine } from "../../util/errors.js";
import { decideAccess, decideRepoAccess, type AccessPolicy, type Decision } from "./access.js";
import type { RegistryAuth } from "./auth.js";
import { Distribution } from "./distribution.js";
import { NO_TRUSTED_PROXIES, plainAddress, type TrustedProxies } from "./client-address.js";
import { RegistryError, registryError } from "./errors.js";
import type { ManifestSource } from "./manifest-source.js";
import { checkMethod, parseRoute, routeName, type Route } from "./routes.js";
import type { RegistryStorage } from "./storage.js";
import { isStorageFull } from "../../util/fs-errors.js";

export interface RequestInfo {
  method: string;
  path: string;
  route: string;
  status: number;
  bytes: number;
  durationMs: number;
  repo?: string;
  /** A one-line cause (the server reports strings; other reporters may pass an Error). */
  error?: unknown;
  /** The client's address: the connection's peer, or what a trusted proxy forwarded (client-address.ts). */
  client?: string;
  /** The client's User-Agent header. */
  userAgent?: string;
}

export interface RegistryServerOptions {
  storage: RegistryStorage;
  manifestSource?: ManifestSource;
  auth?: RegistryAuth;
  /**
   * Handlers of the paths outside /v2 (binary cache endpoint, /metrics, /healthz, / page), tried in order once
   * the access decision let the request through. Return true when handled; unhandled paths are 404s.
   */
  routes?: ((req: IncomingMessage, res: ServerResponse) => boolean | Promise<boolean>)[];
  /** Called once per finished request (for logs and metrics). */
  onRequest?: (info: RequestInfo) => void;
  /** Largest request head in bytes (default 16 KiB); bigger ones get 431. */
  maxHeaderSize?: number;
  /**
   * A request body must bring at least minBytes (default 16 KiB) every windowMs (default 30 s) while the server
   * waits for it; else 408 and the connection is closed.
   */
  bodyProgress?: { windowMs: number; minBytes: number };
  /** Time allowed for a request's head (default 30 s). */
  headersTimeoutMs?: number;
  /** Reverse proxies whose X-Forwarded-For names the client (default none: the peer is the client). */
  trustedProxies?: TrustedProxies;
}

export const DEFAULT_MAX_HEADER_SIZE = 16 << 10;
const BODY_PROGRESS = { windowMs: 30_000, minBytes: 16 << 10 };

/**
 * Ends a request whose body stalls: every windowMs, unless the body is complete, the socket must have brought
 * minBytes more, or the server must be the one not reading (part of the body buffered, unread). Otherwise the
 * client gets 408 (if nothing was answered yet) and the connection is closed.
 */
function watchBodyProgress(
  req: IncomingMessage,
  res: ServerResponse,
  opts: { windowMs: number; minBytes: number },
  onStall: () => void,
): void {
  const chunked = req.headers["transfer-encoding"] !== undefined;
  if (req.complete || (!chunked && !(Number(req.headers["content-length"]) > 0))) return;
  const socket = req.socket;
  let last = socket.bytesRead;
  const timer = setInterval(() => {
    if (req.complete || socket.destroyed) {
      clearInterval(timer);
      return;
    }
    const read = socket.bytesRead;
    const progressed = read - last >= opts.minBytes || req.readableLength > 0 || socket.isPaused();
    last = read;
    if (progressed) return;
    clearInterval(timer);
    onStall();
    if (!res.headersSent) {
      const body = registryError("UNKNOWN", { status: 408, message: "request body too slow" }).body();
      res.writeHead(408, {
        "Content-Type": "application/json; charset=utf-8",
        "Content-Length": String(body.length),
        Connection: "close",
      });
      res.end(body, () => socket.destroy());
      // A client that does not read either: the socket goes anyway.
      setTimeout(() => socket.destroy(), 1000).unref();
    } else {
      socket.destroy();
    }
  }, opts.windowMs);
  timer.unref();
  const stop = (): void => clearInterval(timer);
  req.once("end", stop);
  req.once("close", stop);
}

/** The connection's peer address; an IPv4 client of a dual-stack listener as plain IPv4. */
function clientAddress(socket: Duplex): string | undefined {
  return plainAddress((socket as Partial<Socket>).remoteAddress);
}

/** A TLS record of type handshake (a ClientHello) where an HTTP request line should be. */
function isTlsHandshake(err: NodeJS.ErrnoException & { rawPacket?: Buffer }): boolean {
  return err.rawPacket?.[0] === 0x16;
}

function errorMessage(err: unknown): string {
  return oneLine(err instanceof Error ? err.message : String(err));
}

/**
 * A registry error response; once the response has started, or when the client is gone (an upload cut off), the
 * connection is cut instead (reported as status 499, "aborted"). Returns the note for onRequest.
 */
function sendError(req: IncomingMessage, res: ServerResponse, err: unknown): string {
  if (res.headersSent || res.destroyed || req.socket.destroyed) {
    if (!res.headersSent) res.statusCode = 499;
    res.destroy();
    return `aborted: ${errorMessage(err)}`;
  }
  const full = isStorageFull(err);
  const re =
    err instanceof RegistryError
      ? err
      : full
        ? registryError("UNKNOWN", { status: 507, message: "the registry's storage is full" })
        : registryError("UNKNOWN");
  const note =
    err instanceof RegistryError ? err.code : `${full ? "storage full" : "internal"}: ${errorMessage(err)}`;
  const body = re.body();
  const headers: Record<string, string> = {
    ...re.headers,
    "Content-Type": "application/json; charset=utf-8",
    "Content-Length": String(body.length),
  };
  // A request body still on its way. Refused (4xx): it is not read, the connection closes after the answer. A
  // failure while the server was taking it (5xx: the disk filled mid-upload): the rest is read and dropped (the
  // stall watchdog bounds it) so the client, still writing, is not reset before it reads the answer.
  if (!req.complete) {
    if (re.status < 500) headers.Connection = "close";
    else req.resume();
  }
  res.writeHead(re.status, headers);
  res.end(body);
  return note;
}

export function createRegistryServer(opts: RegistryServerOptions): http.Server {
  const dist = new Distribution(opts.storage, opts.manifestSource);
  const auth = opts.auth;
  const policy: AccessPolicy = { auth: auth !== undefined, requirePull: auth?.requirePull ?? false };
  const bodyProgress = opts.bodyProgress ?? BODY_PROGRESS;
  const proxies = opts.trustedProxies ?? NO_TRUSTED_PROXIES;

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const started = performance.now();
    const method = req.method ?? "GET";
    const url = req.url ?? "/";
    const q = url.indexOf("?");
    const path = q < 0 ? url : url.slice(0, q);
    const info: { route: string; repo?: string; error?: string } = { route: "other" };
    // Read now: the socket forgets its peer once it is closed (an aborted request is reported after that).
    const client = proxies.clientOf(req.socket.remoteAddress, req.headers["x-forwarded-for"]);
    const userAgent = req.headers["user-agent"];

    // Bytes of response body sent, for onRequest.
    let bytes = 0;
    const count = (chunk: unknown): void => {
      if (method === "HEAD" || chunk === undefined || chunk === null || typeof chunk === "function") return;
      bytes += typeof chunk === "string" ? Buffer.byteLength(chunk) : (chunk as Uint8Array).length;
    };
    const write = res.write;
    const end = res.end;
    res.write = function (this: ServerResponse, chunk: unknown, ...rest: unknown[]) {
      count(chunk);
      return (write as (...a: unknown[]) => boolean).call(this, chunk, ...rest);
    } as typeof res.write;
    res.end = function (this: ServerResponse, chunk?: unknown, ...rest: unknown[]) {
      count(chunk);
      return (end as (...a: unknown[]) => ServerResponse).call(this, chunk, ...rest);
    } as typeof res.end;
    let reported = false;
    const report = (): void => {
      if (reported) return;
      reported = true;
      if (!res.writableFinished) info.error ??= "aborted";
      try {
        opts.onRequest?.({
          method,
          path,
          route: info.route,
          status: res.statusCode,
          bytes,
          durationMs: performance.now() - started,
          ...(info.repo !== undefined ? { repo: info.repo } : {}),
          ...(info.error !== undefined ? { error: info.error } : {}),
          ...(client !== undefined ? { client } : {}),
          ...(userAgent !== undefined ? { userAgent } : {}),
        });
      } catch {
        // a failing observer must not break the server
      }
    };
    res.once("finish", report);
    res.once("close", report);
    watchBodyProgress(req, res, bodyProgress, () => (info.error = "request body too slow"));

    let route: Route | undefined;
    const verify = async (d: Decision): Promise<void> => {
      if (!d.open && auth) await auth.verify(req, d, client);
    };
    try {
      if (path !== "/v2" && !path.startsWith("/v2/")) {
        // Everything outside the registry API: the decision first, then the handlers.
        await verify(decideAccess(method, path, undefined, policy));
        for (const r of opts.routes ?? []) {
          if (await r(req, res)) {
            info.route = "extra";
            return;
          }
        }
        throw registryError("NOT_FOUND");
      }
      try {
        route = parseRoute(path);
      } catch (err) {
        info.route = "invalid-name";
        throw err;
      }
      if (!route) throw registryError("NOT_FOUND");
      res.setHeader("Docker-Distribution-API-Version", "registry/2.0");
      info.route = routeName(route, method);
      if ("name" in route) info.repo = route.name;
      // Credentials before anything about the route: under --auth-pull an unknown path or method says nothing.
      await verify(decideAccess(method, path, route, policy));
      checkMethod(route, method);
      if (route.kind === "token") {
        if (!auth?.handleTokenRequest)
          throw registryError("NOT_FOUND", { message: "this registry has no token endpoint" });
        await auth.handleTokenRequest(req, res, client);
        return;
      }
      const query = new URLSearchParams(q < 0 ? "" : url.slice(q + 1));
      await dist.handle(req, res, route, {
        query,
        authorize: (action, repo) => verify(decideRepoAccess(action, repo, policy)),
      });
    } catch (err) {
      if (route === undefined && err instanceof RegistryError && path.startsWith("/v2"))
        res.setHeader("Docker-Distribution-API-Version", "registry/2.0");
      info.error = sendError(req, res, err);
    }
  };

  const server = http.createServer(
    {
      maxHeaderSize: opts.maxHeaderSize ?? DEFAULT_MAX_HEADER_SIZE,
      // Blob uploads may take long: no limit on the whole request; its head has headersTimeout, its body must
      // keep coming (watchBodyProgress), idle sockets close (setTimeout below).
      requestTimeout: 0,
      headersTimeout: opts.headersTimeoutMs ?? 30_000,
      // How often head timeouts are checked (Node's default is 30 s: a head could take up to twice its limit).
      connectionsCheckingInterval: Math.min(5_000, opts.headersTimeoutMs ?? 30_000),
      // Longer than clients keep idle connections for reuse (Go's transport: 90 s), so the server is not the one
      // to close a connection a client is just reusing: a request sent as the server closes is reset, and clients
      // retry a GET but not an upload (measured: 296 resets in 60 s of 550 clients with 5 s, none with 65 s).
      // Idle sockets still go (setTimeout below).
      keepAliveTimeout: 95_000,
    },
    (req, res) => {
      handle(req, res).catch(() => res.destroy());
    },
  );
  server.setTimeout(600_000, (socket) => socket.destroy());

  // A request Node's parser refused: answered here, reported as route "client-error" with the parser's code, or as
  // route "tls-probe" when the client spoke TLS (docker tries https first): not the client misbehaving, a client
  // that has not been told this registry is plain HTTP. It still gets the 400, which TLS clients report as "server
  // gave HTTP response to HTTPS client".
  server.on("clientError", (err: NodeJS.ErrnoException & { rawPacket?: Buffer }, socket: Duplex) => {
    const code = err.code ?? "";
    const client = clientAddress(socket);
    let status = 400;
    if (code === "HPE_HEADER_OVERFLOW") status = 431;
    else if (code === "ERR_HTTP_REQUEST_TIMEOUT") status = 408;
    if (code === "ECONNRESET" || !socket.writable) {
      socket.destroy();
      return;
    }
    socket.end(
      `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`,
    );
    try {
      opts.onRequest?.({
        method: "",
        path: "",
        route: isTlsHandshake(err) ? "tls-probe" : "client-error",
        status,
        bytes: 0,
        durationMs: 0,
        error: code,
        ...(client !== undefined ? { client } : {}),
      });
    } catch {
      // ignore
    }
  });

  // Idle upload sessions and dead writers' temporaries are the storage's upkeep (RegistryStorage, --upload-ttl).
  return server;
}
