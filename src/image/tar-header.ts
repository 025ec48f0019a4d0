// The one tar header encoder: every tar nixoci writes gets its headers here, the layers (layer-tar.ts) and the
// single-file image archives (outputs/archive.ts, oci-archive and docker-archive). Both are POSIX ustar with
// mtime 1, uid/gid 0 and devmajor/devminor 0; they differ only where their readers' expectations do, which is
// what a TarFormat names:
//
// - TAR_FORMAT_LAYER (layers, `--tar-format standard`): byte for byte what Go's archive/tar writes when
//   containerd's archive package exports a layer (Format PAX): permission bits only in the mode field, no owner
//   names, a name over 100 bytes split into prefix (155) + name (100) at a "/", and a PAX extended header ('x',
//   named "<dir>/PaxHeaders.0/<base>", records path, linkpath and size only, never times) in front of an entry
//   only when it still does not fit ustar: such a name that cannot be split, a link target over 100 bytes, a name
//   or target that is not ASCII, a size of 8 GiB or more. containerd's differ (BuildKit, nerdctl, Docker's
//   containerd image store) and Docker >= 23's own (moby/moby#44083 dropped the file-type bits) write this, so
//   their layers of the same files have the same diff_ids (checked on Docker 28.5, both image stores).
// - TAR_FORMAT_LAYER_DOCKER20 (`--tar-format docker20`): the same with the S_IF* file-type bits in the mode field
//   (Go 1.8's FileInfoHeader, kept by dockerd up to 22) and uname/gname "root" for id 0: the diff_ids of dockerd
//   20.10 and its BuildKit v0.8. A layer's bytes are its diff_id, so any change to either format is a change of
//   layer-tar.ts's TAR_FORMAT_VERSION.
// - TAR_FORMAT_USTAR (archives): plain ustar as `docker save`-style readers (docker/podman load, skopeo) take it:
//   permission bits only in the mode field, no owner names, names and link targets written as they are and
//   refused over 100 bytes (archive member names are short and fixed), sizes from 8 GiB in the base-256 form GNU
//   tar and Go read.
//
// Kept hand-written on purpose: no tar library promises Go's exact bytes (PAX header names, record order, when
// PAX is used at all), and the layers' digests depend on them.

export const TAR_BLOCK = 512;
/** The mtime of every entry: 1970-01-01T00:00:01Z (as nixpkgs and nix2container write). */
export const TAR_MTIME = 1;
export const TAR_FILE = 0x30; // '0'
export const TAR_SYMLINK = 0x32; // '2'
export const TAR_DIR = 0x35; // '5'
const PAX = 0x78; // 'x'
const MAX_OCTAL_SIZE = 8 ** 11 - 1;
const OWNER_NAME = "root";
const EMPTY = Buffer.alloc(0);

/** One entry's header fields (the rest are fixed: mtime TAR_MTIME, devmajor/devminor 0). */
export interface TarHeader {
  /** The full name (directories end in "/"). */
  name: Buffer;
  /** TAR_FILE, TAR_SYMLINK or TAR_DIR. */
  type: number;
  /** Permission bits (with setuid/setgid/sticky). */
  mode: number;
  size?: number;
  linkname?: Buffer;
  uid?: number;
  gid?: number;
}

/** Where the tars nixoci writes differ (see the top of this file). */
export interface TarFormat {
  /** The mode field carries the S_IF* file-type bits (Go's FileInfoHeader). */
  modeTypeBits: boolean;
  /** uname/gname written for uid/gid 0 ("": none). */
  rootName: string;
  /**
   * What does not fit a ustar header: "pax" for Go's Format PAX (prefix split, else a PAX extended header);
   * "ustar" for names and link targets that must fit 100 bytes as they are, and base-256 sizes.
   */
  overflow: "pax" | "ustar";
}

/** Layers: Go's archive/tar, Format PAX, as containerd and Docker >= 23 export them. */
export const TAR_FORMAT_LAYER: TarFormat = { modeTypeBits: false, rootName: "", overflow: "pax" };
/** Layers as dockerd 20.10 (and up to 22) exports them: file-type bits in the mode, owner names "root". */
export const TAR_FORMAT_LAYER_DOCKER20: TarFormat = {
  modeTypeBits: true,
  rootName: OWNER_NAME,
  overflow: "pax",
};

/** The layer formats by their `--tar-format` names. */
export const LAYER_TAR_FORMATS = { standard: TAR_FORMAT_LAYER, docker20: TAR_FORMAT_LAYER_DOCKER20 } as const;
export type LayerTarFormatName = keyof typeof LAYER_TAR_FORMATS;

