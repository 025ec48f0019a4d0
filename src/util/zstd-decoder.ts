// zstd decompression inside this process, for small NARs: spawning the zstd tool costs more than decoding a
// small NAR (a fork of this process, ~15 ms of the main thread, where a 100 KB NAR decodes in ~1 ms), and a fetch
// of a closure meets hundreds of them. fzstd is a pure-JS decoder (~100 MB/s here, the tool ~1 GB/s on another
// core), so large NARs still go to the tool (compression.ts decides).
//
// Bounds, since the data comes from the network: the caller says how many bytes the data must decode to (a
// NAR's NarSize from its signed narinfo) and decoding stops with an error as soon as more come out, so a
// decompression bomb cannot fill memory while one chunk is being decoded (fzstd decodes a whole chunk at once).
// fzstd checks neither the frame's checksum nor that input was complete; the NarHash check downstream does.
import { Decompress } from "fzstd";
import { Transform, type TransformCallback } from "node:stream";
import { NixociError } from "./errors.js";

export class ZstdDecoder extends Transform {
  private readonly decoder: Decompress;
  private produced = 0;
  private ended = false;

  constructor(
    private readonly maxOutput: number,
    private readonly input: string,
  ) {
    super();
    this.decoder = new Decompress((data, final) => {
      this.produced += data.length;
      if (this.produced > this.maxOutput)
        throw this.fail(`decompresses to more than the ${this.maxOutput} bytes expected`);
      if (data.length) this.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
      if (final) this.ended = true;
    });
  }

  private fail(detail: string, cause?: unknown): NixociError {
    return new NixociError(this.input, `corrupt or truncated zstd data: ${detail}`, { cause });
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    try {
      this.decoder.push(chunk);
      done();
    } catch (err) {
      done(err instanceof NixociError ? err : this.fail((err as Error).message, err));
    }
  }

  override _flush(done: TransformCallback): void {
    try {
      this.decoder.push(new Uint8Array(0), true);
      // An empty input decodes to nothing without complaint: no data is not a zstd frame.
      if (!this.ended || this.produced === 0) throw this.fail("no complete frame");
      done();
    } catch (err) {
      done(err instanceof NixociError ? err : this.fail((err as Error).message, err));
    }
  }
}
