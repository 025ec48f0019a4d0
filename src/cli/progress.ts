// Feedback for long work: on a terminal, one status line redrawn in place; otherwise (logs, CI) plain
// lines, one per event, so the output stays greppable. Everything goes to stderr; stdout is for results.
//
// The status line is redrawn at most every REDRAW_MS, however fast events come (a build reports every chunk of
// every layer), cut to the terminal's width (a line that wraps cannot be redrawn in place), and cleared before
// any other line is written, which then scrolls above it.

/** The shortest time between two redraws of the status line: at most 10 a second. */
const REDRAW_MS = 100;

export class Progress {
  /** True when the status line is drawn (stderr is a terminal and not quiet). */
  readonly tty: boolean;
  private render?: () => string;
  /** The status line as it is on the terminal now. */
  private shown = "";
  private lastDraw = -Infinity;
  private pending?: NodeJS.Timeout;
  private ticker?: NodeJS.Timeout;

  constructor(
    readonly quiet = false,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {
    this.tty = Boolean(stream.isTTY) && !quiet;
  }

  /** A line worth keeping in a log ("copying path ... from ..."). On a TTY it scrolls above the status. */
  line(text: string): void {
    if (this.quiet) return;
    if (this.tty) this.stream.write(`\r\x1b[K${text}\n${this.shown}`);
    else this.stream.write(text + "\n");
  }

  /** The current state in one line; shown only on a terminal. */
  update(text: string): void {
    this.render = () => text;
    this.refresh();
  }

  /**
   * The status line comes from `render`, called again on every refresh() and, while nothing else happens, every
   * REDRAW_MS (so an elapsed time in it keeps moving). Shown only on a terminal.
   */
  live(render: () => string): void {
    this.render = render;
    if (this.tty && !this.ticker) this.ticker = setInterval(() => this.refresh(), REDRAW_MS).unref();
    this.refresh();
  }

  /** The state changed: redraw now, or once REDRAW_MS have passed since the last redraw. */
  refresh(): void {
    if (!this.tty || !this.render || this.pending) return;
    const wait = this.lastDraw + REDRAW_MS - performance.now();
    if (wait <= 0) this.draw();
    else this.pending = setTimeout(() => this.draw(), wait).unref();
  }

  /** Clears the status line (before a final line, or when the work ends). */
  done(): void {
    clearInterval(this.ticker);
    clearTimeout(this.pending);
    this.ticker = this.pending = this.render = undefined;
    if (this.shown) this.stream.write("\r\x1b[K");
    this.shown = "";
  }

  private draw(): void {
    this.pending = undefined;
    if (!this.render) return;
    this.lastDraw = performance.now();
    const text = fitWidth(this.render(), this.stream.columns);
    if (text === this.shown) return;
    this.shown = text;
    this.stream.write(`\r\x1b[K${text}`);
  }
}

/**
 * `text` cut to leave the terminal's last column free (writing there wraps on some terminals); a terminal that
 * reports no width (0, as a pseudo-terminal nobody sized) gets it whole.
 */
export function fitWidth(text: string, columns: number | undefined): string {
  if (!columns || text.length < columns) return text;
  return columns > 2 ? `${text.slice(0, columns - 2)}…` : "";
}

export function formatBytes(n: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

/** Milliseconds as people read them: "0.4 s", "12.3 s", "2 min 05 s". */
export function formatDuration(ms: number): string {
  const tenths = Math.round(Math.max(0, ms) / 100);
  if (tenths < 600) return `${(tenths / 10).toFixed(1)} s`;
  const seconds = Math.round(ms / 1000);
  return `${Math.floor(seconds / 60)} min ${String(seconds % 60).padStart(2, "0")} s`;
}

/** "1 store path", "2 store paths". */
export function plural(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? "" : "s"}`;
}
