// The registry's access log: one structured line per finished request.
import { TEXT, textValue, type Logger } from "../../util/logger.js";
import type { RequestInfo } from "./metrics.js";

/** Request paths and user agents are untrusted and unbounded; logs keep the first this many characters. */
const MAX_LOGGED_PATH = 512;
const MAX_LOGGED_USER_AGENT = 256;

function clip(s: string, max: number): string {
  return s.length > max ? `${s.slice(0, max)}…` : s;
}

/** Milliseconds for people: a tenth below 10 ms, whole ones above. */
function humanMs(ms: number): string {
  return ms < 10 ? `${ms.toFixed(1)}ms` : `${Math.round(ms)}ms`;
}

/**
 * Logs one finished request as {"msg":"request","method","path","status","bytes","ms"} (plus "route", "repo",
 * "error", "client" and "userAgent" when known): level "error" for 5xx, "info" otherwise. Its text line is
 * `METHOD PATH STATUS DURATION CLIENT USER-AGENT` ("-" for what is unknown; the user agent quoted when it has
 * spaces), then `error=...` when there is one.
 *
 * A client that spoke TLS to this plain-HTTP server (route "tls-probe": docker tries https first) is no error of
 * the server's nor really of the client's: one debug line naming the client.
 */
export function logRequest(logger: Logger, info: RequestInfo): void {
  if (info.route === "tls-probe") {
    const client = info.client ?? "-";
    logger.debug("client spoke TLS to a plain-HTTP listener", {
      client: info.client,
      [TEXT]: `client ${client} spoke TLS to a plain-HTTP listener (docker's first try; clients need insecure-registries or --tls-verify=false)`,
    });
    return;
  }
  const path = clip(info.path, MAX_LOGGED_PATH);
  const userAgent = info.userAgent !== undefined ? clip(info.userAgent, MAX_LOGGED_USER_AGENT) : undefined;
  const fields: Record<string | symbol, unknown> = {
    method: info.method,
    path,
    status: info.status,
    bytes: info.bytes,
    ms: Math.round(info.durationMs * 1000) / 1000,
    route: info.route,
  };
  if (info.repo !== undefined) fields.repo = info.repo;
  let error: string | undefined;
  if (info.error !== undefined && info.error !== null) {
    error = info.error instanceof Error ? info.error.message : String(info.error);
    fields.error = error;
  }
  if (info.client !== undefined) fields.client = info.client;
  if (userAgent !== undefined) fields.userAgent = userAgent;
  fields[TEXT] = [
    info.method || "-",
    path || "-",
    String(info.status),
    humanMs(info.durationMs),
    info.client ?? "-",
    userAgent ? textValue(userAgent) : "-",
    ...(error !== undefined ? [`error=${textValue(error)}`] : []),
  ].join(" ");
  if (info.status >= 500) logger.error("request", fields);
  else logger.info("request", fields);
}
