// Serialises a filesystem tree as a NAR ("nix-archive-1"), byte for byte what `nix-store --dump` writes.
//
// The work is done by a synchronous producer that fills output batches of about 1 MiB: it lstat()s, opens and
// reads files with the synchronous fs calls, copying file contents straight into the batch buffer. A batch is
// bounded (at most BATCH_BYTES of output and BATCH_ENTRIES filesystem objects), so each step blocks the event
// loop for about as long as reading 1 MiB from disk; that is much faster than one thread-pool round trip per
// lstat/open/read/close when a tree has thousands of small files. Memory stays bounded: files are never read
// whole, the only per-tree state is the sorted entry names of the directories on the current path.
// dumpPathTo and narHashOfPath, which know when a chunk has been consumed, recycle a few batch buffers
// instead of allocating a new one per chunk (see BufferPool).
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import { Readable, type Writable } from "node:stream";
import { Socket } from "node:net";
import { finished, pipeline } from "node:stream/promises";
import { setImmediate as yieldToEventLoop } from "node:timers/promises";
import { NixociError } from "../util/errors.js";
import { fileNameBytes } from "../util/file-names.js";
import { errnoWords } from "../util/fs-errors.js";
import { narString, narStrings, padded } from "./nar-string.js";

/** Output batch size: each chunk of the stream is up to this many bytes. */
const BATCH_BYTES = 1 << 20;
/** A batch also ends after this many filesystem objects, to bound the event-loop blocking on a cold cache. */
const BATCH_ENTRIES = 1024;
/** A new batch buffer is allocated when less than this is left in the current one. */
const MIN_BATCH_ROOM = 64 * 1024;
/** dumpPathTo keeps at most this many chunks in the sink's hands. */
const MAX_IN_FLIGHT = 4;
/** Room kept for the framing of one entry (name, tags, a symlink target up to PATH_MAX). */
const FRAMING_ROOM = 8192;
/** Room kept after file contents for its padding and two closing parentheses. */
const LEAF_TAIL = 64;

const T_MAGIC = narString("nix-archive-1");
const T_REGULAR = narStrings("(", "type", "regular");
const T_EXECUTABLE = narStrings("executable", "");
const T_CONTENTS = narStrings("contents");
const T_SYMLINK = narStrings("(", "type", "symlink", "target");
const T_DIRECTORY = narStrings("(", "type", "directory");
const T_ENTRY = narStrings("entry", "(", "name");
const T_NODE = narStrings("node");
const T_CLOSE = narStrings(")");
const ZEROS = Buffer.alloc(8);
const SLASH = Buffer.from("/");

const S_IFMT = fs.constants.S_IFMT;
const S_IFREG = fs.constants.S_IFREG;
const S_IFDIR = fs.constants.S_IFDIR;
const S_IFLNK = fs.constants.S_IFLNK;
const S_IXUSR = fs.constants.S_IXUSR;
// O_NOFOLLOW and O_NONBLOCK: if the file was replaced by a symlink or a FIFO since lstat(), fail (or read
// nothing and report that the file shrank) instead of following the link or blocking for ever.
const OPEN_FLAGS = fs.constants.O_RDONLY | (fs.constants.O_NOFOLLOW ?? 0) | (fs.constants.O_NONBLOCK ?? 0);

interface DirFrame {
  path: Buffer;
  names: Buffer[];
  next: number;
}

interface OpenFile {
  path: Buffer;
  fd: number;
  size: number;
  remaining: number;
}

function fileTypeName(mode: number): string {
  switch (mode & S_IFMT) {
    case fs.constants.S_IFSOCK:
      return "a socket";
    case fs.constants.S_IFIFO:
      return "a FIFO";
    case fs.constants.S_IFCHR:
      return "a character device";
    case fs.constants.S_IFBLK:
      return "a block device";
    default:
      return `of unknown type (mode ${(mode & S_IFMT).toString(8)})`;
  }
}

function fsError(path: Buffer | string, what: string, e: unknown): NixociError {
  return new NixociError(path.toString(), `cannot ${what} (${errnoWords(e)})`, { cause: e });
}

/**
 * Produces the NAR of one filesystem tree in batches. `next()` returns the next chunk of NAR bytes, or null
 * at the end; every returned chunk is a view of memory the producer never writes again.
 */
