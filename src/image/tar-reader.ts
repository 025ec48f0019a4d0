// The one tar reader: walks a tar byte stream header by header and yields each member's name, type, size and
// where its data starts, skipping the data itself (chunk by chunk, never held). It reads what image tools write:
// ustar (name + prefix), GNU (long names in 'L'/'K' members, base-256 sizes) and PAX extended headers (path,
// linkpath, size). Image archives (oci-archive, docker-archive) are indexed with it, then their members are read
// by offset; layers are scanned with it for their top-level store paths, and the snapshotter extracts the store
// layers it fetches with it, reading each member's data (TarMember.data). Every header is checksummed, so a file
// that is not a tar fails at its first block with one line, not with garbage entries. Names and link targets keep
// their bytes (util/file-names.ts): a store path's file names need not be UTF-8, and Go's archive/tar writes them as
// they are.
import { NixociError } from "../util/errors.js";
import { decodeFileName } from "../util/file-names.js";
import { TAR_BLOCK, tarPadding } from "./tar-header.js";

export interface TarMember {
  /** The member's path as the archive spells it (PAX path or GNU long name applied; "./" not stripped). */
  name: string;
  /** The type flag: "0" file, "1" hard link, "2" symlink, "5" directory, ... */
  type: string;
  /** Bytes of data (0 for the types that carry none). */
  size: number;
  linkname: string;
  /** Permission bits (with setuid, setgid, sticky), owner and modification time (seconds) from the header. */
  mode: number;
  uid: number;
  gid: number;
  mtime: number;
  /** Where the data starts in the stream (a byte offset, for reading the member out of a file later). */
  dataOffset: number;
  /**
   * The member's data, in the stream's chunks: to be read before the next member is asked for (what is left
   * unread is skipped then). Once only.
   */
  data(): AsyncIterable<Buffer>;
}

/** Extended header records and long names are small; anything bigger is not a sane archive. */
const MAX_EXTENDED = 1 << 20;
/** Types whose size field is not followed by data (Go's archive/tar: isHeaderOnlyType). */
const HEADER_ONLY = new Set(["1", "2", "3", "4", "5", "6"]);

/** Pulls exact byte counts out of a chunk stream, keeping at most one partial chunk. */
class ByteReader {
  private buf: Buffer = Buffer.alloc(0);
  private done = false;
  offset = 0;

  constructor(private readonly it: AsyncIterator<Buffer | string>) {}

  private async more(): Promise<boolean> {
    if (this.done) return false;
    const r = await this.it.next();
    if (r.done) {
      this.done = true;
      return false;
    }
    const chunk = typeof r.value === "string" ? Buffer.from(r.value) : r.value;
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    return true;
  }

  /** Up to n bytes (fewer only at the end of the stream). */
  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n && (await this.more()));
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(out.length);
    this.offset += out.length;
    return out;
  }

  /** Between 1 and n bytes (none only at the end of the stream): the rest of the current chunk, or the next one. */
  async readSome(n: number): Promise<Buffer> {
    if (this.buf.length === 0) await this.more();
    const out = this.buf.subarray(0, Math.min(n, this.buf.length));
    this.buf = this.buf.subarray(out.length);
    this.offset += out.length;
    return out;
  }

  /** Discards n bytes; false when the stream ends first. */
  async skip(n: number): Promise<boolean> {
    while (n > 0) {
      if (this.buf.length === 0 && !(await this.more())) return false;
      const k = Math.min(n, this.buf.length);
      this.buf = this.buf.subarray(k);
      this.offset += k;
      n -= k;
    }
    return true;
  }
}

function cString(b: Buffer): string {
  const nul = b.indexOf(0);
  return decodeFileName(nul < 0 ? b : b.subarray(0, nul));
}

function octal(field: Buffer): number {
  const nul = field.indexOf(0);
  const s = (nul < 0 ? field : field.subarray(0, nul)).toString("latin1").trim(); // digits: no name decoding
  if (s === "") return 0;
  if (!/^[0-7]+$/.test(s)) return NaN;
  return parseInt(s, 8);
}

/** A numeric field: octal, or GNU's base-256 (high bit of the first byte set). */
function numeric(field: Buffer): number {
  if (field[0] & 0x80) {
    if (field[0] & 0x40) return NaN; // negative
    let n = field[0] & 0x3f;
    for (let i = 1; i < field.length; i++) n = n * 256 + field[i];
    return n;
  }
  return octal(field);
}

function checksumOk(h: Buffer): boolean {
  const want = octal(h.subarray(148, 156));
  let sum = 0;
  for (let i = 0; i < TAR_BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i];
  return sum === want;
}

