// A strict, streaming NAR parser. It reads the NAR from an async source chunk by chunk, checks every rule of
// the format (see the NarHandler docs below) and reports the tree to a handler as it goes: file contents are
// handed over as a stream of the source's own chunks, so memory stays bounded whatever the file sizes.
// Lengths read from the NAR are checked against their limits before anything is allocated or read for them.
import type { Readable } from "node:stream";
import { NixociError, quote } from "../util/errors.js";
import { decodeFileName } from "../util/file-names.js";

/** Receives the tree in a NAR, in NAR order (a directory before its entries, entries sorted bytewise). */
export interface NarHandler {
  /**
   * A directory; `path` lists the entry names from the root ([] is the root itself). Names and symlink targets
   * that are not valid UTF-8 have their other bytes escaped: util/file-names.ts gives the bytes back.
   */
  directory(path: readonly string[]): void | Promise<void>;
  symlink(path: readonly string[], target: string): void | Promise<void>;
  /**
   * A regular file of `size` bytes whose contents start at byte `narOffset` of the NAR. `contents` yields
   * them in chunks; it may be read (only before the returned promise settles) or ignored: whatever the
   * handler leaves unread is skipped by the parser. The chunks may be views of the source's buffers.
   */
  file(
    path: readonly string[],
    executable: boolean,
    size: number,
    contents: AsyncIterable<Buffer>,
    narOffset: number,
  ): void | Promise<void>;
}

export interface ParseNarOptions {
  /** Names the NAR in error messages ("stdin", a file name, a URL). */
  input: string;
  /** Nodes nested this deep (counting entry names from the root) are rejected. Default 64, as Nix. */
  maxDepth?: number;
}

export const NAR_MAGIC = "nix-archive-1";
/** Limits that current Nix enforces when it reads a NAR. */
export const NAR_MAX_DEPTH = 64;
export const NAR_MAX_NAME = 255;
export const NAR_MAX_TARGET = 4095;
export const NAR_MAX_TAG = 32;

const EMPTY = Buffer.alloc(0);

/**
 * Where a NAR comes from: a stream or async iterable of chunks (the usual case), or, for convenience, an
 * iterable of chunks (an array) or the whole NAR as one buffer.
 */
export type NarSource = AsyncIterable<Buffer> | Readable | Iterable<Buffer> | Uint8Array;

function iterate(source: NarSource): AsyncIterator<unknown> | Iterator<unknown> {
  if (source instanceof Uint8Array) return [source][Symbol.iterator]();
  if (Symbol.asyncIterator in source) return (source as AsyncIterable<unknown>)[Symbol.asyncIterator]();
  return (source as Iterable<unknown>)[Symbol.iterator]();
}

/** A pull-based byte reader over an async iterator of chunks, tracking the absolute offset. */
class ByteReader {
  private buf: Buffer = EMPTY;
  private pos = 0;
  /** Absolute offset of buf[0] in the stream. */
  private base = 0;
  private ended = false;

  constructor(
    private readonly it: AsyncIterator<unknown> | Iterator<unknown>,
    private readonly input: string,
  ) {}

  /** Absolute offset of the next unread byte. */
  get offset(): number {
    return this.base + this.pos;
  }

  get avail(): number {
    return this.buf.length - this.pos;
  }

  fail(at: number, problem: string): NixociError {
    return new NixociError(this.input, `NAR at byte ${at}: ${problem}`);
  }

  /** Replaces the (fully consumed) buffer with the next non-empty chunk; throws at the end of the input. */
  async pull(what: string): Promise<void> {
    for (;;) {
      if (this.ended) throw this.fail(this.offset, `truncated NAR: input ends ${what}`);
      const r = await this.it.next();
      if (r.done) {
        this.ended = true;
        continue;
      }
      const chunk = toBuffer(r.value, this.input);
      if (chunk.length === 0) continue;
      this.base += this.buf.length;
      this.buf = chunk;
      this.pos = 0;
      return;
    }
  }

  /** The current chunk and the read position in it (for reading in place; see advance). */
  peek(): Buffer {
    return this.buf;
  }

  get position(): number {
    return this.pos;
  }

  advance(n: number): void {
    this.pos += n;
  }

