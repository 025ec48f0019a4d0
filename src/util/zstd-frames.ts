// Checks that bytes are whole zstd frames (RFC 8878 section 3.1.1), as they stream past, without decompressing:
// each frame's magic number, header, every block header with its size, the last block, and the content checksum
// when the header announces one — so a file cut short anywhere (a full disk, a killed writer) or followed by stray
// bytes is told apart from a complete zstd stream. (The checksum's value is not verified: that needs the content.)

const ZSTD_MAGIC = 0xfd2fb528;
const MAX_BLOCK = 128 * 1024;

type State = "magic" | "descriptor" | "header" | "block" | "body" | "checksum";

export class ZstdFrameCheck {
  #state: State = "magic";
  /** Header bytes gathered for the current state. */
  #need = 4;
  #have: number[] = [];
  /** Bytes of the current block's body (or the header's rest) still to skip. */
  #skip = 0;
  #lastBlock = false;
  #checksum = false;
  #frames = 0;
  #error: string | undefined;

  update(chunk: Buffer): void {
    let i = 0;
    while (i < chunk.length && !this.#error) {
      if (this.#state === "body") {
        const n = Math.min(this.#skip, chunk.length - i);
        this.#skip -= n;
        i += n;
        if (this.#skip === 0) this.#afterBody();
        continue;
      }
      this.#have.push(chunk[i++]);
      if (this.#have.length === this.#need) this.#parse(Buffer.from(this.#have));
    }
  }

  /** Undefined when the bytes seen are one or more complete frames; else what is wrong. */
  result(): string | undefined {
    if (this.#error) return this.#error;
    if (this.#state !== "magic" || this.#have.length) return "the last zstd frame is cut short";
    if (this.#frames === 0) return "no zstd frame";
    return undefined;
  }

  #expect(state: State, need: number): void {
    this.#state = state;
    this.#need = need;
    this.#have = [];
  }

  #parse(b: Buffer): void {
    switch (this.#state) {
      case "magic":
        if (b.readUInt32LE(0) !== ZSTD_MAGIC) {
          this.#error = "not a zstd frame (bad magic number)";
          return;
        }
        this.#expect("descriptor", 1);
        return;
      case "descriptor": {
        const d = b[0];
        if (d & 0x08) {
          this.#error = "a zstd frame header with its reserved bit set";
          return;
        }
        const fcsFlag = d >> 6;
        const single = (d >> 5) & 1;
        this.#checksum = ((d >> 2) & 1) === 1;
        const dictBytes = [0, 1, 2, 4][d & 3];
        const fcsBytes = [single ? 1 : 0, 2, 4, 8][fcsFlag];
        const rest = (single ? 0 : 1) + dictBytes + fcsBytes;
        if (rest) this.#expect("header", rest);
        else this.#expect("block", 3);
        return;
      }
      case "header":
        this.#expect("block", 3);
        return;
      case "block": {
        const h = b[0] | (b[1] << 8) | (b[2] << 16);
        this.#lastBlock = (h & 1) === 1;
        const type = (h >> 1) & 3;
        const size = h >>> 3;
        if (type === 3) {
          this.#error = "a zstd block of the reserved type";
          return;
        }
        if (size > MAX_BLOCK) {
          this.#error = `a zstd block of ${size} bytes (at most ${MAX_BLOCK})`;
          return;
        }
        this.#skip = type === 1 ? 1 : size;
        this.#state = "body";
        this.#have = [];
        if (this.#skip === 0) this.#afterBody();
        return;
      }
      case "checksum":
        this.#frameDone();
        return;
      case "body":
        return;
    }
  }

  #afterBody(): void {
    if (!this.#lastBlock) this.#expect("block", 3);
    else if (this.#checksum) this.#expect("checksum", 4);
    else this.#frameDone();
  }

  #frameDone(): void {
    this.#frames++;
    this.#expect("magic", 4);
  }
}
