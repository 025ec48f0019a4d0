// The registry's access log: one structured line per finished request.
import type { Logger } from "../../util/logger.js";
import type { RequestInfo } from "./metrics.js";

/** Request paths are untrusted and unbounded; logs keep the first this many characters. */
const MAX_LOGGED_PATH = 512;

/**
 * Logs one finished request as {"msg":"request","method","path","status","bytes","ms"} (plus "route",
 * "repo" and "error" when known): level "error" for 5xx, "info" otherwise.
 */
export function logRequest(logger: Logger, info: RequestInfo): void {
  const path = info.path.length > MAX_LOGGED_PATH ? `${info.path.slice(0, MAX_LOGGED_PATH)}…` : info.path;
  const fields: Record<string, unknown> = {
    method: info.method,
    path,
    status: info.status,
    bytes: info.bytes,
    ms: Math.round(info.durationMs * 1000) / 1000,
    route: info.route,
  };
  if (info.repo !== undefined) fields.repo = info.repo;
  if (info.error !== undefined && info.error !== null) {
    fields.error = info.error instanceof Error ? info.error.message : String(info.error);
  }
  if (info.status >= 500) logger.error("request", fields);
  else logger.info("request", fields);
}
