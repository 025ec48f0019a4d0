// What `nixoci build` tells its user while it works, from the events the build and the pushes emit (the core only
// reports facts; the wording is here):
//   - on a terminal, one status line: layers ready/planned, bytes and rate, elapsed time, and the layer being
//     built or pushed with its store path and bytes;
//   - in a log, one line per layer, in the image's order (layers are built in parallel and finish in any order);
//   - at the end, one summary line: the image digest, layers reused/built/uploaded, size and time.
import type { BuildEvent, BuildResult, LayerReport } from "../image/build.js";
import type { PushEvent } from "../outputs/push.js";
import { formatBytes, formatDuration, plural, type Progress } from "./progress.js";

interface LayerState {
  index: number;
  paths: string[];
  /** The layer's NAR size: what its tar holds, about. */
  narSize: number;
  /** Tar bytes read so far. */
  bytes: number;
}

/** An output being written; a push reports its blobs, other outputs nothing until they are done. */
interface OutputState {
  label: string;
  push: boolean;
  /** Bytes of every blob the image has (layers and config). */
  total: number;
  /** Bytes of blobs the registry has now (found there, mounted or uploaded). */
  done: number;
  /** Blobs being uploaded (in the order they started), with the bytes sent so far. */
  sending: Map<string, { sent: number; size: number }>;
}

export class BuildProgress {
  private readonly started = performance.now();
  private layers = 0;
  private closureBytes = 0;
  private ready = 0;
  private readyBytes = 0;
  /** Layers being built, in the order they started. */
  private readonly building = new Map<number, LayerState>();
  private lastReady?: { state: LayerState; status: string };
  /** Ready layers whose line waits for the layers before them. */
  private readonly unlisted = new Map<number, string>();
  private nextListed = 0;
  /** The current phase's real work (tar bytes while building, bytes sent while pushing), for the rate. */
  private work?: { since: number; bytes: number };
  private output?: OutputState;
  /** Layer digest -> its store paths, to name the layer a push is uploading. */
  private readonly layerPaths = new Map<string, { index: number; paths: string[] }>();
  private shown = false;

  constructor(private readonly progress: Progress) {}

  onBuildEvent(e: BuildEvent): void {
    switch (e.type) {
      case "substitute":
        if (e.event.type === "copying")
          this.progress.line(`copying path '${e.event.path}' from '${e.event.from}'...`);
        break;
      case "warning":
        this.progress.line(`warning: ${e.message}`);
        break;
      case "base":
        this.progress.line(
          `base ${e.ref}: ${plural(e.layers, "layer")} (${e.fetched} fetched, ${e.layers - e.fetched} in the cache)`,
        );
        break;
      case "planned":
        this.layers = e.layers;
        this.closureBytes = e.narSize;
        this.progress.line(
          `planned ${plural(e.layers, "layer")} for ${plural(e.paths, "store path")} (${formatBytes(e.narSize)})`,
        );
        break;
      case "layer-start":
        this.work ??= { since: performance.now(), bytes: 0 };
        this.building.set(e.index, { index: e.index, paths: e.paths, narSize: e.narSize, bytes: 0 });
        break;
      case "layer-progress": {
        const layer = this.building.get(e.index);
        if (!layer) break;
        if (this.work) this.work.bytes += e.bytes - layer.bytes;
        layer.bytes = e.bytes;
        break;
      }
      case "layer": {
        const state = this.building.get(e.index) ?? {
          index: e.index,
          paths: e.report.paths,
          narSize: e.narSize,
          bytes: e.narSize,
        };
        this.building.delete(e.index);
        this.ready++;
        this.readyBytes += e.narSize;
        this.lastReady = { state, status: e.report.status };
        this.list(e.index, e.report);
        break;
      }
    }
    // The status line starts with the layers: before them there is nothing to count.
    if (e.type === "layer-start" || e.type === "layer") this.show();
    this.progress.refresh();
  }

  /**
   * A multi-platform build starts one platform's image: its layers are counted (and listed) from the start, as
   * for a single image; the elapsed time keeps running.
   */
  platform(name: string): void {
    this.layers = this.closureBytes = this.ready = this.readyBytes = this.nextListed = 0;
    this.building.clear();
    this.unlisted.clear();
    this.lastReady = this.work = undefined;
    this.progress.line(`building the ${name} image`);
    this.progress.refresh();
  }

  /** An output starts being written (one image, or every platform's image of a multi-platform one). */
  writing(label: string, results: BuildResult | BuildResult[], push: boolean): void {
    const all = Array.isArray(results) ? results : [results];
    let total = 0;
    for (const result of all) {
      result.layers.forEach((l, index) => this.layerPaths.set(l.digest, { index, paths: l.paths }));
      total += result.layers.reduce((n, l) => n + l.size, result.image.config.size);
    }
    this.output = { label, push, total, done: 0, sending: new Map() };
    this.work = push ? { since: performance.now(), bytes: 0 } : undefined;
    this.show();
    this.progress.refresh();
  }