export function isLayerTarFormatName(name: string): name is LayerTarFormatName {
  return Object.hasOwn(LAYER_TAR_FORMATS, name);
}
/** Image archives: plain ustar. */
export const TAR_FORMAT_USTAR: TarFormat = { modeTypeBits: false, rootName: "", overflow: "ustar" };

/** Zero bytes after `size` bytes of content, up to the next block. */
export function tarPadding(size: number): number {
  return (TAR_BLOCK - (size % TAR_BLOCK)) % TAR_BLOCK;
}

/**
 * The bytes of an entry's header (a multiple of 512). For the layer formats exactly as Go's archive/tar encodes
 * it: a plain ustar header (name split into prefix + name when longer than 100) whenever the entry fits one;
 * otherwise a PAX header with the records ustar cannot hold, sorted by key (path for a name over 100 bytes or not
 * ASCII, linkpath likewise, size from 8 GiB), then a ustar header with the name and link target in ASCII cut to
 * 100 bytes and no prefix. For TAR_FORMAT_USTAR always one block.
 */
export function encodeTarHeader(h: TarHeader, format: TarFormat): Buffer {
  const size = h.size ?? 0;
  const linkname = h.linkname ?? EMPTY;
  const uid = h.uid ?? 0;
  const gid = h.gid ?? 0;
  if (format.overflow === "ustar") {
    if (h.name.length > 100) throw new Error(`tar member name too long: ${h.name.toString()}`);
    if (linkname.length > 100) throw new Error(`tar member link target too long: ${linkname.toString()}`);
    const buf = Buffer.alloc(TAR_BLOCK);
    const fields = { name: h.name, prefix: EMPTY, type: h.type, mode: h.mode, size, linkname };
    writeUstar(buf, 0, fields, uid, gid, format);
    return buf;
  }
  const split = isAscii(h.name) ? splitName(h.name) : undefined;
  const linkFits = linkname.length <= 100 && isAscii(linkname);
  const sizeFits = size <= MAX_OCTAL_SIZE;
  if (split && linkFits && sizeFits) {
    const buf = Buffer.alloc(TAR_BLOCK);
    const fields = { name: split.name, prefix: split.prefix, type: h.type, mode: h.mode, size, linkname };
    writeUstar(buf, 0, fields, uid, gid, format);
    return buf;
  }
  const records: Buffer[] = []; // in key order: linkpath, path, size
  if (!linkFits) records.push(paxRecord("linkpath", linkname));
  if (h.name.length > 100 || !isAscii(h.name)) records.push(paxRecord("path", h.name));
  if (!sizeFits) records.push(paxRecord("size", Buffer.from(String(size))));
  const pax = Buffer.concat(records);
  const paxBlocks = pax.length + tarPadding(pax.length);
  const buf = Buffer.alloc(TAR_BLOCK + paxBlocks + TAR_BLOCK);
  writePaxHeader(buf, 0, paxHeaderName(h.name), pax.length);
  pax.copy(buf, TAR_BLOCK);
  const ustar = {
    name: toAscii(h.name).subarray(0, 100),
    prefix: EMPTY,
    type: h.type,
    mode: h.mode,
    size: sizeFits ? size : 0,
    linkname: toAscii(linkname).subarray(0, 100),
  };
  writeUstar(buf, TAR_BLOCK + paxBlocks, ustar, uid, gid, format);
  return buf;
}

/** ASCII as Go's archive/tar sees it: no byte >= 0x80 and no NUL (control characters are ASCII). */
function isAscii(b: Buffer): boolean {
  for (let i = 0; i < b.length; i++) if (b[i] >= 0x80 || b[i] === 0) return false;
  return true;
}

/** Go's toASCII: the bytes that are ASCII (multi-byte UTF-8 sequences and invalid bytes are dropped). */
function toAscii(b: Buffer): Buffer {
  return isAscii(b) ? b : Buffer.from(b.filter((c) => c < 0x80 && c !== 0));
}

/** Splits a name into ustar prefix (<= 155) and name (<= 100) at a "/", or undefined when impossible. */
function splitName(name: Buffer): { prefix: Buffer; name: Buffer } | undefined {
  if (name.length <= 100) return { prefix: EMPTY, name };
  // The name part must not be empty: do not split at a directory's trailing "/".
  for (let i = Math.min(155, name.length - 2); i > 0; i--) {
    if (name[i] !== 0x2f) continue;
    if (name.length - i - 1 > 100) return undefined; // smaller i only makes the name part longer
    return { prefix: name.subarray(0, i), name: name.subarray(i + 1) };
  }
  return undefined;
}

