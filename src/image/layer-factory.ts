// What a build needs to make the layers its cache lacks: tar writers, encoders, the compressor batches and the
// buffer pool they share. build.ts loads this module on its first cache miss (a dynamic import), so a rebuild
// where every layer is cached never loads the encoders' code: Node's start-up and module loading are most of
// such a rebuild's time.
import type { Readable } from "node:stream";
import { BufferPool } from "../util/buffer-pool.js";
import { defaultLevel } from "../util/compression-formats.js";
import { CompressorBatch } from "../util/compressor-batch.js";
import { buildLayerBlob, type LayerBlob } from "./layer-builder.js";
import { DEFAULT_ISAL_LEVEL, type LayerEncoder } from "./layer-encoder.js";
import { storePathsTar, TAR_CHUNK, treeTar, type StorePathSource, type TreeEntry } from "./layer-tar.js";
import { HeaderRewriter, type Ownership } from "./permissions.js";
import type { TarFormat } from "./tar-header.js";
import type { BlobStore } from "../oci/blob-store.js";

/** A layer's contents: store paths (under their store directory), or the customisation layer's tree. */
export type LayerSource =
  | { kind: "store-paths"; paths: StorePathSource[]; storeDir: string }
  | { kind: "tree"; entries: TreeEntry[] };

export interface MadeLayer extends LayerBlob {
  /** Ownership rules changed some of its headers: not the store's own tar of its paths. */
  rewritten: boolean;
}

export class LayerFactory {
  readonly #blobs: BlobStore;
  readonly #parallelism: number;
  // igzip layers (not cut into members) and zstd layers go through long-lived processes of the tool, one per
  // build slot (up to three: compressor-batch.ts), made on the first layer that needs them: a process per small
  // layer cost more than compressing it.
  readonly #batches = new Map<string, CompressorBatch>();
  // The store layers' tar chunks, given back by the batches once in their tools' pipes: a build reuses a few
  // megabytes instead of faulting in fresh memory for every megabyte of tar.
  readonly #chunkPool: BufferPool;
  readonly #tarFormat: TarFormat;

  constructor(blobs: BlobStore, parallelism: number, tarFormat: TarFormat) {
    this.#blobs = blobs;
    this.#parallelism = parallelism;
    this.#tarFormat = tarFormat;
    this.#chunkPool = new BufferPool(TAR_CHUNK, 4 * parallelism + 4);
  }

  /** Tars, compresses and stores one layer. */
  async make(
    source: LayerSource,
    encoder: LayerEncoder,
    ownership: Ownership | undefined,
    onTarBytes: (bytes: number) => void,
  ): Promise<MadeLayer> {
    const rewriter =
      ownership && new HeaderRewriter(ownership, source.kind === "store-paths" ? source.storeDir : undefined);
    const tar: Readable =
      source.kind === "store-paths"
        ? storePathsTar(source.paths, { rewriter, pool: this.#chunkPool, format: this.#tarFormat })
        : treeTar(source.entries, { rewriter, format: this.#tarFormat });
    const blob = await buildLayerBlob(tar, {
      compression: encoder.compression,
      level: encoder.level,
      igzip: encoder.igzip,
      batch: this.#batchFor(encoder),
      blobs: this.#blobs,
      onTarBytes,
    });
    return { ...blob, rewritten: rewriter?.rewritten ?? false };
  }

  /** Ends the batches' tool processes. */
  async close(): Promise<void> {
    await Promise.all([...this.#batches.values()].map((b) => b.close()));
  }

  #batchFor(e: LayerEncoder): CompressorBatch | undefined {
    const codec = e.compression === "zstd" ? "zstd" : e.igzip ? "gzip" : undefined;
    if (!codec || !CompressorBatch.available()) return undefined;
    const level = e.level ?? (codec === "zstd" ? defaultLevel("zstd") : DEFAULT_ISAL_LEVEL);
    const tool = codec === "zstd" ? (e.zstd ?? "zstd") : e.igzip!;
    const key = `${codec}\0${tool}\0${level}`;
    let batch = this.#batches.get(key);
    if (!batch) {
      batch = new CompressorBatch({
        codec,
        tool,
        level,
        parentDir: this.#blobs.blobDir,
        lanes: this.#parallelism,
        pool: this.#chunkPool,
        input: codec === "zstd" ? "layer zstd compressor" : "layer gzip compressor (igzip)",
      });
      this.#batches.set(key, batch);
    }
    return batch;
  }
}
