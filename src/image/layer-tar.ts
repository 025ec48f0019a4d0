// Deterministic layer tars: the same store paths (or tree entries) give the same bytes on any machine, whatever
// the readdir order, the file system's modes, timestamps and owners, or the Node version.
//
// Format (version 3): byte for byte what Go's archive/tar writes for the same entries when containerd's archive
// package (and Docker >= 23's) exports a layer (Format PAX, permission bits only in the mode field, no owner
// names, times truncated to seconds), so a layer BuildKit exports for the same files (nixoci's frontend) has the
// same diff_id. POSIX ustar headers, with a PAX extended header in front of an entry only when it does not fit
// ustar (a long or non-ASCII name or link target, a size of 8 GiB or more): tar-header.ts encodes them
// (TAR_FORMAT_LAYER). TAR_FORMAT_LAYER_DOCKER20 instead writes what dockerd 20.10 does: the mode with its S_IF*
// type bits (040555 for a store directory) and uname/gname "root".
//
// Every header: mtime 1 (1970-01-01T00:00:01Z), uid/gid 0, devmajor/devminor 0.
// Names are relative ("nix/store/<hash>-foo/bin/sh"), directories end in "/": the form `docker save`, BuildKit
// and GNU tar write and every reader (Go's archive/tar in docker/containerd, umoci, GNU tar) extracts under the
// root without a warning. (nixpkgs' streamLayeredImage writes absolute names, which readers strip.)
//
// Store paths are written with the store's canonical modes whatever the tree on disk has: directories 0555,
// files 0555 if the owner may execute them and 0444 otherwise, symlinks 0777. In /nix/store that is exactly
// lstat's st_mode & 0o7777; for a tree restored elsewhere (0755/0644) it makes the layer a function of the
// paths' NAR contents only. Hard links are written as regular files (the store's optimiser hard-links identical
// files across paths, and a layer must not refer to files outside itself). Sockets, FIFOs and devices fail.
//
// Output is batched into 1 MiB chunks; file contents are read straight into them (small files synchronously,
// which is several times faster than a thread-pool round trip per system call; large files asynchronously).
// The stream honours backpressure and yields to the event loop after each chunk.
import * as fs from "node:fs";
import { setImmediate as yieldToLoop } from "node:timers/promises";
import { Readable } from "node:stream";
import { posix } from "node:path";
import { fileNameBytes } from "../util/file-names.js";
import { NixociError, quote } from "../util/errors.js";
import type { BufferPool } from "../util/buffer-pool.js";
import { errnoWords } from "../util/fs-errors.js";
import type { HeaderRewriter } from "./permissions.js";
import {
  encodeTarHeader,
  TAR_BLOCK as BLOCK,
  TAR_DIR as DIR,
  TAR_FILE as FILE,
  TAR_FORMAT_LAYER,
  TAR_SYMLINK as SYMLINK,
  tarPadding,
  type TarFormat,
  type TarHeader,
} from "./tar-header.js";

/** Bump when the bytes produced for the same input change (it is part of a layer's cache identity). */
export const TAR_FORMAT_VERSION = 3;

/** How a layer tar is written, besides its entries. */
export interface LayerTarOptions {
  /** Changes modes and owners of the headers as they are written (permissions.ts). */
  rewriter?: HeaderRewriter;
  /** Buffers of TAR_CHUNK bytes for the stream's chunks (store path tars only). */
  pool?: BufferPool;
  /** The headers' format: TAR_FORMAT_LAYER unless given. */
  format?: TarFormat;
}

/** An entry of a customisation layer. `path` is relative to the image root ("etc/passwd", "/tmp" and "./tmp" alike). */
export type TreeEntry =
  | { path: string; type: "directory"; mode: number; uid?: number; gid?: number }
  | { path: string; type: "file"; mode: number; content: Buffer; uid?: number; gid?: number }
  | { path: string; type: "symlink"; target: string; uid?: number; gid?: number };

export interface StorePathSource {
  /** The store path as the image sees it: "/nix/store/<hash>-<name>". */
  storePath: string;
  /** Where its contents are read from (the same path for the local /nix/store). */
  realPath: string;
}

/**
 * A tar stream of store paths: the store directory's ancestors ("nix/", "nix/store/", mode 0755) first, then
 * each path (sorted bytewise) with its own entries, walked depth-first with each directory's entries sorted
 * bytewise by name (NAR order). All store paths must be in the same store directory.
 *
 * With a pool (of TAR_CHUNK-byte buffers), the stream's chunks are views of the pool's buffers: the consumer gives
 * each back once done with it (a compressor batch does, util/compressor-batch.ts) or leaves it to the collector.
 */
