// Many streams compressed by few processes of igzip (gzip) or zstd. Starting a process costs more than
// compressing a small layer (on these machines ~5 ms and ~500 page faults per process, and the compressed bytes'
// trip back through this process), and a closure has a hundred layers, most of them small. Both tools compress the
// files named on their command line one after the other, each to "<name>.gz" / "<name>.zst" — the same bytes they
// write for that input alone on stdin — and open each input only once the previous output is written and closed.
// Named pipes as those files make one process compress any number of streams handed to it in turn:
//
//   lane   one tool process with `slots` named pipes (slot-0 ... slot-N) in a private directory;
//   job    one stream: the lane's next pipe is opened for writing (possible once the tool opened it for reading,
//          which it does when the previous job's output is closed), the stream written and closed; the tool then
//          finishes its output. The job is complete when the tool opens the next pipe (or exits after the last):
//          the output is hashed (sha256) and checked — gzip: its trailer against the input's CRC-32 and size;
//          zstd: whole frames (zstd-frames.ts) — so a truncated or foreign file is never taken for the stream's.
//
// A lane serves one job at a time; there are as many lanes as streams compressed at once. A lane whose slots are
// used up is replaced by a new process. A pipe is first opened non-blocking (ENXIO until the tool is there, retried
// on a short timer), then again blocking for the job's writes, which run in the thread pool (see writer()): at
// most one thread per lane waits on its tool, and never on a tool that died. A lane's process is spawned
// directly (a handful per build: the tool launcher's start would cost more) under `setpriv --pdeathsig KILL`, so
// it dies with this process; the directory is a temporary (util/temporaries.ts) in the caller's directory of
// choice — the blob store's, so outputs are renamed into place.
import { spawn, type ChildProcess } from "node:child_process";
import { constants, createWriteStream, open as openCb, openSync, closeSync, statfsSync } from "node:fs";
import { mkdir, open, rm, unlink, type FileHandle } from "node:fs/promises";
import { createHash } from "node:crypto";
import { join } from "node:path";
import { setImmediate as yieldToLoop, setTimeout as delay } from "node:timers/promises";
import { Writable } from "node:stream";
import zlib from "node:zlib";
import type { BufferPool } from "./buffer-pool.js";
import { igzipArgs, zstdArgs } from "./compression-formats.js";
import { NixociError } from "./errors.js";
import { fsError, withoutTemporariesIn } from "./fs-errors.js";
import { tempSibling } from "./fs.js";
import { forgetTemporaryWriter, noteTemporaryWriter } from "./temporaries.js";
import { findOnPath } from "./tool-versions.js";
import { toolEnv } from "./tool-env.js";
import { ZstdFrameCheck } from "./zstd-frames.js";

/** Named pipes per tool process. */
const DEFAULT_SLOTS = 64;
const READ_CHUNK = 1024 * 1024;
const SINK_BUFFER = 4 * 1024 * 1024;
const STDERR_LIMIT = 4096;
/** A filesystem with less free space than this, after the tool failed to write, is taken as full. */
const FULL_BELOW = 1024 * 1024;
/**
 * sh -c SCRIPT sh "SLOT SLOT..." TOOL ARGS... (in the batch's directory): makes the pipes, then becomes the tool
 * with the pipes as its last arguments. The slots' names are ours ("<lane>-<generation>-<i>": digits and dashes),
 * so the one argument that lists them splits on spaces safely.
 */
const LANE_SCRIPT = 'slots=$1; shift; mkfifo -m 600 -- $slots && exec "$@" -- $slots';

export type BatchCodec = "gzip" | "zstd";

interface Codec {
  suffix: string;
  /** The tool's arguments for a level (which they validate), the pipes then following. */
  args(level: number): string[];
  /** The Debian package of the tool, for the hint when it is missing. */
  pkg: string;
}

// The arguments of every other igzip and zstd run that makes layers (compression.ts): the same bytes.
const CODECS: Record<BatchCodec, Codec> = {
  gzip: { suffix: ".gz", args: igzipArgs, pkg: "isal" },
  zstd: { suffix: ".zst", args: zstdArgs, pkg: "zstd" },
};
/** zlib.crc32 came with Node 20.15; without it only the trailer's size is checked. */
const crc32 = (zlib as { crc32?: (data: Uint8Array, value?: number) => number }).crc32;