  /** Takes `n` bytes that are known to be available. */
  take(n: number): Buffer {
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** Takes exactly `n` bytes (n small: only for framing), gathering them across chunks if needed. */
  async read(n: number, what: string): Promise<Buffer> {
    if (this.avail >= n) return this.take(n);
    const out = Buffer.allocUnsafe(n);
    let got = 0;
    for (;;) {
      const k = Math.min(this.avail, n - got);
      this.buf.copy(out, got, this.pos, this.pos + k);
      this.pos += k;
      got += k;
      if (got === n) return out;
      await this.pull(what);
    }
  }

  /** Skips `n` bytes. */
  async skip(n: number, what: string): Promise<void> {
    while (n > 0) {
      if (this.avail === 0) await this.pull(what);
      const k = Math.min(this.avail, n);
      this.pos += k;
      n -= k;
    }
  }

  async close(): Promise<void> {
    if (!this.ended && typeof this.it.return === "function") {
      this.ended = true;
      await this.it.return();
    }
  }
}

function toBuffer(v: unknown, input: string): Buffer {
  if (Buffer.isBuffer(v)) return v;
  if (v instanceof Uint8Array) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  throw new NixociError(input, "NAR source yielded something other than bytes");
}

function padding(n: number): number {
  return (8 - (n % 8)) % 8;
}

function isZero(b: Buffer, from = 0, to = b.length): boolean {
  for (let i = from; i < to; i++) if (b[i] !== 0) return false;
  return true;
}

/** A tag the parser expects, with its encoding for a quick comparison against the input. */
interface Token {
  text: string;
  quoted: string;
  encoded: Buffer;
}

function token(text: string): Token {
  const bytes = Buffer.from(text, "latin1");
  const encoded = Buffer.alloc(8 + bytes.length + padding(bytes.length));
  encoded.writeUInt32LE(bytes.length, 0);
  bytes.copy(encoded, 8);
  return { text, quoted: quote(text), encoded };
}

const T_OPEN = token("(");
const T_CLOSE = token(")");
const T_TYPE = token("type");
const T_CONTENTS = token("contents");
const T_TARGET = token("target");
const T_ENTRY = token("entry");
const T_NAME = token("name");
const T_NODE = token("node");
/** Sequences checked in one go (all or nothing) on the fast path. */
const T_NODE_HEAD = sequence(T_OPEN, T_TYPE);
const T_ENTRY_HEAD = sequence(T_ENTRY, T_OPEN, T_NAME);

function sequence(...ts: Token[]): Token {
  return { text: "", quoted: "", encoded: Buffer.concat(ts.map((t) => t.encoded)) };
}

// Descriptions of strings, for error messages.
const W_TAG = "the tag";
const W_TYPE = "the node type";
const W_NAME = "the entry name";
const W_TARGET = "the symlink target";
const W_EXEC = "the executable marker";

/** The NAR parser proper: one instance per parse. */
class NarParser {
  private readonly maxDepth: number;

  constructor(
    private readonly r: ByteReader,
    private readonly handler: NarHandler,
    opts: ParseNarOptions,
  ) {
    this.maxDepth = opts.maxDepth ?? NAR_MAX_DEPTH;
  }

  // Each reading step has a synchronous fast path, taken when the bytes are already buffered (nearly always),
  // and an asynchronous path that pulls more input; the fast path returns null when it cannot decide.

  /** Reads a string of at most `max` bytes if it is fully buffered; checks the limit as soon as it can. */
  private strNow(max: number, what: string): Buffer | null {
    const r = this.r;
    if (r.avail < 8) return null;
    const b = r.peek();
    const p = r.position;
    const lo = b.readUInt32LE(p);
    const hi = b.readUInt32LE(p + 4);
    if (hi !== 0 || lo > max) this.tooLong(r.offset, hi, lo, max, what);
    const total = lo + padding(lo);
    if (r.avail < 8 + total) return null;
    if (!isZero(b, p + 8 + lo, p + 8 + total)) {
      throw r.fail(r.offset + 8 + lo, `non-zero padding after ${what}`);
    }
    r.advance(8 + total);
    return b.subarray(p + 8, p + 8 + lo);
  }

  private async strSlow(max: number, what: string): Promise<Buffer> {
    const r = this.r;
    const at = r.offset;
    const lenBytes = await r.read(8, `in the length of ${what}`);
    const lo = lenBytes.readUInt32LE(0);
    const hi = lenBytes.readUInt32LE(4);
    if (hi !== 0 || lo > max) this.tooLong(at, hi, lo, max, what);
    const total = lo + padding(lo);
    const bytes = await r.read(total, `in ${what}`);
    if (!isZero(bytes, lo)) throw r.fail(at + 8 + lo, `non-zero padding after ${what}`);
    return bytes.subarray(0, lo);
  }

