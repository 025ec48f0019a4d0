// Every daemon's /metrics, on prom-client: a registry per daemon with its own metrics (names kept stable: they
// are an interface for dashboards) plus prom-client's default process and Node.js metrics (CPU, memory, file
// descriptors, event-loop lag, GC) that operators expect from any service. The helpers here only declare metrics
// and create the series a dashboard needs before the first event (at zero).
import client from "prom-client";

export type LabelValues = Readonly<Record<string, string | number>>;
export type Counter = client.Counter<string>;
export type Gauge = client.Gauge<string>;
export type Histogram = client.Histogram<string>;

/** The content type of render()'s output (the text exposition format 0.0.4). */
export const METRICS_CONTENT_TYPE = client.Registry.PROMETHEUS_CONTENT_TYPE;

/** Prometheus' default buckets (seconds), good for request latencies. */
export const DEFAULT_BUCKETS: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class Metrics {
  readonly registry = new client.Registry();

  /** `processMetrics: false` leaves out the default process and Node.js metrics (tests of one metric). */
  constructor(opts: { processMetrics?: boolean } = {}) {
    if (opts.processMetrics ?? true) client.collectDefaultMetrics({ register: this.registry });
  }

  /** A counter; the series in `zeroes` exist (at 0) from the start. */
  counter(
    name: string,
    help: string,
    labelNames: readonly string[] = [],
    zeroes: LabelValues[] = [],
  ): Counter {
    const c = new client.Counter({ name, help, labelNames, registers: [this.registry] });
    for (const labels of zeroes) c.inc(labels, 0);
    return c;
  }

  gauge(name: string, help: string, labelNames: readonly string[] = []): Gauge {
    return new client.Gauge({ name, help, labelNames, registers: [this.registry] });
  }

  histogram(
    name: string,
    help: string,
    labelNames: readonly string[] = [],
    buckets: readonly number[] = DEFAULT_BUCKETS,
  ): Histogram {
    return new client.Histogram({
      name,
      help,
      labelNames,
      buckets: [...buckets],
      registers: [this.registry],
    });
  }

  /** Every metric in the text exposition format 0.0.4. */
  render(): Promise<string> {
    return this.registry.metrics();
  }
}
