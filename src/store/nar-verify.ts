// A pass-through that checks NAR bytes against the NarHash and NarSize a store promised. It fails as soon as
// more bytes than NarSize arrive and, at the end, when the size or hash differ, so a consumer that commits
// only after the stream ended never commits wrong bytes.
import { createHash } from "node:crypto";
import { Transform, type TransformCallback } from "node:stream";
import { Hash } from "../nix/hash.js";
import { NixociError } from "../util/errors.js";

export class NarVerifier extends Transform {
  private readonly hasher;
  private size = 0;

  constructor(
    private readonly expectedHash: Hash,
    private readonly expectedSize: number,
    private readonly input: string,
  ) {
    super();
    this.hasher = createHash(expectedHash.algo);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.size += chunk.length;
    if (this.size > this.expectedSize) {
      done(new NixociError(this.input, `NAR is larger than its NarSize ${this.expectedSize}`));
      return;
    }
    this.hasher.update(chunk);
    done(null, chunk);
  }

  override _flush(done: TransformCallback): void {
    if (this.size !== this.expectedSize) {
      done(
        new NixociError(
          this.input,
          `NAR size mismatch: NarSize is ${this.expectedSize}, got ${this.size} bytes`,
        ),
      );
      return;
    }
    const got = new Hash(this.expectedHash.algo, this.hasher.digest());
    if (!got.equals(this.expectedHash)) {
      done(new NixociError(this.input, `NAR hash mismatch: NarHash is ${this.expectedHash}, got ${got}`));
      return;
    }
    done();
  }
}
