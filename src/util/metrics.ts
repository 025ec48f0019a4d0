// A small Prometheus registry: counters, gauges and histograms with labels, rendered in the text exposition
// format 0.0.4 (https://prometheus.io/docs/instrumenting/exposition_formats/). Output is deterministic:
// metrics in the order they were created, labels in the order they were declared, series sorted by their
// label values, numbers in a fixed notation. Label values may be anything (they are escaped); label sets
// must match the declared names exactly, which keeps a typo from silently creating a new series.

export type LabelValues = Readonly<Record<string, string | number>>;

/** The content type of render()'s output. */
export const METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** Prometheus' default buckets (seconds), good for request latencies. */
export const DEFAULT_BUCKETS: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** A sample value as the text format writes it: integers plainly, "+Inf", "-Inf", "NaN". */
export function formatValue(v: number): string {
  if (Number.isNaN(v)) return "NaN";
  if (v === Infinity) return "+Inf";
  if (v === -Infinity) return "-Inf";
  return String(v);
}

function escapeLabelValue(s: string): string {
  return s.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
}

function escapeHelp(s: string): string {
  return s.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");
}

abstract class Metric<S> {
  protected readonly series = new Map<string, { values: string[]; state: S }>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
    reserved: readonly string[] = [],
  ) {
    if (!METRIC_NAME.test(name)) throw new Error(`metrics: invalid metric name ${JSON.stringify(name)}`);
    const seen = new Set<string>();
    for (const l of labelNames) {
      if (!LABEL_NAME.test(l) || l.startsWith("__") || reserved.includes(l) || seen.has(l)) {
        throw new Error(`metrics: invalid or repeated label name ${JSON.stringify(l)} for ${name}`);
      }
      seen.add(l);
    }
  }

  abstract readonly type: "counter" | "gauge" | "histogram";
  protected abstract initial(): S;
  protected abstract lines(name: string, labels: string[], state: S): string[];

  /** The state of the series for `labels`, created on first use. */
  protected get(labels: LabelValues = {}): S {
    const keys = Object.keys(labels);
    if (keys.length !== this.labelNames.length || keys.some((k) => !this.labelNames.includes(k))) {
      throw new Error(
        `metrics: ${this.name} takes labels {${this.labelNames.join(",")}}, got {${keys.join(",")}}`,
      );
    }
    const values = this.labelNames.map((l) => String(labels[l]));
    const key = JSON.stringify(values);
    let s = this.series.get(key);
    if (!s) {
      s = { values, state: this.initial() };
      this.series.set(key, s);
    }
    return s.state;
  }

  /** Creates the series (at zero) so it is exported before its first event. */
  init(labels: LabelValues = {}): this {
    this.get(labels);
    return this;
  }

  /** Forgets every series. */
  reset(): void {
    this.series.clear();
  }

  render(): string[] {
    const out = [`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`];
    // A metric without labels always has its one series (0 until something happens).
    if (this.labelNames.length === 0) this.get();
    const sorted = [...this.series.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    for (const [, s] of sorted) {
      const pairs = this.labelNames.map((l, i) => `${l}="${escapeLabelValue(s.values[i])}"`);
      out.push(...this.lines(this.name, pairs, s.state));
    }
    return out;
  }
}

function sample(name: string, labels: string[], value: number): string {
  return labels.length
    ? `${name}{${labels.join(",")}} ${formatValue(value)}`
    : `${name} ${formatValue(value)}`;
}

export class Counter extends Metric<{ v: number }> {
  readonly type = "counter";

  protected initial(): { v: number } {
    return { v: 0 };
  }

  /** Adds `by` (default 1; must be >= 0). */
  inc(labels: LabelValues = {}, by = 1): void {
    if (!(by >= 0)) throw new Error(`metrics: counter ${this.name} cannot be increased by ${by}`);
    this.get(labels).v += by;
  }

  value(labels: LabelValues = {}): number {
    return this.get(labels).v;
  }

