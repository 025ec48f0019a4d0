// The metrics of `nixoci serve` on top of the Prometheus registry in util/metrics.ts (re-exported here).
import { Metrics } from "../../util/metrics.js";

export * from "../../util/metrics.js";

/** What the registry server reports per request (its `onRequest` callback); defined by the server. */
export type { RequestInfo } from "./server.js";
import type { RequestInfo } from "./server.js";

const KNOWN_METHODS = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);

/** Seconds, for image builds: from a cache hit's second to a cold build of a big closure. */
export const BUILD_BUCKETS: readonly number[] = [0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200];

/** The standard metrics of `nixoci serve`, as typed fields; still a Metrics, for render() and /metrics. */
export class RegistryMetrics extends Metrics {
  readonly httpRequests = this.counter("nixoci_http_requests_total", "HTTP requests answered.", [
    "method",
    "route",
    "status",
  ]);
  readonly httpDuration = this.histogram(
    "nixoci_http_request_duration_seconds",
    "Time from request to the end of the response.",
    ["route"],
  );
  readonly httpResponseBytes = this.counter("nixoci_http_response_bytes_total", "Response body bytes sent.", [
    "route",
  ]);
  readonly imageBuilds = this.counter(
    "nixoci_image_builds_total",
    "Images built, by result.",
    ["result"],
    [{ result: "success" }, { result: "failure" }],
  );
  readonly imageBuildDuration = this.histogram(
    "nixoci_image_build_duration_seconds",
    "Time to build an image.",
    [],
    BUILD_BUCKETS,
  );
  readonly imageCache = this.counter(
    "nixoci_image_cache_total",
    'Image requests by how they were served: "hit" (already built), "miss" (built now), "coalesced" (waited for a build in progress).',
    ["result"],
    [{ result: "hit" }, { result: "miss" }, { result: "coalesced" }],
  );
  readonly binaryCacheBytes = this.counter(
    "nixoci_binary_cache_bytes_total",
    "Bytes served by the Nix binary cache endpoint.",
  );
  readonly buildsInProgress = this.gauge("nixoci_builds_in_progress", "Image builds running now.");

  /** Counts one finished request (the server's onRequest). Unknown methods count as "OTHER". */
  observeRequest(info: Pick<RequestInfo, "method" | "route" | "status" | "bytes" | "durationMs">): void {
    const method = KNOWN_METHODS.has(info.method) ? info.method : "OTHER";
    const route = info.route || "unknown";
    this.httpRequests.inc({ method, route, status: String(info.status) });
    this.httpDuration.observe({ route }, Math.max(info.durationMs, 0) / 1000);
    if (info.bytes > 0) this.httpResponseBytes.inc({ route }, info.bytes);
  }
}

/** A fresh registry with the standard set of `nixoci serve` metrics. */
export function registryMetrics(): RegistryMetrics {
  return new RegistryMetrics();
}