/** PAX records "LEN key=value\n" → key → value. */
function paxRecords(b: Buffer, where: () => string): Map<string, string> {
  const out = new Map<string, string>();
  let i = 0;
  while (i < b.length) {
    const space = b.indexOf(0x20, i);
    const len = space < 0 ? NaN : Number(b.subarray(i, space).toString("latin1"));
    if (!Number.isSafeInteger(len) || len <= space - i || i + len > b.length)
      throw new Error(`malformed PAX record ${where()}`);
    const rec = decodeFileName(b.subarray(space + 1, i + len - 1));
    const eq = rec.indexOf("=");
    if (eq < 0) throw new Error(`malformed PAX record ${where()}`);
    out.set(rec.slice(0, eq), rec.slice(eq + 1));
    i += len;
  }
  return out;
}

/**
 * The members of the tar in `source`, in archive order. The data of each member is skipped once the consumer
 * asks for the next one. `input` names the archive in errors ("LAYER: not a tar archive (...)").
 */
export async function* readTarMembers(
  source: AsyncIterable<Buffer | string>,
  input: string,
): AsyncGenerator<TarMember> {
  const r = new ByteReader(source[Symbol.asyncIterator]());
  const fail = (problem: string): never => {
    throw new NixociError(input, problem);
  };
  let longName: string | undefined;
  let longLink: string | undefined;
  let pax = new Map<string, string>();
  let first = true;
  for (;;) {
    const at = r.offset;
    const h = await r.read(TAR_BLOCK);
    if (h.length === 0) {
      if (first) return; // an empty stream: an empty layer some tools write
      return fail(`truncated tar archive: no end-of-archive marker after byte ${at}`);
    }
    if (h.length < TAR_BLOCK) return fail(`truncated tar archive: partial header at byte ${at}`);
    if (h.every((x) => x === 0)) return; // end-of-archive (the second zero block, if any, is padding)
    if (!checksumOk(h))
      return fail(
        first
          ? "not a tar archive (the first header's checksum is wrong)"
          : `corrupt tar archive: bad header checksum at byte ${at}`,
      );
    first = false;
    const type = h[156] === 0 ? "0" : String.fromCharCode(h[156]);
    let size = numeric(h.subarray(124, 136));
    if (!Number.isSafeInteger(size)) return fail(`corrupt tar archive: bad size field at byte ${at}`);
    const magic = h.subarray(257, 263).toString("latin1");
    if (type === "x" || type === "g" || type === "L" || type === "K") {
      if (size > MAX_EXTENDED)
        return fail(`corrupt tar archive: a ${size}-byte extended header at byte ${at}`);
      const body = await r.read(size);
      if (body.length < size || !(await r.skip(tarPadding(size))))
        return fail(`truncated tar archive: extended header at byte ${at}`);
      try {
        if (type === "x") pax = paxRecords(body, () => `at byte ${at}`);
        else if (type === "L") longName = cString(body);
        else if (type === "K") longLink = cString(body);
        // "g" (global records) carry nothing a reader of names needs.
      } catch (err) {
        return fail(`corrupt tar archive: ${(err as Error).message}`);
      }
      continue;
    }
    let name = cString(h.subarray(0, 100));
    if (magic === "ustar\0") {
      const prefix = cString(h.subarray(345, 500));
      if (prefix) name = `${prefix}/${name}`;
    }
    let linkname = cString(h.subarray(157, 257));
    if (longName !== undefined) name = longName;
    if (longLink !== undefined) linkname = longLink;
    if (pax.has("path")) name = pax.get("path")!;
    if (pax.has("linkpath")) linkname = pax.get("linkpath")!;
    if (pax.has("size")) {
      size = Number(pax.get("size"));
      if (!Number.isSafeInteger(size) || size < 0)
        return fail(`corrupt tar archive: bad PAX size at byte ${at}`);
    }
    longName = longLink = undefined;
    pax = new Map();
    const dataSize = HEADER_ONLY.has(type) ? 0 : size;
    const [mode, uid, gid, mtime] = [
      [100, 108],
      [108, 116],
      [116, 124],
      [136, 148],
    ].map(([a, b]) => numeric(h.subarray(a, b)));
    if (![mode, uid, gid, mtime].every(Number.isSafeInteger))
      return fail(`corrupt tar archive: bad mode, owner or time field at byte ${at}`);
    let read = 0;
    let reading = false;
    const truncated = () => fail(`truncated tar archive: the data of ${JSON.stringify(name)} ends early`);
    async function* data(): AsyncGenerator<Buffer> {
      if (reading) throw new Error(`the data of tar member ${JSON.stringify(name)} is read twice`);
      reading = true;
      while (read < dataSize) {
        const chunk = await r.readSome(dataSize - read);
        if (!chunk.length) return truncated();
        read += chunk.length;
        yield chunk;
      }
    }
    yield {
      name,
      type,
      size: dataSize,
      linkname,
      mode: mode & 0o7777,
      uid,
      gid,
      mtime,
      dataOffset: r.offset,
      data,
    };
    if (!(await r.skip(dataSize - read + tarPadding(dataSize)))) return truncated();
  }
}