export class NarProducer {
  private out: Buffer = Buffer.allocUnsafe(0);
  private start = 0;
  private pos = 0;
  private readonly stack: DirFrame[] = [];
  private file: OpenFile | null = null;
  private started = false;
  private finished = false;

  /**
   * With `allocate`, every chunk starts at the beginning of a buffer obtained from it (BATCH_BYTES long), so
   * a caller that knows when a chunk has been consumed can recycle its buffer (see BufferPool). Without
   * it, chunks are carved from fresh buffers and stay valid for ever.
   */
  constructor(
    private readonly rootPath: string,
    private readonly allocate?: () => Buffer,
  ) {}

  /** Returns the next chunk of the NAR (at most about 1 MiB), or null when the NAR is complete. */
  next(): Buffer | null {
    if (this.finished) return null;
    try {
      return this.fill();
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /** Releases the open file, if any. Safe to call more than once. */
  close(): void {
    this.finished = true;
    if (this.file) {
      const fd = this.file.fd;
      this.file = null;
      try {
        fs.closeSync(fd);
      } catch {
        // nothing useful to do
      }
    }
    this.stack.length = 0;
  }

  private fill(): Buffer | null {
    if (this.allocate) {
      this.out = this.allocate();
      this.pos = 0;
    } else if (this.out.length - this.pos < MIN_BATCH_ROOM) {
      this.out = Buffer.allocUnsafe(BATCH_BYTES);
      this.pos = 0;
    }
    this.start = this.pos;
    // New entries start only before `end`, which leaves room for their framing; file contents may run on
    // to `readEnd`, which leaves room for the padding and closing parentheses after them.
    const batchEnd = this.start + BATCH_BYTES;
    const end = Math.min(this.out.length - FRAMING_ROOM, batchEnd);
    const readEnd = Math.min(this.out.length - LEAF_TAIL, batchEnd);
    let entries = 0;

    if (!this.started) {
      this.started = true;
      this.emit(T_MAGIC);
      this.dumpNode(fileNameBytes(this.rootPath));
      entries++;
    }

    while (this.pos < end && entries < BATCH_ENTRIES) {
      if (this.file) {
        this.readFile(this.file, readEnd);
        continue;
      }
      const frame = this.stack[this.stack.length - 1];
      if (frame === undefined) {
        this.finished = true;
        break;
      }
      if (frame.next === frame.names.length) {
        // End of the directory node, then of the entry that holds it (the root is held by no entry).
        this.stack.pop();
        this.endNode();
        continue;
      }
      const name = frame.names[frame.next++];
      this.emit(T_ENTRY);
      this.emitStr(name);
      this.emit(T_NODE);
      this.dumpNode(Buffer.concat([frame.path, SLASH, name]));
      entries++;
    }

    const chunk = this.out.subarray(this.start, this.pos);
    if (this.finished && chunk.length === 0) return null;
    return chunk;
  }

  /** Writes the start of a node: all of it except the contents of files and the entries of directories. */
  private dumpNode(path: Buffer): void {
    let st: fs.Stats;
    try {
      st = fs.lstatSync(path);
    } catch (e) {
      throw fsError(path, "lstat", e);
    }
    const type = st.mode & S_IFMT;
    if (type === S_IFREG) {
      this.emit(T_REGULAR);
      if (st.mode & S_IXUSR) this.emit(T_EXECUTABLE);
      this.emit(T_CONTENTS);
      this.emitU64(st.size);
      if (st.size === 0) {
        this.endNode();
        return;
      }
      let fd: number;
      try {
        fd = fs.openSync(path, OPEN_FLAGS);
      } catch (e) {
        throw fsError(path, "open", e);
      }
      this.file = { path, fd, size: st.size, remaining: st.size };
    } else if (type === S_IFLNK) {
      let target: Buffer;
      try {
        target = fs.readlinkSync(path, { encoding: "buffer" });
      } catch (e) {
        throw fsError(path, "read symlink", e);
      }
      this.emit(T_SYMLINK);
      this.emitStr(target);
      this.endNode();
    } else if (type === S_IFDIR) {
      let names: Buffer[];
      try {
        names = fs.readdirSync(path, { encoding: "buffer" });
      } catch (e) {
        throw fsError(path, "read directory", e);
      }
      names.sort(Buffer.compare);
      this.emit(T_DIRECTORY);
      this.stack.push({ path, names, next: 0 });
    } else {
      throw new NixociError(path.toString(), `cannot be put in a NAR: it is ${fileTypeName(st.mode)}`);
    }
  }

  /** Closes a node and, unless it is the root, the directory entry that holds it. */
  private endNode(): void {
    this.emit(T_CLOSE);
    if (this.stack.length > 0) this.emit(T_CLOSE);
    else this.finished = true;
  }

  /** Copies file contents into the batch, up to `readEnd`; closes the node once the file is complete. */
  private readFile(file: OpenFile, readEnd: number): void {
    while (file.remaining > 0 && this.pos < readEnd) {
      let n: number;
      try {
        n = fs.readSync(file.fd, this.out, this.pos, Math.min(readEnd - this.pos, file.remaining), null);
      } catch (e) {
        throw fsError(file.path, "read", e);
      }
      if (n === 0) throw new NixociError(file.path.toString(), "file shrank while it was being read");
      this.pos += n;
      file.remaining -= n;
    }
    if (file.remaining > 0) return;
    this.file = null;
    try {
      fs.closeSync(file.fd);
    } catch (e) {
      throw fsError(file.path, "close", e);
    }
    const pad = (8 - (file.size % 8)) % 8;
    if (pad) this.emit(ZEROS.subarray(0, pad));
    this.endNode();
  }

  // --- batch buffer writers -------------------------------------------------------------------------------

  /** Makes room for `n` bytes of framing in the batch buffer, moving to a new buffer if needed. */
  private room(n: number): void {
    if (this.pos + n <= this.out.length) return;
    // Framing never straddles buffers: the current chunk is carried over into a fresh, larger buffer.
    const carried = this.out.subarray(this.start, this.pos);
    const next = Buffer.allocUnsafe(Math.max(BATCH_BYTES, carried.length + n + MIN_BATCH_ROOM));
    carried.copy(next, 0);
    this.out = next;
    this.start = 0;
    this.pos = carried.length;
  }

  private emit(bytes: Buffer): void {
    this.room(bytes.length);
    bytes.copy(this.out, this.pos);
    this.pos += bytes.length;
  }

  private emitU64(n: number): void {
    this.room(8);
    this.out.writeUInt32LE(n % 0x100000000, this.pos);
    this.out.writeUInt32LE(Math.floor(n / 0x100000000), this.pos + 4);
    this.pos += 8;
  }

  private emitStr(s: Buffer): void {
    const total = 8 + padded(s.length);
    this.room(total);
    this.out.writeUInt32LE(s.length, this.pos);
    this.out.writeUInt32LE(0, this.pos + 4);
    s.copy(this.out, this.pos + 8);
    this.out.fill(0, this.pos + 8 + s.length, this.pos + total);
    this.pos += total;
  }
}

/**
 * A stream of the NAR bytes of the filesystem tree at `path` (not following a symlink at `path` itself), equal
 * to what `nix-store --dump path` writes. Errors (unreadable files, sockets, devices, FIFOs, files that change
 * while read) destroy the stream with a NixociError naming the offending path.
 */
export function dumpPath(path: string): Readable {
  const producer = new NarProducer(path);
  return new Readable({
    highWaterMark: BATCH_BYTES,
    read() {
      try {
        for (;;) {
          const chunk = producer.next();
          if (chunk === null) {
            this.push(null);
            return;
          }
          if (!this.push(chunk)) return;
        }
      } catch (e) {
        this.destroy(e as Error);
      }
    },
    destroy(err, callback) {
      producer.close();
      callback(err);
    },
  });
}

/**
 * Batch buffers for a consumer that tells when it is done with a chunk. Reusing a few buffers instead of
 * allocating a fresh 1 MiB buffer per chunk saves the page faults of touching new memory, which otherwise
 * cost about a third of the time of dumping a tree that is in the page cache.
 */
class BufferPool {
  private readonly free: Buffer[] = [];
  constructor(private readonly max = 4) {}
  take = (): Buffer => this.free.pop() ?? Buffer.allocUnsafe(BATCH_BYTES);
  /** Returns the buffer behind a chunk the producer handed out (chunks start at byte 0 of a pool buffer). */
  give(chunk: Buffer): void {
    if (this.free.length < this.max && chunk.byteOffset === 0 && chunk.buffer.byteLength === BATCH_BYTES) {
      this.free.push(Buffer.from(chunk.buffer, 0, BATCH_BYTES));
    }
  }
}

/**
 * Sinks known to be done with a written chunk once its write callback has run (they write it to a file
 * descriptor and keep no reference), so the chunk's buffer can be reused.
 */
function releasesChunks(sink: Writable): boolean {
  return (
    sink instanceof fs.WriteStream ||
    sink instanceof Socket ||
    sink === process.stdout ||
    sink === process.stderr
  );
}

/** Waits for 'drain'; rejects if the sink fails or closes first. */
function drained(sink: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      sink.off("drain", onDrain);
      sink.off("error", onError);
      sink.off("close", onClose);
    };
    const onDrain = () => {
      cleanup();
      resolve();
    };
    const onError = (e: Error) => {
      cleanup();
      reject(e);
    };
    const onClose = () => {
      cleanup();
      reject(sink.errored ?? new Error("the NAR sink closed before the NAR was written"));
    };
    sink.on("drain", onDrain);
    sink.on("error", onError);
    sink.on("close", onClose);
  });
}

