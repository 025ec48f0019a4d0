// A pass-through that checks NAR bytes against the NarHash and NarSize a store promised. It fails as soon as
// more bytes than NarSize arrive and, at the end, when the size or hash differ, so a consumer that commits
// only after the stream ended never commits wrong bytes.
import { createHash } from "node:crypto";
import { Transform, type Readable, type TransformCallback } from "node:stream";
import { Hash } from "../nix/hash.js";
import { restoreNar } from "../nix/nar-restore.js";
import { NixociError } from "../util/errors.js";
import { removeTree } from "../util/fs.js";

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

/**
 * Restores a verified NAR stream (a store's narFromPath) at `dest` and then reads the stream to its end, which is
 * when a NarVerifier checks NarSize and NarHash: the restorer itself stops at the NAR's closing parenthesis, so a
 * NAR whose bytes differ from its (signed) NarHash would otherwise be accepted. On any error the stream is
 * destroyed and whatever was restored at `dest` removed; a caller commits `dest` only after this resolved.
 */
export async function restoreVerifiedNar(
  nar: Readable,
  dest: string,
  opts: { input: string; canonicalize?: boolean; shownAs?: string },
): Promise<void> {
  // Keep the iterator open (no `return` when the restorer stops) so the rest can be drained through it.
  const it = nar[Symbol.asyncIterator]();
  const view: AsyncIterable<Buffer> = { [Symbol.asyncIterator]: () => ({ next: () => it.next() }) };
  try {
    await restoreNar(view, dest, opts);
    for (let r = await it.next(); !r.done; r = await it.next());
  } catch (err) {
    nar.destroy();
    await removeTree(dest);
    throw err;
  }
}
