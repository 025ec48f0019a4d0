// What `nixoci snapshotter --metrics-address` reports: every RPC by method and gRPC code with its duration, and
// what became of the layers that name store paths (committed from the store, by mode; or unpacked, and why).
import { GrpcCallMetrics } from "../../util/grpc-metrics.js";
import { Metrics } from "../../util/metrics.js";

export type NixLayerFallback = "unsupported" | "bad-label" | "missing" | "substitution-failed";

export class SnapshotterMetrics extends Metrics {
  readonly rpcs = new GrpcCallMetrics(this, {
    calls: "nixoci_snapshotter_rpcs_total",
    callsHelp: "Snapshots RPCs answered, by method and gRPC code.",
    duration: "nixoci_snapshotter_rpc_duration_seconds",
    durationHelp: "Time to answer an RPC.",
  });
  readonly nixLayers = this.counter(
    "nixoci_snapshotter_nix_layers_total",
    "Layers naming store paths committed from the store, by how they hold the store (link, metacopy, bind).",
    ["mode"],
  );
  readonly nixLayerFallbacks = this.counter(
    "nixoci_snapshotter_nix_layer_fallbacks_total",
    "Layers naming store paths that were unpacked instead, by reason.",
    ["reason"],
  );
  readonly fetchedLayers = this.counter(
    "nixoci_snapshotter_fetched_layers_total",
    "Layers naming store paths missing from the store that the snapshotter fetched from the registry itself.",
  );
  readonly substitutedPaths = this.counter(
    "nixoci_snapshotter_substituted_paths_total",
    "Store paths substituted from binary caches for nix layers.",
  );

  observe(method: string, code: number, startMs: number): void {
    this.rpcs.observe(method, code, startMs);
  }
}
