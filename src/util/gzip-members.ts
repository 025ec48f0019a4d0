// One large layer compressed on several cores: its bytes cut into fixed-size pieces, each compressed by its own
// igzip, the results concatenated in order. A gzip file may hold several members one after the other (RFC 1952
// section 2.2) and every reader of layers decompresses them as one stream (Go's compress/gzip, which containerd,
// Docker, skopeo and umoci use, reads multistream by default; so do GNU gzip, zlib's gunzip and Node's).
//
// The cut points depend only on the byte count (every `memberSize` bytes), so the output depends only on the
// input, the member size and igzip's version, not on the number of cores or on timing. At most `parallel`
// members are compressed at once; a member's output waits in memory until the members before it are out, so
// memory stays bounded by parallel x memberSize whatever the layer's size.
import { Duplex } from "node:stream";
import { isalGzipStream } from "./compression.js";

interface Member {
  stream: Duplex;
  out: Buffer[];
  finished: Promise<void>;
  done: boolean;
}

export interface GzipMembersOptions {
  /** The igzip executable. */
  igzip: string;
  level?: number;
  /** Bytes of input per member. */
  memberSize: number;
  /** Members compressed at once. */
  parallel: number;
  /** Names the data in errors. */
  input?: string;
}

export class GzipMembers extends Duplex {
  readonly #opts: GzipMembersOptions;
  /** Members started and not yet pushed out, oldest first; the last one may still take input. */
  readonly #members: Member[] = [];
  /** Input bytes the newest member has taken (it is ended at memberSize). */
  #filled = 0;
  #open: Member | undefined;

  constructor(opts: GzipMembersOptions) {
    super({ readableHighWaterMark: 1 << 20, writableHighWaterMark: 1 << 20 });
    if (!Number.isSafeInteger(opts.memberSize) || opts.memberSize <= 0) throw new Error("bad member size");
    this.#opts = { ...opts, parallel: Math.max(1, opts.parallel) };
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.#take(chunk).then(() => cb(), cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.#finish().then(() => cb(), cb);
  }

  override _read(): void {
    // Output is pushed as members complete, in order; the number of members in flight bounds it.
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    for (const m of this.#members) m.stream.destroy();
    cb(err);
  }

  async #take(chunk: Buffer): Promise<void> {
    let off = 0;
    while (off < chunk.length) {
      const member = this.#open ?? (await this.#startMember());
      const n = Math.min(chunk.length - off, this.#opts.memberSize - this.#filled);
      const piece = chunk.subarray(off, off + n);
      off += n;
      this.#filled += n;
      if (!member.stream.write(piece)) await waitDrain(member.stream);
      if (this.#filled === this.#opts.memberSize) {
        member.stream.end();
        this.#open = undefined;
      }
    }
  }

  /** A new member, once fewer than `parallel` are being compressed (older ones are pushed out first). */
  async #startMember(): Promise<Member> {
    while (this.#members.length >= this.#opts.parallel) {
      await this.#members[0].finished;
      this.#pushDone();
    }
    const stream = isalGzipStream(this.#opts.igzip, { level: this.#opts.level, input: this.#opts.input });
    const out: Buffer[] = [];
    stream.on("data", (b: Buffer) => out.push(b));
    const member: Member = { stream, out, done: false, finished: Promise.resolve() };
    member.finished = new Promise<void>((resolve, reject) => {
      stream.once("end", () => {
        member.done = true;
        resolve();
      });
      stream.once("error", reject);
    });
    // A failure is the whole stream's (and is also seen by whoever awaits the member).
    member.finished.catch((err: Error) => this.destroy(err));
    this.#members.push(member);
    this.#open = member;
    this.#filled = 0;
    return member;
  }

  /** Pushes out, in order, the members that are done. */
  #pushDone(): void {
    while (this.#members.length && this.#members[0].done) {
      for (const b of this.#members.shift()!.out) this.push(b);
    }
  }

  async #finish(): Promise<void> {
    // An empty input is one empty member, as a single igzip makes it.
    if (!this.#members.length && !this.#open) await this.#startMember();
    this.#open?.stream.end();
    this.#open = undefined;
    for (const m of [...this.#members]) {
      await m.finished;
      this.#pushDone();
    }
    this.push(null);
  }
}

function waitDrain(s: Duplex): Promise<void> {
  return new Promise((resolve, reject) => {
    const onDrain = (): void => {
      s.off("error", onError);
      resolve();
    };
    const onError = (err: Error): void => {
      s.off("drain", onDrain);
      reject(err);
    };
    s.once("drain", onDrain);
    s.once("error", onError);
  });
}
