// zstd decompression inside this process, for small NARs (compression.ts: up to IN_PROCESS_ZSTD_MAX, 128 KiB):
// starting the zstd tool, even through the tool launcher, costs more than decoding such a NAR here, and a fetch of
// a closure meets hundreds of them. fzstd is a pure-JS decoder (~100 MB/s here, the tool ~1 GB/s on another core),
// so larger NARs go to the tool. Measured on a fetch of the bench closure (131 NARs, 101 of them 0.1-2 MiB):
// decoding NARs up to 2 MiB here and forking the tool from this process for the rest took 10.6 s of CPU and 8.1 s;
// this threshold with the tool launcher 6.0 s and 7.2 s.
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
