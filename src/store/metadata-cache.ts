// A binary cache's metadata (narinfos, NAR listings) kept on disk between processes, as Nix keeps narinfos in its
// cache for 30 days: the BuildKit frontend's plan step is a fresh process in a fresh container every build, so
// after one package changed it would otherwise ask the cache again for every path of the closure (131 requests
// for 5 new paths in the benchmark; over the internet, round trips of a second or more for a large closure).
//
// One file per binary cache, an append-only log of JSON lines ([seconds, name, text]; the last entry of a name
// wins), so a process reads one file and appends once: on disks where creating a file is the slow operation, one
// file per narinfo would cost more than it saves. A line cut short (a process killed while appending) is skipped.
// The log only remembers what the cache said: a narinfo read from it is parsed and its signatures checked again
// on every use, exactly as one from the network.
import { readFileSync } from "node:fs";
import { appendFile } from "node:fs/promises";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { writeFileAtomic } from "../util/fs.js";

/** What a binary cache store asks of a metadata cache: texts by file name (`<hashpart>.narinfo`, `.ls`). */
export interface MetadataCache {
  get(name: string): string | undefined;
  put(name: string, text: string): void;
}

/** Positive entries are used for 30 days after they were fetched (Nix's narinfo-cache-positive-ttl). */
const TTL_SECONDS = 30 * 24 * 3600;
/** A log larger than this is rewritten with its newest entries only, down to half of it. */
const MAX_BYTES = 32 * 1024 * 1024;
const NAME = /^[0-9a-z]{32}\.(narinfo|ls)$/;

type Entry = [seconds: number, name: string, text: string];

export class MetadataLog implements MetadataCache {
  private readonly entries = new Map<string, Entry>();
  private readonly pending: Entry[] = [];
  /** Whether the file ends in the middle of a line (a cut-short append): the next append starts a new line. */
  private endsMidLine = false;
  private bytes = 0;

  private constructor(
    readonly file: string,
    private readonly maxBytes: number,
  ) {}

  /** The log of the binary cache at `cacheUrl` in `dir` (which must exist); an absent or unreadable log is empty. */
  static open(dir: string, cacheUrl: string, opts: { maxBytes?: number } = {}): MetadataLog {
    const key = createHash("sha256").update(cacheUrl).digest("hex").slice(0, 32);
    const log = new MetadataLog(join(dir, `${key}.jsonl`), opts.maxBytes ?? MAX_BYTES);
    let text: string;
    try {
      text = readFileSync(log.file, "utf8");
    } catch {
      return log; // absent (the first use) or unreadable: every name is fetched
    }
    log.bytes = Buffer.byteLength(text);
    log.endsMidLine = text.length > 0 && !text.endsWith("\n");
    const oldest = Date.now() / 1000 - TTL_SECONDS;
    for (const line of text.split("\n")) {
      const e = parseEntry(line);
      if (e && e[0] >= oldest) log.remember(e);
    }
    return log;
  }

  /** How many get()s found the name, and how many did not (so the caller asked the cache). */
  readonly stats = { remembered: 0, missing: 0 };

  get(name: string): string | undefined {
    const text = this.entries.get(name)?.[2];
    this.stats[text === undefined ? "missing" : "remembered"]++;
    return text;
  }

  put(name: string, text: string): void {
    if (!NAME.test(name) || this.entries.get(name)?.[2] === text) return;
    const e: Entry = [Math.floor(Date.now() / 1000), name, text];
    this.remember(e);
    this.pending.push(e);
  }

  /** The entries' order is the order they were last written in: the newest last. */
  private remember(e: Entry): void {
    this.entries.delete(e[1]);
    this.entries.set(e[1], e);
  }

  /** Writes what was put since the last flush: appended, or the whole log rewritten once it grew too large. */
  async flush(): Promise<void> {
    if (!this.pending.length) return;
    const lines = this.pending.map((e) => `${JSON.stringify(e)}\n`).join("");
    this.pending.length = 0;
    const added = Buffer.byteLength(lines);
    if (this.bytes + added <= this.maxBytes) {
      await appendFile(this.file, this.endsMidLine ? `\n${lines}` : lines);
      this.endsMidLine = false;
      this.bytes += added;
      return;
    }
    // Too large: keep the newest entries that fit in half the limit.
    const kept: string[] = [];
    let size = 0;
    for (const e of [...this.entries.values()].reverse()) {
      const line = `${JSON.stringify(e)}\n`;
      size += Buffer.byteLength(line);
      if (size > this.maxBytes / 2) break;
      kept.push(line);
    }
    const text = kept.reverse().join("");
    await writeFileAtomic(this.file, text);
    this.bytes = Buffer.byteLength(text);
    this.endsMidLine = false;
  }
}

function parseEntry(line: string): Entry | undefined {
  if (!line) return undefined;
  try {
    const e = JSON.parse(line) as unknown;
    if (
      Array.isArray(e) &&
      e.length === 3 &&
      typeof e[0] === "number" &&
      typeof e[1] === "string" &&
      NAME.test(e[1]) &&
      typeof e[2] === "string"
    )
      return e as Entry;
  } catch {
    // a line cut short, or not ours: skipped
  }
  return undefined;
}