/**
 * Writes the NAR of `path` to `sink`, respecting backpressure, and resolves once every chunk is written. The
 * sink is ended afterwards unless `opts.end` is false (so several NARs or other data can go to the same sink)
 * or it is process.stdout/stderr. For file streams, sockets and
 * process.stdout/stderr the batch buffers are recycled once written, which makes this faster than piping
 * dumpPath(path) into them.
 */
export async function dumpPathTo(path: string, sink: Writable, opts: { end?: boolean } = {}): Promise<void> {
  // process.stdout/stderr are never ended (once ended, Node neither finishes them again nor lets a later
  // end() settle); all writes have completed when the promise resolves all the same.
  const end = (opts.end ?? true) && sink !== process.stdout && sink !== process.stderr;
  if (!releasesChunks(sink)) {
    await pipeline(dumpPath(path), sink, { end });
    return;
  }
  const pool = new BufferPool(MAX_IN_FLIGHT);
  const producer = new NarProducer(path, pool.take);
  // Chunks written whose callback has not run yet; at most MAX_IN_FLIGHT, which bounds memory even for
  // sinks that never report backpressure (synchronous ones call back on the next tick).
  let pending = 0;
  let wake: (() => void) | null = null;
  let writeError: Error | null = null;
  const settle = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  const onWritten = (chunk: Buffer) => (err?: Error | null) => {
    pending--;
    if (err) writeError ??= err;
    else pool.give(chunk);
    settle();
  };
  const failed = () =>
    writeError ??
    sink.errored ??
    (sink.destroyed || sink.writableEnded
      ? new Error("the NAR sink closed before the NAR was written")
      : null);
  try {
    for (;;) {
      const err = failed();
      if (err) throw err;
      if (pending >= MAX_IN_FLIGHT) {
        await new Promise<void>((resolve) => (wake = resolve));
        continue;
      }
      const chunk = producer.next();
      if (chunk === null) break;
      pending++;
      if (!sink.write(chunk, onWritten(chunk))) await drained(sink);
    }
    while (pending > 0) await new Promise<void>((resolve) => (wake = resolve));
    if (writeError) throw writeError;
  } catch (e) {
    producer.close();
    // Like pipeline(): a sink we were to end is destroyed (without an 'error' event nobody may listen to;
    // the error is ours to report).
    if (end) sink.destroy();
    throw e;
  }
  if (end) {
    sink.end();
    await finished(sink);
  }
}

/** The SHA-256 digest and the size of the NAR of `path`, without writing the NAR anywhere. */
export async function narHashOfPath(path: string): Promise<{ narHash: Buffer; narSize: number }> {
  const pool = new BufferPool(1);
  const producer = new NarProducer(path, pool.take);
  const hash = createHash("sha256");
  let narSize = 0;
  try {
    for (;;) {
      const chunk = producer.next();
      if (chunk === null) break;
      hash.update(chunk);
      narSize += chunk.length;
      pool.give(chunk);
      // Each batch blocks for about one 1 MiB read; let other work run between batches.
      await yieldToEventLoop();
    }
  } finally {
    producer.close();
  }
  return { narHash: hash.digest(), narSize };
}
