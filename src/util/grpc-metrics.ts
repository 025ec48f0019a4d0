// The call metrics of nixoci's gRPC daemons (the snapshotter, the CRI image service), declared once.
import { status } from "@grpc/grpc-js";
import type { Counter, Histogram, Metrics } from "./metrics.js";

/**
 * The two metrics every gRPC daemon reports about its calls — a counter by method and gRPC code, a latency
 * histogram by method — under the daemon's own names; `observe` records one answered call.
 */
export class GrpcCallMetrics {
  readonly calls: Counter;
  readonly duration: Histogram;

  constructor(
    metrics: Metrics,
    names: { calls: string; callsHelp: string; duration: string; durationHelp: string },
  ) {
    this.calls = metrics.counter(names.calls, names.callsHelp, ["method", "code"]);
    this.duration = metrics.histogram(names.duration, names.durationHelp, ["method"]);
  }

  /** One call of `method` answered with gRPC status `code`, started at `startMs` (performance.now()). */
  observe(method: string, code: number, startMs: number): void {
    this.calls.inc({ method, code: status[code] ?? String(code) });
    this.duration.observe({ method }, (performance.now() - startMs) / 1000);
  }
}
