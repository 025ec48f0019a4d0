// One large layer on several cores (src/util/gzip-members.ts): the input cut every `memberSize` bytes, each piece
// through its own igzip, concatenated in order — exactly igzip's bytes for each piece, whatever the parallelism;
// the whole decompresses to the input with zlib (multistream, as Go's reader does); errors end the stream.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createCipheriv } from "node:crypto";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { gunzipSync } from "node:zlib";
import { GzipMembers } from "../../src/util/gzip-members.js";
import { igzipPath, runIgzip } from "../support/isal.js";

/** Half pseudo-random (AES-CTR of zeros), half text: compressible, and the same every run. */
function sample(size: number): Buffer {
  const random = createCipheriv("aes-128-ctr", Buffer.alloc(16), Buffer.alloc(16)).update(
    Buffer.alloc(size >> 1),
  );
  const text = Buffer.from(Array.from({ length: size }, (_, i) => `${i}\n`).join("")).subarray(
    0,
    size - random.length,
  );
  return Buffer.concat([random, text]);
}

async function members(data: Buffer, memberSize: number, parallel: number, chunk = 100_000): Promise<Buffer> {
  const out: Buffer[] = [];
  const pieces: Buffer[] = [];
  for (let i = 0; i < data.length; i += chunk) pieces.push(data.subarray(i, i + chunk));
  await pipeline(
    Readable.from(pieces),
    new GzipMembers({ igzip: igzipPath(), memberSize, parallel }),
    async (s) => {
      for await (const b of s as AsyncIterable<Buffer>) out.push(b);
    },
  );
  return Buffer.concat(out);
}

function igzipOf(data: Buffer): Buffer {
  return runIgzip(["-c", "-n", "-3"], data);
}

test("members: igzip's bytes per piece, in order; the same for any parallelism; decompresses to the input", async () => {
  const data = sample(9 * 1024 * 1024 + 12345);
  const size = 2 * 1024 * 1024;
  const expected: Buffer[] = [];
  for (let i = 0; i < data.length; i += size) expected.push(igzipOf(data.subarray(i, i + size)));
  const want = Buffer.concat(expected);
  for (const parallel of [1, 2, 4]) {
    const got = await members(data, size, parallel);
    assert.ok(got.equals(want), `parallel ${parallel}: the concatenated members`);
  }
  // Input chunks that straddle the cut points, or are larger than a member, change nothing.
  assert.ok((await members(data, size, 2, 3 * 1024 * 1024 + 7)).equals(want));
  assert.ok(gunzipSync(want).equals(data), "zlib reads the members as one stream");
});

test("an input that is an exact multiple of the member size has no trailing empty member; an empty input is one", async () => {
  const data = sample(4 * 1024 * 1024);
  const size = 1024 * 1024;
  const got = await members(data, size, 2);
  const want = Buffer.concat([0, 1, 2, 3].map((i) => igzipOf(data.subarray(i * size, (i + 1) * size))));
  assert.ok(got.equals(want));
  const empty = await members(Buffer.alloc(0), size, 2);
  assert.ok(empty.equals(igzipOf(Buffer.alloc(0))));
});

test("an igzip that cannot run fails the stream with its one-line error", async () => {
  await assert.rejects(
    pipeline(
      Readable.from([sample(3 * 1024 * 1024)]),
      new GzipMembers({
        igzip: "/nonexistent/igzip",
        memberSize: 1024 * 1024,
        parallel: 2,
        input: "test layer",
      }),
      async (s) => {
        for await (const _ of s as AsyncIterable<Buffer>);
      },
    ),
    /^NixociError: test layer: cannot run \/nonexistent\/igzip \(is Debian's isal package installed\?\)/,
  );
});