  private tooLong(at: number, hi: number, lo: number, max: number, what: string): never {
    const len = (BigInt(hi) << 32n) | BigInt(lo);
    throw this.r.fail(at, `${what} is ${len} bytes long, more than the limit of ${max}`);
  }

  private async str(max: number, what: string): Promise<Buffer> {
    return this.strNow(max, what) ?? (await this.strSlow(max, what));
  }

  private async tag(what = W_TAG): Promise<string> {
    return (this.strNow(NAR_MAX_TAG, what) ?? (await this.strSlow(NAR_MAX_TAG, what))).toString("latin1");
  }

  /** Consumes `t` if it comes next and is buffered. */
  private expectNow(t: Token): boolean {
    const r = this.r;
    const n = t.encoded.length;
    if (r.avail < n || r.peek().compare(t.encoded, 0, n, r.position, r.position + n) !== 0) return false;
    r.advance(n);
    return true;
  }

  private async expect(t: Token): Promise<void> {
    if (this.expectNow(t)) return;
    const at = this.r.offset;
    const got = await this.tag();
    if (got !== t.text) throw this.r.fail(at, `expected tag ${t.quoted}, got ${quote(got)}`);
  }

  async parse(): Promise<number> {
    const r = this.r;
    const lenBytes = await r.read(8, "in the magic string");
    const len = lenBytes.readUInt32LE(0);
    if (len !== NAR_MAGIC.length || lenBytes.readUInt32LE(4) !== 0) {
      throw r.fail(0, `not a NAR: it does not start with the magic string ${quote(NAR_MAGIC)}`);
    }
    const magic = await r.read(16, "in the magic string");
    if (magic.toString("latin1", 0, len) !== NAR_MAGIC) {
      throw r.fail(0, `not a NAR: magic is ${quote(magic.subarray(0, len))} instead of ${quote(NAR_MAGIC)}`);
    }
    if (!isZero(magic, len)) throw r.fail(8 + len, "non-zero padding after the magic string");
    await this.node([]);
    return r.offset;
  }

  private async node(path: readonly string[]): Promise<void> {
    const r = this.r;
    if (path.length >= this.maxDepth) {
      throw r.fail(r.offset, `directories nested more than ${this.maxDepth - 1} deep`);
    }
    if (!this.expectNow(T_NODE_HEAD)) {
      await this.expect(T_OPEN);
      await this.expect(T_TYPE);
    }
    const typeAt = r.offset;
    const type = await this.tag(W_TYPE);
    if (type === "regular") await this.regular(path);
    else if (type === "directory") await this.directory(path);
    else if (type === "symlink") await this.symlink(path);
    else throw r.fail(typeAt, `unknown node type ${quote(type)}`);
  }

  private async regular(path: readonly string[]): Promise<void> {
    const r = this.r;
    let executable = false;
    if (!this.expectNow(T_CONTENTS)) {
      let at = r.offset;
      let tag = await this.tag();
      if (tag === "executable") {
        const valueAt = r.offset;
        const value = await this.str(NAR_MAX_TAG, W_EXEC);
        if (value.length !== 0) {
          throw r.fail(valueAt, `executable marker has non-empty value ${quote(value)}`);
        }
        executable = true;
        at = r.offset;
        tag = await this.tag();
      }
      if (tag !== "contents") {
        throw r.fail(at, `expected tag ${executable ? "" : '"executable" or '}"contents", got ${quote(tag)}`);
      }
    }

    const sizeAt = r.offset;
    const sizeBytes = r.avail >= 8 ? r.take(8) : await r.read(8, "in the length of file contents");
    const lo = sizeBytes.readUInt32LE(0);
    const hi = sizeBytes.readUInt32LE(4);
    if (hi >= 0x200000) throw r.fail(sizeAt, `file size ${sizeBytes.readBigUInt64LE(0)} is too large`);
    const size = hi * 0x100000000 + lo;
    const narOffset = r.offset;

    // The contents, as the source's chunks. After the handler is done, whatever it left is skipped, and a
    // late reader gets an error instead of bytes from elsewhere in the NAR.
    let remaining = size;
    let open = true;
    const contents: AsyncIterable<Buffer> = {
      [Symbol.asyncIterator]: async function* () {
        while (remaining > 0) {
          if (!open) throw new Error("NAR file contents read after the handler returned");
          if (r.avail === 0) await r.pull("in file contents");
          const n = Math.min(r.avail, remaining);
          remaining -= n;
          yield r.take(n);
        }
      },
    };
    try {
      await this.handler.file(path, executable, size, contents, narOffset);
    } finally {
      open = false;
    }
    if (remaining > 0) await r.skip(remaining, "in file contents");

    const pad = padding(size);
    const padAt = r.offset;
    if (r.avail >= pad) {
      if (!isZero(r.peek(), r.position, r.position + pad)) {
        throw r.fail(padAt, "non-zero padding after file contents");
      }
      r.advance(pad);
    } else if (!isZero(await r.read(pad, "in the padding of file contents"))) {
      throw r.fail(padAt, "non-zero padding after file contents");
    }
    if (this.expectNow(T_CLOSE)) return;
    const endAt = r.offset;
    const end = await this.tag();
    if (end !== ")") {
      const why = end === "executable" ? ' ("executable" must come before "contents")' : "";
      throw r.fail(endAt, `expected tag ")" after file contents, got ${quote(end)}${why}`);
    }
  }