export function storePathsTar(paths: StorePathSource[], opts: LayerTarOptions = {}): Readable {
  const sorted = checkStorePaths(paths);
  return new TarStream(opts, async (out) => {
    const storeDir = sorted.length ? posix.dirname(sorted[0].storePath) : "/nix/store";
    const parts = storeDir.split("/").filter((s) => s !== "");
    for (let i = 1; i <= parts.length; i++) {
      await out.entry({ name: Buffer.from(parts.slice(0, i).join("/") + "/"), type: DIR, mode: 0o755 });
    }
    for (const { storePath, realPath } of sorted) {
      await writeStorePath(out, Buffer.from(storePath.slice(1)), Buffer.from(realPath));
    }
    await out.trailer();
  });
}

/**
 * A tar of explicit entries (a customisation layer), in bytewise order of their normalised paths. A rewriter
 * (permissions.ts) changes modes and owners of the headers as they are written, for both kinds of tar.
 */
export function treeTar(entries: TreeEntry[], opts: Omit<LayerTarOptions, "pool"> = {}): Readable {
  const items = entries.map((e) => ({ e, name: normaliseTreePath(e.path) }));
  items.sort((a, b) => Buffer.compare(a.name, b.name));
  for (let i = 1; i < items.length; i++) {
    if (items[i].name.equals(items[i - 1].name)) {
      throw new NixociError("layer tree", `path ${quote(items[i].e.path)} appears more than once`);
    }
  }
  const headers = items.map(({ e, name }) => treeHeader(e, name));
  return new TarStream(opts, async (out) => {
    for (let i = 0; i < items.length; i++) {
      const e = items[i].e;
      await out.entry(headers[i]);
      if (e.type === "file") await out.content(e.content);
    }
    await out.trailer();
  });
}

// ---------------------------------------------------------------------------------------------------------
// Store paths

const STORE_NAME_RE = /^[^/\0]+$/;

function checkStorePaths(paths: StorePathSource[]): StorePathSource[] {
  let storeDir: string | undefined;
  for (const { storePath, realPath } of paths) {
    const dir = posix.dirname(storePath);
    const base = posix.basename(storePath);
    if (
      !storePath.startsWith("/") ||
      storePath.endsWith("/") ||
      storePath.includes("\0") ||
      posix.normalize(storePath) !== storePath ||
      dir === "/" ||
      !STORE_NAME_RE.test(base) ||
      base === "." ||
      base === ".."
    ) {
      throw new NixociError(storePath, "not a store path (expected /<store dir>/<name>)");
    }
    if (storeDir !== undefined && dir !== storeDir) {
      throw new NixociError(storePath, `is not in the same store directory as the other paths (${storeDir})`);
    }
    storeDir = dir;
    if (realPath === "" || realPath.includes("\0")) throw new NixociError(storePath, "invalid real path");
  }
  const sorted = [...paths].sort((a, b) =>
    Buffer.compare(Buffer.from(a.storePath), Buffer.from(b.storePath)),
  );
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i].storePath === sorted[i - 1].storePath) {
      throw new NixociError(sorted[i].storePath, "is given more than once for one layer");
    }
  }
  return sorted;
}

const SLASH = Buffer.from("/");

function fsError(real: Buffer, what: string, err: unknown): NixociError {
  return new NixociError(real.toString(), `cannot ${what} (${errnoWords(err)})`, { cause: err });
}

function unsupported(real: Buffer, kind: string): NixociError {
  return new NixociError(
    real.toString(),
    `is a ${kind}; a layer can hold only regular files, directories and symlinks`,
  );
}

function kindOf(s: { isSocket(): boolean; isFIFO(): boolean; isBlockDevice(): boolean }): string {
  return s.isSocket()
    ? "socket"
    : s.isFIFO()
      ? "FIFO"
      : s.isBlockDevice()
        ? "block device"
        : "character device";
}

async function writeStorePath(out: TarOut, name: Buffer, real: Buffer): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(real);
  } catch (err) {
    throw fsError(real, "read the store path", err);
  }
  if (st.isDirectory()) {
    await out.entry({ name: Buffer.concat([name, SLASH]), type: DIR, mode: 0o555 });
    await writeDirectory(out, name, real);
  } else if (st.isSymbolicLink()) {
    await writeSymlink(out, name, real);
  } else if (st.isFile()) {
    await writeFile(out, name, real);
  } else {
    throw unsupported(real, kindOf(st));
  }
}

