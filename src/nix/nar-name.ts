// Entry names and symlink targets read from a NAR, as JavaScript strings that keep every byte. Nix treats them as
// bytes: a store path may hold a file whose name is not valid UTF-8 (Latin-1 test data, for one), and
// `nix-store --dump` writes it as it is. A NAR's names are decoded as UTF-8; each byte that is not part of a valid
// UTF-8 sequence becomes the lone surrogate U+DC80 + (byte - 0x80), as Python's "surrogateescape" does. Valid
// UTF-8 never decodes to a lone surrogate, so the mapping is one-to-one and narNameBytes gives the bytes back
// exactly; names that are valid UTF-8 (all but a few) are plain strings, as before.

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
/** A lone escape: U+DC80-U+DCFF not after a high surrogate (a pair's low half is a character's, not a byte's). */
const ESCAPE = /(?<![\ud800-\udbff])[\udc80-\udcff]/;

/** The bytes of a name or target as a string: UTF-8, other bytes escaped (see above). */
export function decodeNarName(bytes: Uint8Array): string {
  try {
    return utf8.decode(bytes);
  } catch {
    return decodeEscaping(bytes);
  }
}

/** Whether `s` has escaped bytes (so only its bytes, from narNameBytes, name the file). */
export function hasEscapedBytes(s: string): boolean {
  return ESCAPE.test(s);
}

/** The bytes that decodeNarName made `s` of. */
export function narNameBytes(s: string): Buffer {
  if (!hasEscapedBytes(s)) return Buffer.from(s, "utf8");
  const parts: Buffer[] = [];
  let run = 0; // start of the current run of characters without escapes
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (isEscapeAt(s, i)) {
      parts.push(Buffer.from(s.slice(run, i), "utf8"), Buffer.of(c - 0xdc00));
      run = i + 1;
    }
  }
  parts.push(Buffer.from(s.slice(run), "utf8"));
  return Buffer.concat(parts);
}

/**
 * A filesystem path for `base` joined with `names`: a string when every name is plain text, the bytes otherwise
 * (Node's fs takes both; a string would be written as UTF-8 with each escape replaced).
 */
export function narFsPath(base: string, names: readonly string[]): string | Buffer {
  const joined = names.length === 0 ? base : `${base}/${names.join("/")}`;
  return hasEscapedBytes(joined) ? narNameBytes(joined) : joined;
}

/** Whether s[i] is an escaped byte (see above). */
export function isEscapeAt(s: string, i: number): boolean {
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
