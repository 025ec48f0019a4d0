// Same-size buffers taken and given back (src/util/buffer-pool.ts): a buffer given back (or a view of it) is taken
// again, whole; buffers the pool did not make, a second give of the same buffer and gives beyond `keep` are
// ignored, so no buffer is ever handed out twice at once.
import { test } from "node:test";
import assert from "node:assert/strict";
import { BufferPool } from "../../src/util/buffer-pool.js";

test("a buffer given back is taken again, whole, even when given as a view", () => {
  const pool = new BufferPool(4096);
  const a = pool.take();
  assert.equal(a.length, 4096);
  assert.equal(a.byteOffset, 0);
  assert.equal(a.buffer.byteLength, 4096, "its own memory, not a slice of Node's shared pool");
  pool.give(a.subarray(100, 200));
  const again = pool.take();
  assert.equal(again.buffer, a.buffer);
  assert.equal(again.length, 4096);
  assert.notEqual(pool.take().buffer, a.buffer, "empty again: a new buffer");
});

test("foreign buffers, a second give and gives beyond keep are ignored", () => {
  const pool = new BufferPool(1024, 2);
  pool.give(Buffer.alloc(1024));
  pool.give(Buffer.allocUnsafeSlow(1024));
  const taken = pool.take();
  const x = pool.take();
  pool.give(x);
  pool.give(x);
  pool.give(x.subarray(1));
  const first = pool.take();
  const second = pool.take();
  assert.equal(first.buffer, x.buffer);
  assert.notEqual(second.buffer, x.buffer, "x was handed out once, not three times");
  assert.notEqual(taken.buffer, x.buffer);
  const [p, q, r] = [pool.take(), pool.take(), pool.take()];
  for (const b of [p, q, r]) pool.give(b);
  const back = [pool.take(), pool.take(), pool.take()].map((b) => b.buffer);
  assert.equal(back.filter((ab) => [p, q, r].some((b) => b.buffer === ab)).length, 2, "keeps 2");
});
