// The one pass-through that hashes and counts what flows through it: a layer's diff_id while it is compressed, a
// binary cache file's FileHash while it is written, an upload's digest while it is stored.
import { createHash, type Hash } from "node:crypto";
import { Transform, type TransformCallback } from "node:stream";

export class HashingStream extends Transform {
  /** Bytes that went through. */
  size = 0;

  /**
   * `hasher` may be one that already holds earlier data (an upload resumed chunk by chunk); read its digest once
   * the stream has ended.
   */
  constructor(readonly hasher: Hash = createHash("sha256")) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.hasher.update(chunk);
    this.size += chunk.length;
    callback(null, chunk);
  }
}