export interface CompressorBatchOptions {
  codec: BatchCodec;
  /** The tool: igzip for gzip, zstd for zstd (a path, or a name looked up on PATH). */
  tool: string;
  /** The tool's level: igzip 0-3, zstd 1-22. */
  level: number;
  /** Where the private work directory is made (its outputs are renamed from there: the same filesystem). */
  parentDir: string;
  /** Streams compressed at once (one tool process each); at most one less than the thread pool's threads. */
  lanes: number;
  /** Named pipes per process (default 64). */
  slots?: number;
  /** Names the data in errors. */
  input?: string;
  /**
   * Chunks written to a job's stream are given back to this pool once in the tool's pipe (so give it only
   * chunks nothing else holds), and outputs are read back through its buffers.
   */
  pool?: BufferPool;
}

/** A stream's compressed output, a file in the batch's directory: rename it into place, or it goes at close(). */
export interface BatchOutput {
  path: string;
  size: number;
  /** sha256 of the file, hex. */
  sha256: string;
}

/** One stream to compress: write it to `stream` (end it), then await `done()`. */
export interface BatchJob {
  readonly stream: Writable;
  /** The output once the tool finished it; rejects when the stream or the tool failed. Call it exactly once. */
  done(): Promise<BatchOutput>;
}

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
}

class Lane {
  private proc?: ChildProcess;
  private exit?: Exit;
  private exited?: Promise<Exit>;
  private slots: string[] = [];
  private next = 0;
  private generation = 0;
  /** The next slot, already open for writing (the tool has opened it: the job before is complete). */
  private ready?: number;
  broken = false;

  constructor(
    private readonly batch: CompressorBatch,
    private readonly id: number,
  ) {}

  /** Starts the tool with fresh slots when there is none running or its slots are used up. */
  private async ensureProcess(): Promise<void> {
    if (this.proc && !this.broken && this.next < this.slots.length) return;
    await this.stop();
    const { dir, opts } = this.batch;
    const gen = this.generation++;
    const names = Array.from({ length: opts.slots ?? DEFAULT_SLOTS }, (_, i) => `${this.id}-${gen}-${i}`);
    this.slots = names.map((n) => join(dir, n));
    this.next = 0;
    this.broken = false;
    // One process makes the lane's pipes, then becomes the tool; setpriv has the kernel kill it when this process
    // dies, whatever kills it (a tool waiting for its next pipe would otherwise wait forever). The script is a
    // constant; the names and the tool's arguments are arguments.
    const proc = spawn(
      "setpriv",
      [
        "--pdeathsig",
        "KILL",
        "--",
        "sh",
        "-c",
        LANE_SCRIPT,
        "sh",
        names.join(" "),
        opts.tool,
        ...this.batch.args,
      ],
      // Its own process group: mkfifo is the shell's child, which the kernel does not kill with it; a stop signal
      // kills the whole group before removing the directory (util/temporaries.ts).
      { stdio: ["ignore", "ignore", "pipe"], env: toolEnv(), cwd: dir, detached: true },
    );
    this.proc = proc;
    const pgid = proc.pid;
    if (pgid !== undefined) noteTemporaryWriter(pgid);
    this.exit = undefined;
    let stderr = "";
    proc.stderr.setEncoding("utf8");
    proc.stderr.on("data", (s: string) => {
      if (stderr.length < STDERR_LIMIT) stderr += s;
    });
    this.exited = new Promise<Exit>((resolve) => {
      proc.once("error", (err: Error) => resolve({ code: null, signal: null, stderr: err.message }));
      proc.once("close", (code: number | null, signal: NodeJS.Signals | null) =>
        resolve({ code, signal, stderr }),
      );
    }).then((exit) => {
      if (pgid !== undefined) forgetTemporaryWriter(pgid);
      return (this.exit = exit);
    });
  }

  /** Kills the process (it may wait on its next pipe) and forgets it. */
  async stop(): Promise<void> {
    if (this.ready !== undefined) {
      closeSync(this.ready);
      this.ready = undefined;
    }
    const proc = this.proc;
    this.proc = undefined;
    if (!proc) return;
    if (!this.exit) proc.kill("SIGKILL");
    await this.exited;
  }

