// Which encoder compresses a layer, and how that is named in the layer's cache identity.
//
// gzip has two encoders: zlib (in-process, Node's own; level 6 is what docker and GNU gzip write) and ISA-L's
// igzip (a tool, Debian's `isal`), 5-10x faster per core for output ~4% larger than zlib -6 at its level 1.
// `--gzip-encoder`:
//   - zlib: every layer through zlib at --compression-level (default 6): the bytes nixoci always wrote;
//   - isal: every layer through igzip at --compression-level (0-3, default DEFAULT_ISAL_LEVEL); an error when
//     it is missing;
//   - auto (default): igzip for layers of at least ISAL_MIN_NAR_SIZE of NAR when it is installed and no
//     --compression-level was given, zlib -6 otherwise (a few KiB through zlib cost less than the round trip to
//     igzip). igzip layers go through long-lived igzip processes that compress one layer after the other
//     (util/compressor-batch.ts), the same bytes as an igzip per layer. A large layer is one igzip too: igzip -1
//     compresses 680 MB/s on one core (the benchmark closure's tar; -3: 275 MB/s), faster than the build makes
//     and hashes a layer's tar (~300 MB/s), so the tar is the bottleneck and the compressor runs beside it on the
//     other core. Cutting a large layer into gzip members compressed by several igzips at once (as nixoci did up
//     to this version) was slower — 200 MB of random data: 2.1 s and 230 MB peak RSS against 0.9 s and 70 MB;
//     at -3 2.5 s against 1.3 s — because every member's output then went through this process.
// The choice depends only on the layer's inputs (NAR sizes are part of each path's identity) and the installed
// encoder, so the same inputs with the same nixoci and encoder versions give the same bytes. The identity names
// the encoder with its version (zlib's from Node, igzip's from the tool): blobs of different encoders never mix
// in a cache.
import type { LayerCompression } from "../oci/media-types.js";
import { checkLevel, levelProblem } from "../util/compression-formats.js";
import { NixociError } from "../util/errors.js";
import { findIsal, findZstd } from "../util/tool-versions.js";

export const GZIP_ENCODERS = ["auto", "isal", "zlib"] as const;
export type GzipEncoderSetting = (typeof GZIP_ENCODERS)[number];

export function isGzipEncoderSetting(s: string): s is GzipEncoderSetting {
  return (GZIP_ENCODERS as readonly string[]).includes(s);
}

/** Layers with at least this much NAR go through igzip under `auto`. */
export const ISAL_MIN_NAR_SIZE = 256 * 1024;
/** zlib's default level, docker's and GNU gzip's. */
export const DEFAULT_GZIP_LEVEL = 6;
/**
 * igzip's default level here: on the benchmark closure its output is 4% larger than zlib -6's and 0.15% larger
 * than igzip -3's, for half of -3's time.
 */
export const DEFAULT_ISAL_LEVEL = 1;

/** How one layer is compressed. */
export interface LayerEncoder {
  compression: LayerCompression;
  /** The codec's level (undefined: the codec's default; "none" has none). */
  level?: number;
  /** gzip through ISA-L: the igzip executable. */
  igzip?: string;
  /** zstd: the zstd executable. */
  zstd?: string;
  /** The encoder and its version, for the layer's identity ("zlib-1.3.0.1-motley", "isal-2.30.0", "zstd-1.5.4"). */
  name: string;
}

export interface EncoderOptions {
  compression: LayerCompression;
  /** An explicit --compression-level. */
  level?: number;
  /** gzip only; default auto. */
  gzipEncoder?: GzipEncoderSetting;
  /** Where igzip's version is memoized (the layer cache directory). */
  cacheDir?: string;
}

/** The encoder for a layer of `narSize` bytes of NAR, decided once per build for its settings. */
export async function layerEncoders(opts: EncoderOptions): Promise<(narSize: number) => LayerEncoder> {
  const { compression, level } = opts;
  if (compression === "zstd") {
    // zstd's bytes depend on its version as much as igzip's do. Without zstd, the name stays bare: the build
    // then fails at its first layer with the package named.
    const tool = await findZstd(opts.cacheDir);
    const encoder: LayerEncoder = {
      compression,
      level,
      name: tool ? `zstd-${tool.version}` : "zstd",
      ...(tool ? { zstd: tool.path } : {}),
    };
    return () => encoder;
  }
  if (compression !== "gzip") {
    const encoder: LayerEncoder = { compression, level, name: compression };
    return () => encoder;
  }
  const setting = opts.gzipEncoder ?? "auto";
  const zlib: LayerEncoder = {
    compression,
    level: level ?? DEFAULT_GZIP_LEVEL,
    name: `zlib-${process.versions.zlib}`,
  };
  checkLevel("gzip", zlib.level!);
  if (setting === "zlib" || (setting === "auto" && level !== undefined)) return () => zlib;
  const tool = await findIsal(opts.cacheDir);
  if (!tool) {
    if (setting === "isal")
      throw new NixociError(
        "--gzip-encoder isal",
        "igzip (ISA-L) is not installed: install Debian's isal package, or use --gzip-encoder zlib",
      );
    return () => zlib;
  }
  const isal: LayerEncoder = {
    compression,
    level: level ?? DEFAULT_ISAL_LEVEL,
    igzip: tool.path,
    name: `isal-${tool.version}`,
  };
  checkLevel("isal", isal.level!);
  if (setting === "isal") return () => isal;
  return (narSize) => (narSize >= ISAL_MIN_NAR_SIZE ? isal : zlib);
}

/**
 * What is wrong with an explicit gzip level for these settings (for a usage error before any work), or undefined:
 * the ranges layerEncoders enforces (an explicit level under auto is zlib's scale; isal's is 0-3).
 */
export function gzipLevelProblem(
  level: number,
  gzipEncoder: GzipEncoderSetting = "auto",
): string | undefined {
  return levelProblem(gzipEncoder === "isal" ? "isal" : "gzip", level);
}

/** gzipLevelProblem or zstd's, for layers compressed with `compression` (uncompressed layers: undefined). */
export function layerLevelProblem(
  compression: LayerCompression,
  level: number,
  gzipEncoder: GzipEncoderSetting = "auto",
): string | undefined {
  if (compression === "gzip") return gzipLevelProblem(level, gzipEncoder);
  return compression === "zstd" ? levelProblem("zstd", level) : undefined;
}

/**
 * What the encoders of these settings are, as one string (for keys of whole images: `nixoci serve`'s image
 * cache): a different installed igzip, or none, makes different bytes.
 */
export async function encodersIdentity(opts: EncoderOptions): Promise<string> {
  const encoderFor = await layerEncoders(opts);
  const name = (e: LayerEncoder) => `${e.name}:${e.level ?? "default"}`;
  // The encoder from each size on where the choice can change, once each.
  const steps = [0, ISAL_MIN_NAR_SIZE].map((size) => ({
    size,
    name: name(encoderFor(size)),
  }));
  return steps
    .filter((s, i) => i === 0 || s.name !== steps[i - 1].name)
    .map((s) => (s.size ? `>=${s.size}:${s.name}` : s.name))
    .join(" ");
}
