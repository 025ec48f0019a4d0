// File names and symlink targets as JavaScript strings that keep every byte. Nix treats them as bytes: a store path
// may hold a file whose name is not valid UTF-8 (Latin-1 test data, for one), `nix-store --dump` writes it as it
// is, and an image's links to it must name it exactly. Names are decoded as UTF-8; each byte that is not part of a
// valid UTF-8 sequence becomes the lone surrogate U+DC80 + (byte - 0x80), as Python's "surrogateescape" does.
// Valid UTF-8 never decodes to a lone surrogate, so the mapping is one-to-one and fileNameBytes gives the bytes
// back exactly; names that are valid UTF-8 (all but a few) are plain strings, as before. Node's fs writes a string
// path as UTF-8 (an escape would become U+FFFD): fsPath gives the bytes for such a path.
import { readdirSync } from "node:fs";
import { readdir } from "node:fs/promises";

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
/** A lone escape: U+DC80-U+DCFF not after a high surrogate (a pair's low half is a character's, not a byte's). */
const ESCAPE = /(?<![\ud800-\udbff])[\udc80-\udcff]/;

/** The bytes of a name or target as a string: UTF-8, other bytes escaped (see above). */
export function decodeFileName(bytes: Uint8Array): string {
  try {
    return utf8.decode(bytes);
  } catch {
    return decodeEscaping(bytes);
  }
}

/** Whether `s` has escaped bytes (so only its bytes, from fileNameBytes, name the file). */
export function hasEscapedBytes(s: string): boolean {
  return ESCAPE.test(s);
}

/** The bytes that decodeFileName made `s` of. */
export function fileNameBytes(s: string): Buffer {
  if (!hasEscapedBytes(s)) return Buffer.from(s, "utf8");
  return Buffer.concat(
    escapeRuns(s).map((p) => (typeof p === "string" ? Buffer.from(p, "utf8") : Buffer.of(p))),
  );
}

/** `s` cut into its runs of text (strings, maybe empty) and its escaped bytes (the byte's value), in order. */
export function escapeRuns(s: string): (string | number)[] {
  const parts: (string | number)[] = [];
  let run = 0; // start of the current run of characters without escapes
  for (let i = 0; i < s.length; i++) {
    if (isEscapeAt(s, i)) {
      parts.push(s.slice(run, i), s.charCodeAt(i) - 0xdc00);
      run = i + 1;
    }
  }
  parts.push(s.slice(run));
  return parts;
}

/** A path for Node's fs: `path` itself when it is plain text, its bytes when it has escapes. */
export function fsPath(path: string): string | Buffer {
  return hasEscapedBytes(path) ? fileNameBytes(path) : path;
}

/** fsPath of `base` joined with `names`. */
export function joinFilePath(base: string, names: readonly string[]): string | Buffer {
  return fsPath(names.length === 0 ? base : `${base}/${names.join("/")}`);
}

/** The names in directory `dir` (a path as fsPath takes it), each byte kept (decodeFileName). */
export function readdirNames(dir: string): string[] {
  return readdirSync(fsPath(dir), { encoding: "buffer" }).map(decodeFileName);
}

/** readdirNames through the thread pool. */
export async function readdirNamesAsync(dir: string): Promise<string[]> {
  return (await readdir(fsPath(dir), { encoding: "buffer" })).map(decodeFileName);
}

/** Whether s[i] is an escaped byte (see above). */
function isEscapeAt(s: string, i: number): boolean {
  const c = s.charCodeAt(i);
  if (c < 0xdc80 || c > 0xdcff) return false;
  if (i === 0) return true;
  const before = s.charCodeAt(i - 1);
  return before < 0xd800 || before > 0xdbff;
}

/** The length of the valid UTF-8 sequence at bytes[i] (Unicode's table 3-7), or 0 when there is none. */
function sequenceLength(bytes: Uint8Array, i: number): number {
  const b0 = bytes[i];
  if (b0 < 0x80) return 1;
  const cont = (k: number, lo = 0x80, hi = 0xbf) =>
    i + k < bytes.length && bytes[i + k] >= lo && bytes[i + k] <= hi;
  if (b0 >= 0xc2 && b0 <= 0xdf) return cont(1) ? 2 : 0;
  if (b0 >= 0xe0 && b0 <= 0xef) {
    const [lo, hi] = b0 === 0xe0 ? [0xa0, 0xbf] : b0 === 0xed ? [0x80, 0x9f] : [0x80, 0xbf];
    return cont(1, lo, hi) && cont(2) ? 3 : 0;
  }
  if (b0 >= 0xf0 && b0 <= 0xf4) {
    const [lo, hi] = b0 === 0xf0 ? [0x90, 0xbf] : b0 === 0xf4 ? [0x80, 0x8f] : [0x80, 0xbf];
    return cont(1, lo, hi) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

function decodeEscaping(bytes: Uint8Array): string {
  let out = "";
  let run = 0; // start of the current run of valid sequences
  let i = 0;
  while (i < bytes.length) {
    const n = sequenceLength(bytes, i);
    if (n > 0) {
      i += n;
      continue;
    }
    out += utf8.decode(bytes.subarray(run, i)) + String.fromCharCode(0xdc00 + bytes[i]);
    i += 1;
    run = i;
  }
  return out + utf8.decode(bytes.subarray(run));
}
