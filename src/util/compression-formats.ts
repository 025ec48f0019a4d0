// Compression names (as Nix spells them), levels and the compressors' arguments: the vocabulary of
// compression.ts's streams, in a module of its own so that code that only names or checks a compression (layer
// encoders, a cached rebuild) does not load the streams, the tool launcher and the in-process zstd decoder.
import { NixociError } from "./errors.js";

export type Compression = "none" | "xz" | "zstd" | "bzip2" | "br" | "gzip";

export const COMPRESSIONS: readonly Compression[] = ["none", "xz", "zstd", "bzip2", "br", "gzip"];

/**
 * A compression name as Nix spells it (narinfo `Compression:`, `?compression=` store parameter). Rejects
 * anything else, including the empty string (a narinfo without Compression means bzip2: that rule is the
 * narinfo parser's) and names Nix knows but we do not read (lz4, lzip, compress...).
 */
export function parseCompression(s: string, input = "compression"): Compression {
  if ((COMPRESSIONS as readonly string[]).includes(s)) return s as Compression;
  const known = COMPRESSIONS.join(", ");
  if (s === "") throw new NixociError(input, `compression method is empty (expected one of ${known})`);
  throw new NixociError(
    input,
    `unsupported compression method ${JSON.stringify(s)} (expected one of ${known})`,
  );
}

/**
 * What a layer blob is compressed with, told by its first bytes (gzip's 1f 8b, zstd's frame magic) rather than by
 * a media type, which Docker's and other tools' images do not always get right; anything else is taken as plain.
 */
export function sniffLayerCompression(head: Buffer): "gzip" | "zstd" | "none" {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return "gzip";
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return "zstd";
  return "none";
}

/**
 * The suffix of NAR file names after ".nar": "", ".xz", ".zst", ".bz2", ".br", ".gz".
 * (Nix 2.8 itself names gzip-compressed NARs plain ".nar"; readers must follow the narinfo's Compression.)
 */
export function compressionExtension(c: Compression): string {
  switch (c) {
    case "none":
      return "";
    case "xz":
      return ".xz";
    case "zstd":
      return ".zst";
    case "bzip2":
      return ".bz2";
    case "br":
      return ".br";
    case "gzip":
      return ".gz";
  }
}

/** A scale of levels: each compression's, and "isal", gzip through ISA-L's igzip (0-3). */
export type LevelScale = Exclude<Compression, "none"> | "isal";

/** Default and allowed levels. br's default 11 is brotli's (and Nix's) own default: strong but slow. */
const LEVELS: Record<LevelScale, { min: number; max: number; def: number }> = {
  xz: { min: 0, max: 9, def: 6 },
  zstd: { min: 1, max: 22, def: 3 },
  bzip2: { min: 1, max: 9, def: 9 },
  br: { min: 0, max: 11, def: 11 },
  gzip: { min: 0, max: 9, def: 6 },
  isal: { min: 0, max: 3, def: 3 },
};

/** What is wrong with `level` on `scale` ("7 is out of range for ISA-L gzip (0..3)"), or undefined. */
export function levelProblem(scale: LevelScale, level: number): string | undefined {
  const { min, max } = LEVELS[scale];
  if (Number.isInteger(level) && level >= min && level <= max) return undefined;
  return `${level} is out of range for ${scale === "isal" ? "ISA-L gzip" : scale} (${min}..${max})`;
}

/** Throws levelProblem's error for a level off its scale. */
export function checkLevel(scale: LevelScale, level: number): void {
  const problem = levelProblem(scale, level);
  if (problem) throw new NixociError("compression level", problem);
}

/** The level compressStream uses for `c` when none is given (the tools' own defaults). */
export function defaultLevel(c: Exclude<Compression, "none">): number {
  return LEVELS[c].def;
}

/**
 * igzip's arguments for a level 0-3 (default 3; anything else throws) besides where the output goes: `-n` writes
 * neither a name nor a time. Every igzip run that makes layers uses them, so they all make the same bytes.
 */
export function igzipArgs(level = LEVELS.isal.def): string[] {
  checkLevel("isal", level);
  return ["-n", `-${level}`];
}

/**
 * zstd's compression arguments for a level (default 3; out of 1-22 throws) besides where the output goes: -T0 is
 * its multi-threaded mode, whose output does not depend on the number of workers. Every zstd run that makes layers
 * uses them, so they all make the same bytes.
 */
export function zstdArgs(level = LEVELS.zstd.def): string[] {
  checkLevel("zstd", level);
  return ["--compress", "-q", `-${level}`, "-T0", ...(level > 19 ? ["--ultra"] : [])];
}