  /** Opens `slot` for writing once the tool has it open for reading; fails if the tool exits first. */
  private async openSlot(slot: string): Promise<number> {
    for (let attempt = 0; ; attempt++) {
      try {
        return openSync(slot, constants.O_WRONLY | constants.O_NONBLOCK);
      } catch (err) {
        // ENOENT: the pipes are still being made; ENXIO: the tool is not reading this one yet.
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== "ENXIO" && code !== "ENOENT") throw err;
      }
      if (this.exit) throw this.failure(this.exit);
      await (attempt < 4 ? yieldToLoop() : delay(1));
    }
  }

  private failure(exit: Exit): Error {
    const { opts } = this.batch;
    // igzip says only that it could not write its output ("Error encountered while writing to file ..."), zstd
    // that it could not (its words vary): a full disk is the usual reason, said as every other write says it.
    if (/writ/i.test(exit.stderr) && freeBytes(opts.parentDir) < FULL_BELOW) return this.noSpace();
    const how = exit.signal
      ? `was killed by ${exit.signal}`
      : exit.code === null
        ? "could not start"
        : `exited with status ${exit.code}`;
    // 127: the shell found no program, the compressor or the lane's mkfifo (coreutils).
    const missing = /mkfifo/.test(exit.stderr) ? "coreutils" : CODECS[opts.codec].pkg;
    const hint = exit.code === 127 ? ` (is Debian's ${missing} package installed?)` : "";
    const said = withoutTemporariesIn(exit.stderr.trim().split("\n")[0] + hint);
    return new NixociError(
      this.batch.input,
      `${opts.tool} ${how} before it finished its input${said ? `: ${said}` : ""}`,
    );
  }

  private noSpace(): Error {
    const err = Object.assign(new Error("ENOSPC"), { code: "ENOSPC" });
    return fsError(this.batch.opts.parentDir, err, "cannot write a blob");
  }

  /**
   * The slot opened again for the job's writes, blocking: they run in the thread pool, where a thread waits in
   * write() while the tool works through the pipe's 64 KiB, and feeds it the next bytes the moment it has room.
   * (Written from the event loop, non-blocking, the pipe ran dry whenever this thread was busy making the tar:
   * the tool was left waiting for a third of a cold build.) `probe`, the non-blocking open that found the tool
   * reading the slot, is closed. Should the tool die in between, the open would wait for a reader: it is one's
   * thread-pool thread that waits, and the tool's exit releases it by opening the slot for reading.
   */
  private async writer(slot: string, probe: number): Promise<number> {
    try {
      const opening = new Promise<number>((resolve, reject) =>
        openCb(slot, constants.O_WRONLY, (err, fd) => (err ? reject(err) : resolve(fd))),
      );
      const fd = await Promise.race([opening, this.exited!.then(() => undefined)]);
      if (fd !== undefined) return fd;
      const release = openSync(slot, constants.O_RDONLY | constants.O_NONBLOCK);
      try {
        closeSync(await opening);
      } finally {
        closeSync(release);
      }
      throw this.failure(this.exit!);
    } finally {
      closeSync(probe);
    }
  }

  async job(): Promise<BatchJob> {
    await this.ensureProcess();
    const slot = this.slots[this.next++];
    const probe = this.ready ?? (await this.openSlot(slot));
    this.ready = undefined;
    const fd = await this.writer(slot, probe);
    // Up to SINK_BUFFER bytes wait in this process for the tool, written by one writev() when the last write
    // returns: the tar of the next megabytes is made while the tool compresses the last ones.
    const sink = createWriteStream("", { fd, highWaterMark: SINK_BUFFER });
    const { codec, pool } = this.batch.opts;
    const input = this.batch.input;
    const withCrc = codec === "gzip" && crc32 !== undefined;
    let crc = 0;
    let size = 0;
    // The output is read as the tool writes it: each time the tool has taken more input, what it made of it.
    const checker = outputCheck(codec, input);
    const reader = new OutputReader(`${slot}${CODECS[codec].suffix}`, input, checker.see, pool);
    const stream = new Writable({
      highWaterMark: READ_CHUNK,
      write(chunk: Buffer, _enc, cb) {
        if (withCrc) crc = crc32!(chunk, crc);
        size += chunk.length;
        const written = () => {
          if (pool) pool.give(chunk);
          reader.poke();
        };
        if (sink.write(chunk, written)) cb();
        else sink.once("drain", () => cb());
      },
      final(cb) {
        // The tool sees the end of its input once the descriptor is closed.
        sink.once("close", () => cb(sink.errored ?? undefined));
        sink.end();
      },
      destroy(err, cb) {
        sink.destroy();
        cb(err);
      },
    });
    sink.on("error", (err) => stream.destroy(err));
    return {
      stream,
      done: async () => {
        try {
          if (!stream.writableFinished) throw new Error("the stream was not written to its end");
          await this.finished();
          try {
            return await checkedOutput(reader, checker, crc, size);
          } catch (err) {
            // zstd goes on to its next input after a failed write (and removes that output): a full disk again.
            throw freeBytes(this.batch.opts.parentDir) < FULL_BELOW ? this.noSpace() : err;
          }
        } catch (err) {
          // The process may hold half of this stream: it is of no further use.
          this.broken = true;
          await this.stop();
          throw err;
        } finally {
          await reader.close().catch(() => {});
          await unlink(slot).catch(() => {});
        }
      },
    };
  }

  /** Waits until the tool is done with the slot just written: it opened the next one, or it exited (after the last). */
  private async finished(): Promise<void> {
    if (this.next < this.slots.length) {
      this.ready = await this.openSlot(this.slots[this.next]);
      return;
    }
    const exit = await this.exited!;
    if (exit.code !== 0) throw this.failure(exit);
    this.proc = undefined;
  }
}

