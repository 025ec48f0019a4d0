// NARs checked against the NarHash and NarSize a store promised (util/checked-stream.ts), and restored only once
// the whole stream proved right.
import type { Readable } from "node:stream";
import { Hash } from "../nix/hash.js";
import { restoreNar } from "../nix/nar-restore.js";
import { CheckedStream } from "../util/checked-stream.js";
import { removeTree } from "../util/fs.js";

/** A pass-through that fails on NAR bytes other than those NarHash and NarSize promise. */
export class NarVerifier extends CheckedStream {
  constructor(expectedHash: Hash, expectedSize: number, input: string) {
    super({ algo: expectedHash.algo, digest: expectedHash.digest, size: expectedSize }, input, {
      tooLong: (size) => `NAR is larger than its NarSize ${size}`,
      wrongSize: (size, got) => `NAR size mismatch: NarSize is ${size}, got ${got} bytes`,
      wrongDigest: (got) =>
        `NAR hash mismatch: NarHash is ${expectedHash}, got ${new Hash(expectedHash.algo, got)}`,
    });
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
