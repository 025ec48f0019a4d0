import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { HashingStream } from "../../src/util/hashing-stream.js";

async function through(hs: HashingStream, chunks: Buffer[]): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(Readable.from(chunks), hs, async (source: AsyncIterable<Buffer>) => {
    for await (const c of source) out.push(c);
  });
  return Buffer.concat(out);
}

test("HashingStream passes data through unchanged, hashes and counts it", async () => {
  const chunks = [randomBytes(100), randomBytes(5000), Buffer.alloc(0), randomBytes(3)];
  const hs = new HashingStream();
  const all = Buffer.concat(chunks);
  assert.deepEqual(await through(hs, chunks), all);
  assert.equal(hs.size, all.length);
  assert.equal(hs.hasher.digest("hex"), createHash("sha256").update(all).digest("hex"));
});

test("HashingStream continues a hash that holds earlier data (a resumed upload)", async () => {
  const first = randomBytes(777);
  const second = [randomBytes(4096), randomBytes(1)];
  const hasher = createHash("sha256").update(first);
  const hs = new HashingStream(hasher);
  await through(hs, second);
  assert.equal(hs.size, 4097, "counts only what went through");
  assert.equal(
    hs.hasher.digest("hex"),
    createHash("sha256")
      .update(Buffer.concat([first, ...second]))
      .digest("hex"),
  );
});
