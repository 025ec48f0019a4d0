// A pass-through that checks what flows through it against the size and digest it was promised (a NAR's NarSize and
// NarHash, a blob's descriptor). It fails as soon as more bytes than promised arrive and, at the end, when the size
// or the digest differ, so a consumer that commits only after the stream ended never commits wrong bytes.
import { createHash } from "node:crypto";
import { Transform, type TransformCallback } from "node:stream";
import { NixociError } from "./errors.js";

export interface Promised {
  /** A node:crypto hash name ("sha256", "sha512", ...). */
  algo: string;
  digest: Buffer;
  size: number;
}

/** The messages of each failure, in the words of the format the bytes belong to. */
export interface CheckedStreamWords {
  tooLong(promisedSize: number): string;
  wrongSize(promisedSize: number, got: number): string;
  wrongDigest(got: Buffer): string;
}

export class CheckedStream extends Transform {
  private readonly hasher;
  private size = 0;

  constructor(
    private readonly promised: Promised,
    private readonly input: string,
    private readonly words: CheckedStreamWords,
  ) {
    super();
    this.hasher = createHash(promised.algo);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.size += chunk.length;
    if (this.size > this.promised.size) {
      done(new NixociError(this.input, this.words.tooLong(this.promised.size)));
      return;
    }
    this.hasher.update(chunk);
    done(null, chunk);
  }

  override _flush(done: TransformCallback): void {
    if (this.size !== this.promised.size) {
      done(new NixociError(this.input, this.words.wrongSize(this.promised.size, this.size)));
      return;
    }
    const got = this.hasher.digest();
    if (!got.equals(this.promised.digest)) {
      done(new NixociError(this.input, this.words.wrongDigest(got)));
      return;
    }
    done();
  }
}