  onPushEvent(e: PushEvent): void {
    const o = this.output;
    if (!o) return;
    if (e.type === "blob-exists" || e.type === "blob-mounted") o.done += e.size;
    if (e.type === "blob-upload-start") o.sending.set(e.digest, { sent: 0, size: e.size });
    const blob = o.sending.get(e.digest);
    if (e.type === "blob-progress" && blob) {
      // A retried chunk starts over: count only bytes beyond what was sent before.
      if (this.work) this.work.bytes += Math.max(0, e.sent - blob.sent);
      blob.sent = Math.max(blob.sent, e.sent);
    }
    if (e.type === "blob-uploaded") {
      o.sending.delete(e.digest);
      o.done += e.size;
    }
    this.progress.refresh();
  }

  /** An output was written. */
  wrote(
    label: string,
    r: {
      storePath?: string;
      reference?: string;
      uploaded?: string[];
      skipped?: string[];
      mounted?: string[];
    },
  ): void {
    this.output = undefined;
    this.work = undefined;
    this.progress.line(
      `wrote ${label}${r.storePath ? ` ${r.storePath} (pods: image: ${r.reference})` : ""}${r.uploaded ? ` (${r.uploaded.length} blobs uploaded, ${r.skipped?.length ?? 0} already there${r.mounted?.length ? `, ${r.mounted.length} mounted` : ""})` : ""}`,
    );
    this.progress.refresh();
  }

  /**
   * The last line: "built sha256:…: 5 layers (3 reused, 2 built, 1 uploaded), 12.3 MiB in 4.5 s". `uploaded`
   * is the layer blobs the pushes sent; undefined when there was no push (nothing to count).
   */
  summary(digest: string, layers: LayerReport[], uploaded: ReadonlySet<string> | undefined): string {
    const reused = layers.filter((l) => l.status === "reused").length;
    const pushed = uploaded ? `, ${layers.filter((l) => uploaded.has(l.digest)).length} uploaded` : "";
    const size = layers.reduce((n, l) => n + l.size, 0);
    return (
      `built ${digest}: ${plural(layers.length, "layer")} (${reused} reused, ${layers.length - reused} built` +
      `${pushed}), ${formatBytes(size)} in ${formatDuration(performance.now() - this.started)}`
    );
  }

  private show(): void {
    if (this.shown) return;
    this.shown = true;
    this.progress.live(() => this.status());
  }

  /** Logs (not terminals, where the status line says it) get one line per layer, in layer order. */
  private list(index: number, r: LayerReport): void {
    if (this.progress.tty) return;
    const what = r.paths.length ? plural(r.paths.length, "store path") : "customisation";
    this.unlisted.set(
      index,
      `layer ${index + 1}/${this.layers}: ${r.status} ${r.digest.slice(0, 19)}, ${formatBytes(r.size)}, ${what}`,
    );
    for (let line; (line = this.unlisted.get(this.nextListed)) !== undefined; this.nextListed++) {
      this.unlisted.delete(this.nextListed);
      this.progress.line(line);
    }
  }

  private status(): string {
    const head = `[${this.ready}/${this.layers} layers]`;
    const elapsed = formatDuration(performance.now() - this.started);
    const o = this.output;
    if (o && !o.push) return `${head} writing ${o.label}, ${elapsed}`;
    if (o)
      return `${head} pushing ${o.label} ${this.pushed(o)}, ${this.rate()}, ${elapsed}${this.uploading(o)}`;
    let bytes = this.readyBytes;
    for (const l of this.building.values()) bytes += Math.min(l.bytes, l.narSize);
    return `${head} ${formatBytes(bytes)}/${formatBytes(this.closureBytes)}, ${this.rate()}, ${elapsed}${this.current()}`;
  }

  /** The layer to name: the oldest one still building, else the last one ready. */
  private current(): string {
    const [first] = this.building.values();
    if (first) {
      const others = this.building.size > 1 ? ` (+${this.building.size - 1} building)` : "";
      const bytes = `${formatBytes(Math.min(first.bytes, first.narSize))}/${formatBytes(first.narSize)}`;
      return ` | layer ${first.index + 1}${others} ${bytes}: ${this.describe(first.paths)}`;
    }
    if (!this.lastReady) return "";
    const { state, status } = this.lastReady;
    return ` | layer ${state.index + 1} ${status}: ${this.describe(state.paths)}`;
  }

  private pushed(o: OutputState): string {
    let sent = o.done;
    for (const b of o.sending.values()) sent += b.sent;
    return `${formatBytes(sent)}/${formatBytes(o.total)}`;
  }

  /** The blob to name: the oldest one still uploading. */
  private uploading(o: OutputState): string {
    const [first] = o.sending;
    if (!first) return "";
    const [digest, { sent, size }] = first;
    const others = o.sending.size > 1 ? ` (+${o.sending.size - 1} uploading)` : "";
    const layer = this.layerPaths.get(digest);
    const what = layer ? `layer ${layer.index + 1}` : "config";
    const bytes = `${formatBytes(sent)}/${formatBytes(size)}`;
    return ` | ${what}${others} ${bytes}${layer ? `: ${this.describe(layer.paths)}` : ""}`;
  }

  private describe(paths: string[]): string {
    if (!paths.length) return "customisation";
    return paths.length > 1 ? `${paths[0]} (+${plural(paths.length - 1, "path")})` : paths[0];
  }

  private rate(): string {
    if (!this.work) return `0 B/s`;
    const seconds = (performance.now() - this.work.since) / 1000;
    return `${formatBytes(seconds > 0 ? Math.round(this.work.bytes / seconds) : 0)}/s`;
  }
}