async function writeDirectory(out: TarOut, name: Buffer, real: Buffer): Promise<void> {
  let children: fs.Dirent<Buffer>[];
  try {
    children = fs.readdirSync(real, { withFileTypes: true, encoding: "buffer" }) as fs.Dirent<Buffer>[];
  } catch (err) {
    throw fsError(real, "read the directory", err);
  }
  children.sort((a, b) => Buffer.compare(a.name, b.name));
  for (const child of children) {
    const childName = Buffer.concat([name, SLASH, child.name]);
    const childReal = Buffer.concat([real, SLASH, child.name]);
    if (child.isDirectory()) {
      await out.entry({ name: Buffer.concat([childName, SLASH]), type: DIR, mode: 0o555 });
      await writeDirectory(out, childName, childReal);
    } else if (child.isSymbolicLink()) {
      await writeSymlink(out, childName, childReal);
    } else if (child.isFile()) {
      await writeFile(out, childName, childReal);
    } else {
      throw unsupported(childReal, kindOf(child));
    }
  }
}

async function writeSymlink(out: TarOut, name: Buffer, real: Buffer): Promise<void> {
  let target: Buffer;
  try {
    target = fs.readlinkSync(real, { encoding: "buffer" });
  } catch (err) {
    throw fsError(real, "read the symlink", err);
  }
  await out.entry({ name, type: SYMLINK, mode: 0o777, linkname: target });
}

// O_NONBLOCK: should the file have been replaced by a FIFO since it was listed, open() must not hang.
const OPEN_FLAGS = fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK;
/** Files up to this size are read with synchronous calls. */
const SMALL_FILE = 64 * 1024;

