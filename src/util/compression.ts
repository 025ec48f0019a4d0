// Compression codecs for NAR files in binary caches, as streams.
//
// Node's zlib does gzip and brotli in-process. xz, zstd and bzip2 run as the standard command-line tools
// (Debian's xz-utils, zstd, bzip2) spawned with argument arrays (never a shell) as streaming filters: stdin is
// the writable side, stdout the readable side. That is as fast as the tools themselves and runs on another core.
//
// Output is deterministic for a given tool version, whatever machine it runs on:
// - xz always runs in multi-threaded mode (-T<n>, n >= 2). Its output depends on the block size only, not on
//   the thread count, but single-threaded mode (which `-T0` picks on a one-core machine) writes a different
//   stream. (If even one thread would exceed xz's memory limit, xz falls back to single-threaded mode: only at
//   levels 7-9 on machines with little memory.)
// - zstd's CLI default (-T1) and -T0 are both its multi-threaded mode, whose output does not depend on the
//   number of workers (unlike --single-thread). We use -T0.
// - bzip2, gzip (zlib; no name, mtime 0) and brotli have no threads and are deterministic.
// Tool options from the environment (XZ_OPT, XZ_DEFAULTS, ZSTD_CLEVEL, ZSTD_NBTHREADS, BZIP2, BZIP) are removed.
import { spawn } from "node:child_process";
import { availableParallelism } from "node:os";
import { basename } from "node:path";
import { Duplex, PassThrough, pipeline as pipe, Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import zlib from "node:zlib";
import { NixociError } from "./errors.js";
import { toolEnv } from "./tool-env.js";
import { launchTool, type FilterProcess } from "./tool-launcher.js";
import { ZstdDecoder } from "./zstd-decoder.js";
import {
  checkLevel,
  defaultLevel,
  igzipArgs,
  sniffLayerCompression,
  zstdArgs,
  type Compression,
} from "./compression-formats.js";

// The names, levels and tools' arguments, without the streams' code (what a cached rebuild needs).
export * from "./compression-formats.js";

const CHUNK = 128 * 1024;
const HIGH_WATER = 1024 * 1024;

export interface CompressOptions {
  /** Codec-specific level (xz 0-9, zstd 1-22, bzip2 1-9, br 0-11, gzip 0-9); defaults as the tools' own. */
  level?: number;
  /** Names what is being compressed, for error messages (default "<codec> compressor"). */
  input?: string;
  /**
   * The exact number of bytes that will be compressed, when known (a NAR's NarSize): zstd writes it into the
   * frame, whose window is then no larger than the data (a decoder allocates less for a small NAR).
   */
  size?: number;
  /**
   * Start the tool through the tool launcher (tool-launcher.ts) instead of forking this process: for processes
   * with a large, busy heap (a build), where each fork costs more than the tool's work on a small input.
   */
  launched?: boolean;
}

/** zstd data that decodes to at most this many bytes is decoded in this process (zstd-decoder.ts). */
export const IN_PROCESS_ZSTD_MAX = 128 * 1024;

/**
 * A stream that decompresses `c` data; `input` names the data in errors ("nar/abc.nar.xz: corrupt ..."). With
 * `size`, the number of bytes the data must decode to (a NAR's NarSize), small zstd data is decoded in-process.
 */
export function decompressStream(c: Compression, input: string, size?: number): Duplex {
  switch (c) {
    case "none":
      return new PassThrough({ highWaterMark: HIGH_WATER });
    case "xz":
      return new ToolStream("xz", ["--decompress", "--stdout", "-T0"], "xz", input, true);
    case "zstd":
      if (size !== undefined && size <= IN_PROCESS_ZSTD_MAX) return new ZstdDecoder(size, input);
      // --long=31 lifts the decoder's window limit (default 128 MiB) so any valid frame decodes. Started by the
      // tool launcher: a fork of this process costs its main thread ~13 ms (a fetch meets dozens of such NARs).
      return new ToolStream("zstd", ["--decompress", "--stdout", "--long=31"], "zstd", input, true, true);
    case "bzip2":
      return new ToolStream("bzip2", ["--decompress", "--stdout"], "bzip2", input, true);
    case "br":
      return new ZlibStream(zlib.createBrotliDecompress({ chunkSize: CHUNK }), "br", input, true);
    case "gzip":
      return new ZlibStream(zlib.createGunzip({ chunkSize: CHUNK }), "gzip", input, true);
  }
}

/**
 * The uncompressed tar of a layer blob stream, its compression (gzip, zstd or none) told by its first bytes rather
 * than by a media type, which Docker's and other tools' images do not always get right.
 */
export async function uncompressedLayer(blob: Readable, input: string): Promise<Readable> {
  const it = blob[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  let head = Buffer.alloc(0);
  let done = false;
  while (head.length < 4 && !done) {
    const r = await it.next();
    if (r.done) done = true;
    else head = Buffer.concat([head, r.value]);
  }
  const rest = Readable.from(
    (async function* () {
      if (head.length) yield head;
      for (let r = await it.next(); !r.done; r = await it.next()) yield r.value;
    })(),
    { objectMode: false },
  );
  const c = sniffLayerCompression(head);
  if (c === "none") return rest;
  return pipe(rest, decompressStream(c, input), () => undefined);
}

/** A stream that compresses with `c`. */
export function compressStream(c: Compression, opts: CompressOptions = {}): Duplex {
  if (c === "none") return new PassThrough({ highWaterMark: HIGH_WATER });
  const level = opts.level ?? defaultLevel(c);
  checkLevel(c, level);
  const input = opts.input ?? `${c} compressor`;
  switch (c) {
    case "xz": {
      const threads = Math.max(2, availableParallelism());
      return new ToolStream(
        "xz",
        ["--compress", "--stdout", `-${level}`, `-T${threads}`],
        "xz",
        input,
        false,
      );
    }
    case "zstd": {
      const args = ["--stdout", ...zstdArgs(level)];
      if (opts.size !== undefined) args.push(`--stream-size=${opts.size}`);
      return new ToolStream("zstd", args, "zstd", input, false, opts.launched);
    }
    case "bzip2":
      return new ToolStream("bzip2", ["--compress", "--stdout", `-${level}`], "bzip2", input, false);
    case "br":
      return new ZlibStream(
        zlib.createBrotliCompress({
          chunkSize: CHUNK,
          params: { [zlib.constants.BROTLI_PARAM_QUALITY]: level },
        }),
        "br",
        input,
        false,
      );
    case "gzip":
      return new ZlibStream(zlib.createGzip({ chunkSize: CHUNK, level }), "gzip", input, false);
  }
}

/**
 * gzip through ISA-L's igzip (`path`), level 0-3 (default 3): `-n` writes neither a name nor a time, so the
 * output depends only on the input, the level and igzip's version.
 */
export function isalGzipStream(path: string, opts: { level?: number; input?: string } = {}): Duplex {
  return new ToolStream(
    path,
    ["-c", ...igzipArgs(opts.level)],
    "gzip",
    opts.input ?? "igzip compressor",
    false,
    true,
  );
}

/** Decompresses a whole buffer. */
export async function decompressBuffer(c: Compression, data: Buffer, input: string): Promise<Buffer> {
  return collect(data, decompressStream(c, input));
}

/** Compresses a whole buffer. */
export async function compressBuffer(
  c: Compression,
  data: Buffer,
  opts: CompressOptions = {},
): Promise<Buffer> {
  return collect(data, compressStream(c, opts));
}

async function collect(data: Buffer, filter: Duplex): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(
    async function* () {
      for (let i = 0; i < data.length; i += HIGH_WATER) yield data.subarray(i, i + HIGH_WATER);
    },
    filter,
    async (source: AsyncIterable<Buffer>) => {
      for await (const chunk of source) out.push(chunk);
    },
  );
  return Buffer.concat(out);
}

function describe(
  codec: string,
  input: string,
  decompress: boolean,
  detail: string,
  cause?: unknown,
): NixociError {
  const what = decompress ? `corrupt or truncated ${codec} data` : `${codec} compression failed`;
  return new NixociError(input, `${what}: ${detail}`, { cause });
}

/** The first meaningful line of a tool's stderr, without "xz: (stdin): "-style prefixes. */
function firstLine(stderr: string): string {
  for (const raw of stderr.split("\n")) {
    let line = raw.trim();
    if (!line) continue;
    line = line.replace(/^(xz|zstd|bzip2):\s*/, "");
    line = line.replace(/^(\(stdin\)|\/\*stdin\*\\)\s*:\s*/, "");
    line = line.replace(/[;:]\s*$/, "").trim();
    if (line) return line;
  }
  return "";
}

const STDERR_LIMIT = 16 * 1024;

/**
 * A spawned filter program as a Duplex. Its exit status decides how the stream ends: 0 ends the readable side
 * after all output, anything else (or a signal) destroys the stream with a one-line NixociError. Destroying
 * the stream kills the program; 'close' is emitted only after it has exited.
 */
class ToolStream extends Duplex {
  readonly #child: FilterProcess;
  readonly #tool: string;
  readonly #codec: string;
  readonly #input: string;
  readonly #decompress: boolean;
  #stderr = "";
  #exited = false;
  #failed = false;
  /** stdin can take no more (the program closed it or died); later writes are dropped. */
  #stdinGone = false;
  #stdinEpipe = false;
  #pendingWrite: ((err?: Error | null) => void) | undefined;

  /** `launched`: started by the tool launcher (tool-launcher.ts) rather than forked from this process. */
  constructor(
    tool: string,
    args: string[],
    codec: string,
    input: string,
    decompress: boolean,
    launched = false,
  ) {
    super({ readableHighWaterMark: HIGH_WATER, writableHighWaterMark: HIGH_WATER });
    this.#tool = tool;
    this.#codec = codec;
    this.#input = input;
    this.#decompress = decompress;
    const child: FilterProcess = launched
      ? launchTool(tool, args)
      : spawn(tool, args, { stdio: ["pipe", "pipe", "pipe"], env: toolEnv() });
    this.#child = child;

    child.on("error", (err: NodeJS.ErrnoException) => {
      // Spawning failed (ENOENT...): there is no process to wait for.
      this.#exited = true;
      this.#failed = true;
      const name = basename(tool);
      const pkg = name === "xz" ? "xz-utils" : name === "igzip" ? "isal" : name;
      const hint = err.code === "ENOENT" ? ` (is Debian's ${pkg} package installed?)` : "";
      this.destroy(new NixociError(input, `cannot run ${tool}${hint}: ${err.message}`, { cause: err }));
    });
    child.on("exit", (code: number | null) => {
      this.#exited = true;
      if (code !== 0) {
        // Failed: drop whatever output remains so stdout reaches EOF and 'close' (with all of stderr) follows.
        this.#failed = true;
        child.stdout.resume();
      }
    });
    child.on("close", (code: number | null, signal: NodeJS.Signals | null) => this.#onClose(code, signal));

    child.stdin.on("error", (err: NodeJS.ErrnoException) => {
      if (err.code === "EPIPE") this.#stdinEpipe = true;
      this.#stdinClosed();
    });
    child.stdin.on("close", () => this.#stdinClosed());
    child.stdin.on("drain", () => this.#releaseWrite());

    child.stdout.on("data", (chunk: Buffer) => {
      if (this.#failed || this.destroyed) return;
      if (!this.push(chunk)) child.stdout.pause();
    });
    child.stdout.on("error", () => {
      // Reported through the exit status ('close').
    });
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (s: string) => {
      if (this.#stderr.length < STDERR_LIMIT) this.#stderr += s;
    });
    child.stderr.on("error", () => {});
  }

  #stdinClosed(): void {
    this.#stdinGone = true;
    this.#releaseWrite();
  }

  #releaseWrite(): void {
    const cb = this.#pendingWrite;
    this.#pendingWrite = undefined;
    cb?.();
  }

  #onClose(code: number | null, signal: NodeJS.Signals | null): void {
    if (this.destroyed) return;
    if (code === 0) {
      if (this.#stdinEpipe) {
        const detail = `${this.#tool} stopped reading its input before the end`;
        this.destroy(describe(this.#codec, this.#input, this.#decompress, detail));
      } else {
        this.push(null);
      }
      return;
    }
    const msg = firstLine(this.#stderr);
    const detail =
      code === null
        ? `${this.#tool} was killed by ${signal ?? "a signal"}${msg ? `: ${msg}` : ""}`
        : msg || `${this.#tool} exited with status ${code}`;
    this.destroy(describe(this.#codec, this.#input, this.#decompress, detail));
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.#stdinGone) {
      cb(); // The program has stopped reading; its exit status will tell why.
      return;
    }
    if (this.#child.stdin.write(chunk)) cb();
    else this.#pendingWrite = cb;
  }

  override _final(cb: (err?: Error | null) => void): void {
    if (!this.#stdinGone) this.#child.stdin.end();
    cb();
  }

  override _read(): void {
    if (!this.#failed) this.#child.stdout.resume();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    const child = this.#child;
    this.#releaseWrite();
    const finish = (): void => {
      child.stdin.destroy();
      child.stdout.destroy();
      child.stderr.destroy();
      cb(err);
    };
    if (this.#exited || child.pid === undefined) {
      finish();
      return;
    }
    child.once("exit", finish);
    child.kill("SIGKILL");
  }
}

/** A zlib stream (gzip, brotli) behind a Duplex that turns its errors into one-line NixociErrors. */
class ZlibStream extends Duplex {
  readonly #inner: Duplex;

  constructor(inner: Duplex, codec: string, input: string, decompress: boolean) {
    super({ readableHighWaterMark: HIGH_WATER, writableHighWaterMark: HIGH_WATER });
    this.#inner = inner;
    inner.on("data", (chunk: Buffer) => {
      if (!this.push(chunk)) inner.pause();
    });
    inner.on("end", () => this.push(null));
    inner.on("error", (err: Error) => {
      this.destroy(describe(codec, input, decompress, err.message, err));
    });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    if (this.#inner.write(chunk)) cb();
    else this.#inner.once("drain", () => cb());
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.#inner.end();
    cb();
  }

  override _read(): void {
    this.#inner.resume();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#inner.destroy();
    cb(err);
  }
}