function paxRecord(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`), value, Buffer.from("\n")]);
  let len = body.length + 1;
  while (String(len).length + body.length !== len) len = String(len).length + body.length;
  return Buffer.concat([Buffer.from(String(len)), body]);
}

function writeOctal(buf: Buffer, off: number, width: number, value: number): void {
  buf.write(value.toString(8).padStart(width - 1, "0"), off, width - 1, "latin1");
  buf[off + width - 1] = 0;
}

/** The size field from 8 GiB: base-256, a 0x80 marker then the value big-endian (GNU tar and Go read it). */
function writeBase256(buf: Buffer, off: number, width: number, value: number): void {
  buf[off] = 0x80;
  let v = BigInt(value);
  for (let i = off + width - 1; i > off; i--) {
    buf[i] = Number(v & 0xffn);
    v >>= 8n;
  }
}

/** The file-type bits Go's FileInfoHeader (as docker's archive package fills them) puts in the mode field. */
const TYPE_BITS: Record<number, number> = {
  [TAR_FILE]: 0o100000,
  [TAR_SYMLINK]: 0o120000,
  [TAR_DIR]: 0o040000,
};

function checksum(buf: Buffer, off: number): void {
  buf.fill(0x20, off + 148, off + 156); // spaces while summing
  let sum = 0;
  for (let i = off; i < off + TAR_BLOCK; i++) sum += buf[i];
  buf.write(sum.toString(8).padStart(6, "0") + "\0 ", off + 148, 8, "latin1");
}

/** Writes one 512-byte ustar header at `off` (the caller has zeroed it). */
function writeUstar(
  buf: Buffer,
  off: number,
  h: { name: Buffer; prefix: Buffer; type: number; mode: number; size: number; linkname: Buffer },
  uid: number,
  gid: number,
  format: TarFormat,
): void {
  h.name.copy(buf, off, 0, 100);
  writeOctal(buf, off + 100, 8, h.mode | (format.modeTypeBits ? (TYPE_BITS[h.type] ?? 0) : 0));
  writeOctal(buf, off + 108, 8, uid);
  writeOctal(buf, off + 116, 8, gid);
  if (h.size <= MAX_OCTAL_SIZE) writeOctal(buf, off + 124, 12, h.size);
  else writeBase256(buf, off + 124, 12, h.size);
  writeOctal(buf, off + 136, 12, TAR_MTIME);
  buf[off + 156] = h.type;
  h.linkname.copy(buf, off + 157, 0, 100);
  buf.write("ustar\x0000", off + 257, 8, "latin1");
  buf.write(uid === 0 ? format.rootName : "", off + 265, 32, "latin1");
  buf.write(gid === 0 ? format.rootName : "", off + 297, 32, "latin1");
  writeOctal(buf, off + 329, 8, 0);
  writeOctal(buf, off + 337, 8, 0);
  h.prefix.copy(buf, off + 345);
  checksum(buf, off);
}

/**
 * The name of the PAX extended header Go's archive/tar writes for `name`: "<dir>/PaxHeaders.0/<base>" (path.Join
 * of path.Split's parts, so a directory's is "<dir>/PaxHeaders.0"), in ASCII, cut to 100 bytes, no trailing "/".
 */
function paxHeaderName(name: Buffer): Buffer {
  let end = name.length;
  while (end > 0 && name[end - 1] === 0x2f) end--;
  const trimmed = name.subarray(0, end);
  const slash = trimmed.lastIndexOf(0x2f);
  const file = name[name.length - 1] === 0x2f ? EMPTY : trimmed.subarray(slash + 1);
  const dir = name[name.length - 1] === 0x2f ? trimmed : slash >= 0 ? trimmed.subarray(0, slash) : EMPTY;
  const parts = [dir, Buffer.from("PaxHeaders.0"), file].filter((p) => p.length);
  let out = toAscii(Buffer.from(parts.map((p) => p.toString("latin1")).join("/"), "latin1")).subarray(0, 100);
  while (out.length && out[out.length - 1] === 0x2f) out = out.subarray(0, -1);
  return out;
}

/** A PAX extended header block as Go writes it: mode, uid, gid and mtime 0, no owner names or device fields. */
function writePaxHeader(buf: Buffer, off: number, name: Buffer, size: number): void {
  name.copy(buf, off, 0, 100);
  writeOctal(buf, off + 100, 8, 0);
  writeOctal(buf, off + 108, 8, 0);
  writeOctal(buf, off + 116, 8, 0);
  writeOctal(buf, off + 124, 12, size);
  writeOctal(buf, off + 136, 12, 0);
  buf[off + 156] = PAX;
  buf.write("ustar\x0000", off + 257, 8, "latin1");
  checksum(buf, off);
}
