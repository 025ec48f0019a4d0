// The check behind an unsigned flat or text content address (CA "fixed:<algo>:<hash>", "text:sha256:<hash>"):
// such a path is named by the hash of its one file's contents, not of its NAR, so the NAR a cache sends must be
// exactly a regular file (not executable, for text) whose contents have that hash. The bytes pass through
// unchanged; a NAR that is anything else, or contents with another hash, fail the stream at its end, before its
// last bytes go on (a store that restores it commits nothing).
import { createHash, type Hash as Hasher } from "node:crypto";
import { Transform, type TransformCallback } from "node:stream";
import type { Hash } from "../nix/hash.js";
import { narString, narStrings } from "../nix/nar-string.js";
import { NixociError } from "../util/errors.js";

const HEAD = ["nix-archive-1", "(", "type", "regular"];
const PLAIN = narStrings(...HEAD, "contents");
const EXECUTABLE = narStrings(...HEAD, "executable", "", "contents");
const TRAILER = narString(")");

export class FlatNarContentCheck extends Transform {
  /** Bytes of the header (prefix and contents length) seen so far, until it is complete. */
  private head = Buffer.alloc(0);
  private contentLength?: bigint;
  private hashed = 0n;
  /** Bytes after the contents: padding and the trailer. */
  private tail: Buffer[] = [];
  private tailLength = 0;
  private readonly hasher: Hasher;
  private held?: Buffer;

  constructor(
    private readonly expected: Hash,
    private readonly input: string,
    private readonly allowExecutable: boolean,
  ) {
    super();
    this.hasher = createHash(expected.algo);
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    try {
      this.inspect(chunk);
    } catch (err) {
      done(err as Error);
      return;
    }
    // One chunk is held back until the end is checked.
    if (this.held) this.push(this.held);
    this.held = chunk;
    done();
  }

  override _flush(done: TransformCallback): void {
    const problem = this.problem();
    if (problem) {
      done(new NixociError(this.input, problem));
      return;
    }
    if (this.held) this.push(this.held);
    done();
  }

  private inspect(chunk: Buffer): void {
    let rest = chunk;
    if (this.contentLength === undefined) {
      this.head = Buffer.concat([this.head, rest]);
      for (const prefix of this.allowExecutable ? [PLAIN, EXECUTABLE] : [PLAIN]) {
        if (this.headAgrees(prefix) && this.head.length >= prefix.length + 8) {
          this.contentLength = this.head.readBigUInt64LE(prefix.length);
          rest = this.head.subarray(prefix.length + 8);
          break;
        }
      }
      if (this.contentLength === undefined) {
        const couldBe = [PLAIN, EXECUTABLE].some((p) => this.headAgrees(p));
        if (!couldBe || this.head.length > EXECUTABLE.length + 8)
          throw new NixociError(this.input, this.notAFile());
        return;
      }
    }
    const left = this.contentLength - this.hashed;
    const take = left < BigInt(rest.length) ? Number(left) : rest.length;
    if (take > 0) {
      this.hasher.update(rest.subarray(0, take));
      this.hashed += BigInt(take);
    }
    if (take < rest.length) {
      this.tail.push(rest.subarray(take));
      this.tailLength += rest.length - take;
      if (this.tailLength > 8 + TRAILER.length) throw new NixociError(this.input, this.notAFile());
    }
  }

  /** Whether the header bytes seen so far agree with `prefix` (as far as either goes). */
  private headAgrees(prefix: Buffer): boolean {
    const n = Math.min(this.head.length, prefix.length);
    return this.head.subarray(0, n).equals(prefix.subarray(0, n));
  }

  private notAFile(): string {
    return `the NAR is not ${this.allowExecutable ? "a single regular file" : "a single non-executable file"}, as its content address (flat or text) says`;
  }

  private problem(): string | undefined {
    if (this.contentLength === undefined || this.hashed !== this.contentLength) return this.notAFile();
    const pad = Number((8n - (this.contentLength % 8n)) % 8n);
    const tail = Buffer.concat(this.tail);
    if (!tail.equals(Buffer.concat([Buffer.alloc(pad), TRAILER]))) return this.notAFile();
    const actual = this.hasher.digest();
    if (!actual.equals(this.expected.digest))
      return `the file's ${this.expected.algo} is not the one its content address names`;
    return undefined;
  }
}
