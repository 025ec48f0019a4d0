// NAR strings, as the NAR writer emits them and the flat-content check (store/flat-content-check.ts) expects them:
// a u64 little-endian length, the bytes, zero padding to a multiple of 8.

/** `n` rounded up to a multiple of 8 (a NAR string's bytes with their padding). */
export function padded(n: number): number {
  return n + ((8 - (n % 8)) % 8);
}

/** Encodes `s` as a NAR string. */
export function narString(s: string | Buffer): Buffer {
  const bytes = typeof s === "string" ? Buffer.from(s, "utf8") : s;
  const out = Buffer.alloc(8 + padded(bytes.length));
  out.writeUInt32LE(bytes.length % 0x100000000, 0);
  out.writeUInt32LE(Math.floor(bytes.length / 0x100000000), 4);
  bytes.copy(out, 8);
  return out;
}

/** Several NAR strings in a row (a run of tags). */
export function narStrings(...ss: string[]): Buffer {
  return Buffer.concat(ss.map((s) => narString(s)));
}