async function writeFile(out: TarOut, name: Buffer, real: Buffer): Promise<void> {
  let fd: number;
  try {
    fd = fs.openSync(real, OPEN_FLAGS);
  } catch (err) {
    throw fsError(real, "open the file", err);
  }
  try {
    let st: fs.Stats;
    try {
      st = fs.fstatSync(fd);
    } catch (err) {
      throw fsError(real, "stat the file", err);
    }
    if (!st.isFile()) throw new NixociError(real.toString(), "changed while the layer was written");
    const size = st.size;
    await out.entry({ name, type: FILE, mode: st.mode & 0o100 ? 0o555 : 0o444, size });
    await out.fileData(fd, size, real);
  } finally {
    fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Customisation trees

function normaliseTreePath(p: string): Buffer {
  let s = p;
  for (;;) {
    if (s.startsWith("/")) s = s.slice(1);
    else if (s.startsWith("./")) s = s.slice(2);
    else break;
  }
  if (s.endsWith("/")) s = s.slice(0, -1);
  const parts = s.split("/");
  if (s === "" || s.includes("\0") || parts.some((c) => c === "" || c === "." || c === "..")) {
    throw new NixociError("layer tree", `invalid path ${quote(p)}`);
  }
  return fileNameBytes(s);
}

function checkId(e: TreeEntry, id: number | undefined, what: string): number {
  const v = id ?? 0;
  if (!Number.isInteger(v) || v < 0 || v > 0o7777777) {
    throw new NixociError("layer tree", `${quote(e.path)}: ${what} ${v} is out of range`);
  }
  return v;
}

function treeHeader(e: TreeEntry, name: Buffer): TarHeader {
  const uid = checkId(e, e.uid, "uid");
  const gid = checkId(e, e.gid, "gid");
  if (e.type === "symlink") {
    if (e.target === "" || e.target.includes("\0")) {
      throw new NixociError("layer tree", `${quote(e.path)}: invalid symlink target ${quote(e.target)}`);
    }
    return { name, type: SYMLINK, mode: 0o777, linkname: fileNameBytes(e.target), uid, gid };
  }
  if (!Number.isInteger(e.mode) || e.mode < 0 || e.mode > 0o7777) {
    throw new NixociError("layer tree", `${quote(e.path)}: invalid mode ${e.mode}`);
  }
  if (e.type === "directory")
    return { name: Buffer.concat([name, SLASH]), type: DIR, mode: e.mode, uid, gid };
  return { name, type: FILE, mode: e.mode, size: e.content.length, uid, gid };
}

// ---------------------------------------------------------------------------------------------------------
// The stream

const CHUNK = 1 << 20;
/** The size of a tar stream's chunks (but the last), and of the buffers of a pool it is given. */
export const TAR_CHUNK = CHUNK;

/** Thrown inside the producer when the consumer destroyed the stream; ends it quietly. */
class Stopped extends Error {}

interface TarOut {
  entry(h: TarHeader): Promise<void>;
  content(content: Buffer): Promise<void>;
  fileData(fd: number, size: number, real: Buffer): Promise<void>;
  trailer(): Promise<void>;
}

function readAsync(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.read(fd, buf, off, len, pos, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

/**
 * A Readable fed by an async producer that writes into 1 MiB chunks. A chunk is pushed when full; the producer
 * waits while the stream's buffer is full, and stops when the stream is destroyed.
 */
class TarStream extends Readable implements TarOut {
  readonly #produce: (out: TarOut) => Promise<void>;
  readonly #rewriter: HeaderRewriter | undefined;
  readonly #pool: BufferPool | undefined;
  readonly #format: TarFormat;
  #buf: Buffer;
  #pos = 0;
  #started = false;
  #wake: (() => void) | undefined;
  readonly #scratch = Buffer.alloc(1);

  constructor({ rewriter, pool, format }: LayerTarOptions, produce: (out: TarOut) => Promise<void>) {
    super({ highWaterMark: CHUNK });
    if (pool && pool.size !== CHUNK) throw new Error(`a tar stream's pool must hold ${CHUNK}-byte buffers`);
    this.#produce = produce;
    this.#rewriter = rewriter;
    this.#pool = pool;
    this.#format = format ?? TAR_FORMAT_LAYER;
    this.#buf = this.#chunk(CHUNK);
  }

  /** A buffer for the next chunk: the pool's when it is big enough. */
  #chunk(min: number): Buffer {
    return this.#pool && min <= CHUNK ? this.#pool.take() : Buffer.allocUnsafe(Math.max(CHUNK, min));
  }

  override _read(): void {
    if (!this.#started) {
      this.#started = true;
      void this.#run();
      return;
    }
    this.#resume();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#resume();
    cb(err);
  }

  #resume(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  async #run(): Promise<void> {
    try {
      await this.#produce(this);
      if (this.destroyed) return;
      if (this.#pos > 0) this.push(this.#buf.subarray(0, this.#pos));
      this.push(null);
    } catch (err) {
      if (!(err instanceof Stopped)) this.destroy(err as Error);
    }
  }

  /** Pushes the current chunk and starts a new one of at least `min` bytes. */
  async #flush(min = CHUNK): Promise<void> {
    if (this.destroyed) throw new Stopped();
    if (this.#pos > 0) {
      const chunk = this.#buf.subarray(0, this.#pos);
      this.#buf = this.#chunk(min);
      this.#pos = 0;
      if (!this.push(chunk)) await new Promise<void>((resolve) => (this.#wake = resolve));
      else await yieldToLoop();
      if (this.destroyed) throw new Stopped();
    } else if (this.#buf.length < min) {
      this.#pool?.give(this.#buf);
      this.#buf = this.#chunk(min);
    }
  }

  async #room(n: number): Promise<void> {
    if (this.#buf.length - this.#pos < n) await this.#flush(n);
  }

  #pad(len: number): void {
    const pad = tarPadding(len);
    this.#buf.fill(0, this.#pos, this.#pos + pad);
    this.#pos += pad;
  }

  async entry(h: TarHeader): Promise<void> {
    const bytes = encodeTarHeader(this.#rewriter ? this.#rewriter.apply(h) : h, this.#format);
    await this.#room(bytes.length);
    this.#pos += bytes.copy(this.#buf, this.#pos);
  }

  async content(content: Buffer): Promise<void> {
    let off = 0;
    while (off < content.length) {
      if (this.#pos === this.#buf.length) await this.#flush();
      const n = content.copy(this.#buf, this.#pos, off);
      this.#pos += n;
      off += n;
    }
    await this.#room(BLOCK);
    this.#pad(content.length);
  }

  async fileData(fd: number, size: number, real: Buffer): Promise<void> {
    const small = size <= SMALL_FILE;
    const grew = () => new NixociError(real.toString(), `file grew while being read (beyond ${size} bytes)`);
    let done = 0;
    // Whether a read has already come back short at the end of the file (so it did not grow).
    let atEnd = false;
    while (done < size) {
      if (this.#pos === this.#buf.length) await this.#flush();
      const space = this.#buf.length - this.#pos;
      // When the rest fits, ask for one byte more: a short read then proves the end without another call.
      const len = Math.min(size - done + 1, space);
      let n: number;
      try {
        n = small
          ? fs.readSync(fd, this.#buf, this.#pos, len, done)
          : await readAsync(fd, this.#buf, this.#pos, len, done);
      } catch (err) {
        throw fsError(real, "read the file", err);
      }
      if (this.destroyed) throw new Stopped();
      if (n === 0) {
        throw new NixociError(real.toString(), `file shrank while being read (${done} of ${size} bytes)`);
      }
      if (done + n > size) throw grew();
      atEnd = n < len && done + n === size;
      this.#pos += n;
      done += n;
    }
    if (!atEnd) {
      let extra: number;
      try {
        extra = fs.readSync(fd, this.#scratch, 0, 1, size);
      } catch (err) {
        throw fsError(real, "read the file", err);
      }
      if (extra !== 0) throw grew();
    }
    await this.#room(BLOCK);
    this.#pad(size);
  }

  async trailer(): Promise<void> {
    await this.#room(2 * BLOCK);
    this.#buf.fill(0, this.#pos, this.#pos + 2 * BLOCK);
    this.#pos += 2 * BLOCK;
  }
}
