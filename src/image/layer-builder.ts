// Builds a layer blob in one pass over its tar stream: tar bytes -> sha256 (diff_id) -> compressor -> blob
// store, which hashes the compressed bytes (the digest) while writing them under a temporary name and renames
// the file to its digest at the end. Memory stays bounded by the streams' buffers.
//
// gzip runs in-process on zlib (libuv's thread pool, so several layers compress on several cores) with the
// gzip header's mtime 0, no file name and the OS byte fixed to 3 (Unix) whatever platform zlib was built for;
// or through ISA-L's igzip when the caller gives its path (layer-encoder.ts chooses), with -n: mtime 0, no
// name, OS byte 3. zstd runs the zstd tool (multi-threaded mode, whose output does not depend on the thread
// count).
import { Transform, type Duplex, type Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import zlib from "node:zlib";
import type { BlobStore, BlobWriter } from "../oci/blob-store.js";
import type { Digest } from "../oci/digest.js";
import { layerMediaType, type LayerCompression } from "../oci/media-types.js";
import { compressStream, isalGzipStream } from "../util/compression.js";
import type { CompressorBatch } from "../util/compressor-batch.js";
import { NixociError } from "../util/errors.js";
import { HashingStream } from "../util/hashing-stream.js";
import { holdErrors } from "../util/streams.js";
import { DEFAULT_GZIP_LEVEL } from "./layer-encoder.js";

export interface LayerBlob {
  /** sha256 of the blob as stored (compressed). */
  digest: Digest;
  /** sha256 of the uncompressed tar (the config's rootfs.diff_ids entry). */
  diffId: Digest;
  /** Size of the blob in bytes. */
  size: number;
  mediaType: string;
  /** Size of the uncompressed tar in bytes. */
  uncompressedSize: number;
}

export interface BuildLayerOptions {
  compression: LayerCompression;
  /** gzip 0-9 (default 6; igzip 0-3, default 3), zstd 1-22 (default 3); ignored for "none". */
  level?: number;
  /** gzip through ISA-L: the igzip executable (layer-encoder.ts). */
  igzip?: string;
  blobs: BlobStore;
  /**
   * gzip through igzip, or zstd: compress through this batch of long-lived processes of the tool
   * instead of one process for this layer (util/compressor-batch.ts; the same bytes). Its codec must be the
   * layer's and its directory inside the blob store's.
   */
  batch?: CompressorBatch;
  /** Told the running count of tar bytes read, as they flow: progress for whoever watches the build. */
  onTarBytes?: (total: number) => void;
}

/** Writes one layer into the blob store and returns its descriptors. The tar stream is consumed (or destroyed). */
export async function buildLayerBlob(tar: Readable, opts: BuildLayerOptions): Promise<LayerBlob> {
  if (opts.batch) return batchedLayerBlob(tar, opts);
  let compressor: Duplex[] = [];
  let writer: BlobWriter;
  try {
    compressor = compressorStages(opts);
    // Read only once the writer is ready: a compressor that cannot start (zstd not installed) or a tar that
    // fails early keeps its error for the pipeline below instead of throwing it as an uncaught exception.
    for (const s of [tar, ...compressor]) holdErrors(s);
    writer = await opts.blobs.writer();
  } catch (err) {
    // Nothing runs yet: release the source (and a spawned compressor).
    for (const s of [tar, ...compressor]) s.destroy();
    throw err;
  }
  const tap = new HashingStream();
  const compressed = compressor.length > 0;
  try {
    // Uncompressed: the blob store's own hash is the diff_id.
    const counter = opts.onTarBytes ? [countingStage(opts.onTarBytes)] : [];
    await pipeline([tar, ...counter, ...(compressed ? [tap, ...compressor] : []), writer.stream]);
    const ref = await writer.commit();
    return {
      digest: ref.digest,
      diffId: compressed ? `sha256:${tap.hasher.digest("hex")}` : ref.digest,
      size: ref.size,
      mediaType: layerMediaType(opts.compression),
      uncompressedSize: compressed ? tap.size : ref.size,
    };
  } catch (err) {
    await writer.abort();
    throw err;
  }
}

/** A layer through the batch: its output file is renamed into the blob store. */
async function batchedLayerBlob(tar: Readable, opts: BuildLayerOptions): Promise<LayerBlob> {
  let job;
  try {
    holdErrors(tar);
    job = await opts.batch!.job();
  } catch (err) {
    tar.destroy();
    throw err;
  }
  const tap = new HashingStream();
  const counter = opts.onTarBytes ? [countingStage(opts.onTarBytes)] : [];
  try {
    await pipeline([tar, ...counter, tap, job.stream]);
  } catch (err) {
    // The pipeline's error is the one to tell; done() releases the lane (and rejects: the stream is unfinished).
    await job.done().catch(() => {});
    throw err;
  }
  const out = await job.done();
  const ref = await opts.blobs.adopt(out.path, out.sha256, out.size);
  return {
    digest: ref.digest,
    diffId: `sha256:${tap.hasher.digest("hex")}`,
    size: ref.size,
    mediaType: layerMediaType(opts.compression),
    uncompressedSize: tap.size,
  };
}

/** The compressor as a chain of streams (empty for "none"); validates the level. */
function compressorStages({ compression, level, igzip }: BuildLayerOptions): Duplex[] {
  switch (compression) {
    case "none":
      return [];
    case "zstd":
      return [compressStream("zstd", { level, input: "layer zstd compressor", launched: true })];
    case "gzip": {
      if (igzip) return [isalGzipStream(igzip, { level, input: "layer gzip compressor (igzip)" })];
      const l = level ?? DEFAULT_GZIP_LEVEL;
      if (!Number.isInteger(l) || l < 0 || l > 9) {
        throw new NixociError("compression level", `${l} is out of range for gzip (0..9)`);
      }
      return [zlib.createGzip({ level: l, chunkSize: 128 * 1024 }), gzipOsFixer()];
    }
    default:
      throw new NixociError("layer compression", `unsupported compression ${String(compression)}`);
  }
}

/** Passes chunks on unchanged, telling `onBytes` the total so far. */
function countingStage(onBytes: (total: number) => void): Transform {
  let total = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      total += chunk.length;
      onBytes(total);
      done(null, chunk);
    },
  });
}

const GZIP_OS_OFFSET = 9;
const GZIP_OS_UNIX = 3;

/** Sets the gzip header's OS byte to Unix (zlib writes the code of the platform it was built for). */
function gzipOsFixer(): Transform {
  let offset = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, done) {
      if (offset <= GZIP_OS_OFFSET && offset + chunk.length > GZIP_OS_OFFSET) {
        chunk[GZIP_OS_OFFSET - offset] = GZIP_OS_UNIX;
      }
      offset += chunk.length;
      done(null, chunk);
    },
  });
}
