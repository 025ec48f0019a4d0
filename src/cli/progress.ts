// Feedback for long work: on a terminal, one status line redrawn in place; otherwise (logs, CI) plain
// lines, one per event, so the output stays greppable. Everything goes to stderr; stdout is for results.
export class Progress {
  private readonly tty: boolean;
  private status = "";

  constructor(
    private readonly quiet = false,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {
    this.tty = Boolean(stream.isTTY) && !quiet;
  }

  /** A line worth keeping in a log ("copying path ... from ..."). On a TTY it scrolls above the status. */
  line(text: string): void {
    if (this.quiet) return;
    if (this.tty) this.stream.write(`\r\x1b[K${text}\n${this.status}`);
    else this.stream.write(text + "\n");
  }

  /** The current state in one line; shown only on a terminal. */
  update(text: string): void {
    if (!this.tty) return;
    this.status = text;
    this.stream.write(`\r\x1b[K${text}`);
  }

  done(): void {
    if (this.tty && this.status) this.stream.write("\r\x1b[K");
    this.status = "";
  }
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