  private async symlink(path: readonly string[]): Promise<void> {
    const r = this.r;
    await this.expect(T_TARGET);
    const at = r.offset;
    const bytes = await this.str(NAR_MAX_TARGET, W_TARGET);
    if (bytes.length === 0) throw r.fail(at, "symlink target is empty");
    if (bytes.includes(0)) throw r.fail(at, `symlink target ${quote(bytes)} contains a NUL byte`);
    await this.handler.symlink(path, decodeFileName(bytes));
    await this.expect(T_CLOSE);
  }

  private async directory(path: readonly string[]): Promise<void> {
    const r = this.r;
    await this.handler.directory(path);
    let prev: Buffer | null = null;
    for (;;) {
      if (this.expectNow(T_CLOSE)) return;
      if (!this.expectNow(T_ENTRY_HEAD)) {
        const at = r.offset;
        const tag = await this.tag();
        if (tag === ")") return;
        if (tag !== "entry") throw r.fail(at, `expected tag "entry" or ")", got ${quote(tag)}`);
        await this.expect(T_OPEN);
        await this.expect(T_NAME);
      }
      const nameAt = r.offset;
      const raw = this.strNow(NAR_MAX_NAME, W_NAME) ?? (await this.strSlow(NAR_MAX_NAME, W_NAME));
      const name = this.checkName(raw, nameAt, prev);
      // `raw` may be a view of a source buffer; keep a copy for the order check.
      prev = Buffer.from(raw);
      await this.expect(T_NODE);
      await this.node([...path, name]);
      await this.expect(T_CLOSE);
    }
  }

  private checkName(raw: Buffer, at: number, prev: Buffer | null): string {
    const r = this.r;
    if (raw.length === 0) throw r.fail(at, "entry name is empty");
    if (raw[0] === 0x2e && (raw.length === 1 || (raw.length === 2 && raw[1] === 0x2e))) {
      throw r.fail(at, `entry name ${quote(raw)} is not allowed`);
    }
    if (raw.includes(0x2f)) throw r.fail(at, `entry name ${quote(raw)} contains "/"`);
    if (raw.includes(0)) throw r.fail(at, `entry name ${quote(raw)} contains a NUL byte`);
    if (prev !== null) {
      const c = Buffer.compare(raw, prev);
      if (c === 0) throw r.fail(at, `duplicate entry name ${quote(raw)}`);
      if (c < 0) {
        throw r.fail(at, `entry name ${quote(raw)} is not after ${quote(prev)}: entries are not sorted`);
      }
    }
    return decodeFileName(raw);
  }
}

/**
 * Parses a NAR strictly, reporting its tree to `handler`, and resolves with the number of bytes the NAR
 * took once its root node is complete (anything after it is not read). Rejects with a NixociError naming
 * `opts.input` and the byte offset of the problem for every deviation from what Nix writes: wrong magic,
 * non-zero padding, unknown or misplaced tags, entry names that are empty, ".", "..", contain "/" or NUL, are
 * longer than 255 bytes or not strictly increasing bytewise; symlink targets that are empty, contain NUL or are
 * longer than 4095 bytes; nesting too deep; truncation. Names and targets are bytes, as in Nix: those that are not
 * valid UTF-8 reach the handler with their other bytes escaped (util/file-names.ts).
 * Errors thrown by the handler are passed on as they are. The source is closed (return()) at the end.
 */
export async function parseNar(
  source: NarSource,
  handler: NarHandler,
  opts: ParseNarOptions,
): Promise<{ narSize: number }> {
  const reader = new ByteReader(iterate(source), opts.input);
  let narSize: number;
  try {
    narSize = await new NarParser(reader, handler, opts).parse();
  } finally {
    await reader.close().catch(() => undefined);
  }
  return { narSize };
}
