// Nix's base-32 ("nix32"): the encoding of store path hash parts and of "sha256:..." hashes in narinfos.
// It is not RFC 4648 base32: the alphabet omits e, o, u and t (to avoid words), and the bytes are read from
// the end, so the first character holds the most significant bits of the last byte.
import { NixociError, quote } from "../util/errors.js";

const ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz";

// Character -> digit value, -1 for characters outside the alphabet.
const DIGITS = new Int8Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) DIGITS[ALPHABET.charCodeAt(i)] = i;

/** Number of nix32 characters that encode `byteLen` bytes (20 -> 32, 32 -> 52). */
export function nix32Length(byteLen: number): number {
  if (byteLen === 0) return 0;
  return Math.floor((byteLen * 8 - 1) / 5) + 1;
}

export function nix32Encode(bytes: Uint8Array): string {
  const len = nix32Length(bytes.length);
  let out = "";
  for (let n = len - 1; n >= 0; n--) {
    const b = n * 5;
    const i = b >> 3;
    const j = b & 7;
    const c = (bytes[i] >> j) | (i + 1 < bytes.length ? bytes[i + 1] << (8 - j) : 0);
    out += ALPHABET[c & 31];
  }
  return out;
}

/**
 * Decodes a nix32 string. The byte length follows from the string length; lengths that no byte count
 * produces are rejected, as are characters outside the alphabet and set bits beyond the last byte (so every
 * byte string has exactly one accepted encoding).
 */
export function nix32Decode(s: string, input = "nix32 string"): Buffer {
  const size = Math.floor((s.length * 5) / 8);
  if (nix32Length(size) !== s.length) {
    throw new NixociError(input, `invalid nix32 length ${s.length} in ${quote(s)}`);
  }
  const out = Buffer.alloc(size);
  for (let n = 0; n < s.length; n++) {
    const code = s.charCodeAt(s.length - n - 1);
    const digit = code < 128 ? DIGITS[code] : -1;
    if (digit < 0) {
      throw new NixociError(input, `invalid nix32 character ${quote(s[s.length - n - 1])} in ${quote(s)}`);
    }
    const b = n * 5;
    const i = b >> 3;
    const j = b & 7;
    out[i] |= (digit << j) & 0xff;
    const carry = digit >> (8 - j);
    if (i + 1 < size) out[i + 1] |= carry;
    else if (carry !== 0) throw new NixociError(input, `nix32 string ${quote(s)} has non-zero overflow bits`);
  }
  return out;
}

/** True if `s` consists only of nix32 characters (says nothing about its length). */
export function isNix32Chars(s: string): boolean {
  for (let k = 0; k < s.length; k++) {
    const code = s.charCodeAt(k);
    if (code >= 128 || DIGITS[code] < 0) return false;
  }
  return true;
}