  protected lines(name: string, labels: string[], s: { v: number }): string[] {
    return [sample(name, labels, s.v)];
  }
}

export class Gauge extends Metric<{ v: number }> {
  readonly type = "gauge";

  protected initial(): { v: number } {
    return { v: 0 };
  }

  set(labels: LabelValues, v: number): void {
    this.get(labels).v = v;
  }

  inc(labels: LabelValues = {}, by = 1): void {
    this.get(labels).v += by;
  }

  dec(labels: LabelValues = {}, by = 1): void {
    this.get(labels).v -= by;
  }

  value(labels: LabelValues = {}): number {
    return this.get(labels).v;
  }

  protected lines(name: string, labels: string[], s: { v: number }): string[] {
    return [sample(name, labels, s.v)];
  }
}

interface HistogramState {
  /** counts[i]: observations <= buckets[i] (not cumulative; summed when rendered). */
  counts: number[];
  sum: number;
  count: number;
}

export class Histogram extends Metric<HistogramState> {
  readonly type = "histogram";
  readonly buckets: readonly number[];

  constructor(name: string, help: string, labelNames: readonly string[], buckets: readonly number[]) {
    super(name, help, labelNames, ["le"]);
    const b = buckets.filter((x) => x !== Infinity);
    if (b.length === 0 || b.some((x, i) => !Number.isFinite(x) || (i > 0 && x <= b[i - 1]))) {
      throw new Error(`metrics: histogram ${name} needs finite, strictly increasing buckets`);
    }
    this.buckets = b;
  }

  protected initial(): HistogramState {
    return { counts: new Array<number>(this.buckets.length).fill(0), sum: 0, count: 0 };
  }

  observe(labels: LabelValues, value: number): void {
    const s = this.get(labels);
    const i = this.buckets.findIndex((b) => value <= b);
    if (i >= 0) s.counts[i]++;
    s.sum += value;
    s.count++;
  }

  /** Starts a timer; calling the result observes the elapsed seconds (and returns them). */
  startTimer(labels: LabelValues = {}): () => number {
    const start = process.hrtime.bigint();
    return () => {
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      this.observe(labels, seconds);
      return seconds;
    };
  }

  protected lines(name: string, labels: string[], s: HistogramState): string[] {
    const out: string[] = [];
    let cumulative = 0;
    this.buckets.forEach((b, i) => {
      cumulative += s.counts[i];
      out.push(sample(`${name}_bucket`, [...labels, `le="${formatValue(b)}"`], cumulative));
    });
    out.push(sample(`${name}_bucket`, [...labels, `le="+Inf"`], s.count));
    out.push(sample(`${name}_sum`, labels, s.sum));
    out.push(sample(`${name}_count`, labels, s.count));
    return out;
  }
}

export class Metrics {
  private readonly metrics = new Map<string, Metric<unknown>>();

  private add<M extends Metric<unknown>>(m: M): M {
    if (this.metrics.has(m.name)) throw new Error(`metrics: ${m.name} is already registered`);
    this.metrics.set(m.name, m);
    return m;
  }

  counter(name: string, help: string, labelNames: readonly string[] = []): Counter {
    return this.add(new Counter(name, help, labelNames));
  }

  gauge(name: string, help: string, labelNames: readonly string[] = []): Gauge {
    return this.add(new Gauge(name, help, labelNames));
  }

  histogram(
    name: string,
    help: string,
    labelNames: readonly string[] = [],
    buckets: readonly number[] = DEFAULT_BUCKETS,
  ): Histogram {
    return this.add(new Histogram(name, help, labelNames, buckets));
  }

  /** The registered metric of that name, if any. */
  get(name: string): Counter | Gauge | Histogram | undefined {
    return this.metrics.get(name) as Counter | Gauge | Histogram | undefined;
  }

  /** Every metric in the text exposition format 0.0.4 (ends with a newline). */
  render(): string {
    const lines: string[] = [];
    for (const m of this.metrics.values()) lines.push(...m.render());
    return lines.length ? lines.join("\n") + "\n" : "";
  }
}