/**
 * Lanes at most: each lane's writes hold a thread of libuv's pool while its tool works through them, and a thread
 * must stay free for everything else that runs there (file reads of the tars being made, renames). Four threads
 * unless UV_THREADPOOL_SIZE said otherwise when the process started; more lanes would only wait for threads.
 */
function maxLanes(): number {
  const threads = Number(process.env.UV_THREADPOOL_SIZE);
  return Math.max(1, (Number.isInteger(threads) && threads > 0 ? Math.min(threads, 1024) : 4) - 1);
}

function freeBytes(dir: string): number {
  try {
    const st = statfsSync(dir);
    return st.bavail * st.bsize;
  } catch {
    return Infinity;
  }
}

/**
 * Reads a tool's output file as it grows, and once more after the tool closed it: its sha256 and size, each chunk
 * also shown to `see`. Reading while the tool still compresses takes the read-back off the end of the layer (the
 * tool only appends to the file it made; the final read after the tool moved on, or exited, reaches its end).
 */
class OutputReader {
  private file?: FileHandle;
  private buf?: Buffer;
  private readonly hash = createHash("sha256");
  private size = 0;
  private reading?: Promise<void>;
  private failed?: unknown;

  constructor(
    readonly path: string,
    private readonly input: string,
    private readonly see: (chunk: Buffer) => void,
    private readonly pool?: BufferPool,
  ) {}

  /** Reads what the tool has written so far, unless a read is under way; never rejects (finish() tells). */
  poke(): void {
    if (this.reading || this.failed) return;
    this.reading = this.readAvailable(false)
      .catch((err: unknown) => {
        this.failed = err;
      })
      .finally(() => (this.reading = undefined));
  }

  /** The whole output, once the tool has closed it. */
  async finish(): Promise<BatchOutput> {
    await this.reading;
    if (this.failed) throw this.failed;
    await this.readAvailable(true);
    return { path: this.path, size: this.size, sha256: this.hash.digest("hex") };
  }

  async close(): Promise<void> {
    await this.reading;
    if (this.buf) this.pool?.give(this.buf);
    this.buf = undefined;
    await this.file?.close();
    this.file = undefined;
  }

  private async readAvailable(final: boolean): Promise<void> {
    if (!this.file) {
      try {
        this.file = await open(this.path, "r");
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        // Not made yet: the tool has not got to it.
        if (!final && code === "ENOENT") return;
        throw new NixociError(
          this.input,
          `the compressor left no output (${code ?? (err as Error).message})`,
        );
      }
      this.buf = this.pool ? this.pool.take() : Buffer.allocUnsafe(READ_CHUNK);
    }
    for (;;) {
      const { bytesRead } = await this.file.read(this.buf!, 0, this.buf!.length, this.size);
      if (!bytesRead) return;
      const chunk = this.buf!.subarray(0, bytesRead);
      this.hash.update(chunk);
      this.see(chunk);
      this.size += bytesRead;
    }
  }
}

/** What a codec checks of a tool's output: shown each chunk as it is read, then asked about the whole. */
interface OutputCheck {
  see(chunk: Buffer): void;
  /** The output, if it is the tool's for the stream of `size` bytes with CRC-32 `crc` (zstd: whole frames). */
  check(out: BatchOutput, crc: number, size: number): BatchOutput;
}

/** gzip: the trailer (the last 8 bytes, wherever the chunks end) against the input's CRC-32 and size. */
function gzipTrailerCheck(input: string): OutputCheck {
  const tail = Buffer.alloc(8);
  return {
    see: (chunk) => {
      if (chunk.length >= 8) chunk.copy(tail, 0, chunk.length - 8);
      else {
        tail.copy(tail, 0, chunk.length);
        chunk.copy(tail, 8 - chunk.length);
      }
    },
    check: (out, crc, size) => {
      const ok =
        out.size >= 18 &&
        tail.readUInt32LE(4) === size % 2 ** 32 &&
        (crc32 === undefined || tail.readUInt32LE(0) === crc >>> 0);
      if (!ok)
        throw new NixociError(
          input,
          `igzip's output is not the gzip of the stream given (${out.size} bytes)`,
        );
      return out;
    },
  };
}

/** zstd: whole zstd frames. */
function zstdFramesCheck(input: string): OutputCheck {
  const frames = new ZstdFrameCheck();
  return {
    see: (chunk) => frames.update(chunk),
    check: (out) => {
      const wrong = frames.result();
      if (wrong)
        throw new NixociError(input, `zstd's output is not whole zstd frames: ${wrong} (${out.size} bytes)`);
      return out;
    },
  };
}

const outputCheck = (codec: BatchCodec, input: string): OutputCheck =>
  codec === "gzip" ? gzipTrailerCheck(input) : zstdFramesCheck(input);

/** A finished output read whole (through the reader used while it grew) and checked. */
async function checkedOutput(
  reader: OutputReader,
  checker: OutputCheck,
  crc: number,
  size: number,
): Promise<BatchOutput> {
  try {
    return checker.check(await reader.finish(), crc, size);
  } finally {
    await reader.close();
  }
}

/** Hashes a gzip output and checks its trailer (CRC-32 and size of the input, little-endian). */
export function checkedGzipOutput(
  path: string,
  crc: number,
  size: number,
  input: string,
  pool?: BufferPool,
): Promise<BatchOutput> {
  const checker = gzipTrailerCheck(input);
  return checkedOutput(new OutputReader(path, input, checker.see, pool), checker, crc, size);
}

/** Hashes a zstd output and checks that it is whole zstd frames. */
export function checkedZstdOutput(path: string, input: string, pool?: BufferPool): Promise<BatchOutput> {
  const checker = zstdFramesCheck(input);
  return checkedOutput(new OutputReader(path, input, checker.see, pool), checker, 0, 0);
}

let setprivFor: { path: string; found: boolean } | undefined;

export class CompressorBatch {
  /** Whether batches can run here: they need util-linux's setpriv (any Debian has it); else a process per stream. */
  static available(): boolean {
    // Asked for every layer: one look along PATH per PATH (a hundred looks were a thousand failed stat calls).
    const path = process.env.PATH ?? "";
    if (setprivFor?.path !== path) setprivFor = { path, found: findOnPath("setpriv", path) !== undefined };
    return setprivFor.found;
  }

  readonly dir: string;
  /** The tool's arguments (before the pipes). */
  readonly args: string[];
  /** Names the data in errors. */
  readonly input: string;
  private readonly lanes: Lane[] = [];
  private readonly idle: Lane[] = [];
  private readonly waiting: Array<(lane: Lane) => void> = [];
  private made?: Promise<void>;
  private closed = false;

  constructor(readonly opts: CompressorBatchOptions) {
    this.args = CODECS[opts.codec].args(opts.level);
    this.input = opts.input ?? `${opts.codec} batch`;
    this.dir = tempSibling(opts.parentDir, `${opts.codec}-batch`);
    for (let i = 0; i < Math.max(1, Math.min(opts.lanes, maxLanes())); i++) {
      const lane = new Lane(this, i);
      this.lanes.push(lane);
      this.idle.push(lane);
    }
  }

  /**
   * Compresses one stream: waits for a free lane, gives the job. The lane is busy until `done()` settled, so
   * write the stream and await done() (or destroy the stream and still await done(), which then rejects).
   */
  async job(): Promise<BatchJob> {
    if (this.closed) throw new Error("the compressor batch is closed");
    this.made ??= mkdir(this.opts.parentDir, { recursive: true })
      .then(() => mkdir(this.dir, { mode: 0o700 }))
      .then(() => undefined);
    await this.made;
    const lane = this.idle.pop() ?? (await new Promise<Lane>((resolve) => this.waiting.push(resolve)));
    let job: BatchJob;
    try {
      job = await lane.job();
    } catch (err) {
      lane.broken = true;
      await lane.stop().catch(() => {});
      this.release(lane);
      throw err;
    }
    let settled = false;
    return {
      stream: job.stream,
      done: async () => {
        if (settled) throw new Error("done() was called twice");
        settled = true;
        try {
          return await job.done();
        } finally {
          this.release(lane);
        }
      },
    };
  }

  private release(lane: Lane): void {
    const next = this.waiting.shift();
    if (next) next(lane);
    else this.idle.push(lane);
  }

  /** Stops every process and removes the directory with what was not renamed out of it. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.lanes.map((l) => l.stop().catch(() => {})));
    if (this.made) await rm(this.dir, { recursive: true, force: true });
  }
}
