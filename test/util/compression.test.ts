import { test, describe, before } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Readable, Writable, type Duplex } from "node:stream";
import { pipeline } from "node:stream/promises";
import { setTimeout as sleep } from "node:timers/promises";
import {
  COMPRESSIONS,
  compressBuffer,
  compressStream,
  compressionExtension,
  decompressBuffer,
  decompressStream,
  IN_PROCESS_ZSTD_MAX,
  parseCompression,
  type Compression,
} from "../../src/util/compression.js";
import { NixociError } from "../../src/util/errors.js";
import { ZstdDecoder } from "../../src/util/zstd-decoder.js";
import { buildFixtures, makeNixCache, makeTempDir, nixNarExtension } from "../support/fixtures.js";
import { until } from "../support/poll.js";
import { toolProcesses } from "../support/processes.js";
import { run } from "../support/run.js";

const MB = 1024 * 1024;
// xz and bzip2 crawl through incompressible data (~2.5 MB/s here), so the random part is smaller.
const random = randomBytes(1.5 * MB);
const text = Buffer.from(
  Array.from(
    { length: 60000 },
    (_, i) => `line ${i}: the quick brown fox jumps over ${i % 97} lazy dogs\n`,
  ).join(""),
);
// Default levels are slow on these machines (xz -6: ~2 MB/s, brotli 11: ~1 MB/s); most tests use fast ones and
// a few cover the defaults.
const fast: Partial<Record<Compression, number>> = { xz: 1, bzip2: 1, br: 5 };

/** The real command-line compressor for a codec (no brotli CLI is installed). */
const TOOLS: Partial<Record<Compression, string>> = { xz: "xz", zstd: "zstd", bzip2: "bzip2", gzip: "gzip" };

const sha256 = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

/** Waits (bounded) until no tool process is left; fails naming the leftovers. */
async function assertNoChildren(): Promise<void> {
  await until(
    "the child processes to end",
    10_000,
    async () => assert.deepEqual(await toolProcesses(), [], "leftover children"),
    20,
  );
}

function assertOneLineError(err: unknown, input: string, pattern: RegExp): true {
  assert.ok(err instanceof NixociError, `expected a NixociError, got ${String(err)}`);
  assert.equal(err.input, input);
  assert.ok(err.message.startsWith(`${input}: `), err.message);
  assert.ok(!/[\r\n]/.test(err.message), `message is not one line: ${JSON.stringify(err.message)}`);
  assert.match(err.message, pattern);
  return true;
}

describe("parseCompression / compressionExtension", () => {
  test("accepts Nix's names", () => {
    for (const c of ["none", "xz", "zstd", "bzip2", "br", "gzip"]) assert.equal(parseCompression(c), c);
    assert.deepEqual([...COMPRESSIONS].sort(), ["br", "bzip2", "gzip", "none", "xz", "zstd"]);
  });
  test("rejects unknown and empty names with a NixociError naming the input", () => {
    for (const bad of ["", "lz4", "XZ", "zst", "bz2", "gz", "xz "]) {
      assert.throws(
        () => parseCompression(bad, "foo.narinfo"),
        (e) => assertOneLineError(e, "foo.narinfo", /compression/),
      );
    }
  });
  test("NAR file suffixes", () => {
    const got = Object.fromEntries(COMPRESSIONS.map((c) => [c, compressionExtension(c)]));
    assert.deepEqual(got, { none: "", xz: ".xz", zstd: ".zst", bzip2: ".bz2", br: ".br", gzip: ".gz" });
  });
  test("levels out of range are rejected", () => {
    assert.throws(() => compressStream("xz", { level: 10 }), NixociError);
    assert.throws(() => compressStream("bzip2", { level: 0 }), NixociError);
    assert.throws(() => compressStream("br", { level: 12 }), NixociError);
    assert.throws(() => compressStream("zstd", { level: 1.5 }), NixociError);
  });
});

describe("round trips", () => {
  for (const c of COMPRESSIONS) {
    test(`${c}: random and text data`, async () => {
      for (const data of [
        random,
        text,
        Buffer.concat([text, random, text]),
        Buffer.alloc(0),
        Buffer.from("x"),
      ]) {
        const packed = await compressBuffer(c, data, { level: fast[c] });
        if (c !== "none" && data === text) assert.ok(packed.length < data.length / 3, `${c} compresses text`);
        const back = await decompressBuffer(c, packed, `test${compressionExtension(c)}`);
        assert.equal(back.length, data.length);
        assert.ok(back.equals(data), `${c} round trip of ${data.length} bytes`);
      }
      await assertNoChildren();
    });
  }

  test("default levels", async () => {
    const data = Buffer.concat([text.subarray(0, 300_000), random.subarray(0, 300_000)]);
    for (const c of COMPRESSIONS) {
      assert.ok((await decompressBuffer(c, await compressBuffer(c, data), "x")).equals(data), c);
    }
  });

  test("compressed output is deterministic", async () => {
    for (const c of COMPRESSIONS) {
      const data = Buffer.concat([text, random.subarray(0, MB / 4)]);
      const a = await compressBuffer(c, data, { level: fast[c] });
      const b = await compressBuffer(c, data, { level: fast[c] });
      assert.ok(a.equals(b), `${c} output differs between runs`);
    }
    // The same bytes as the CLIs in multi-threaded mode, whatever the thread count (xz -T0 on a one-core machine
    // would be single-threaded mode, which writes other bytes).
    const data = Buffer.concat([text, random.subarray(0, MB / 4)]);
    const ours = sha256(await compressBuffer("xz", data, { level: 1 }));
    assert.equal(ours, sha256(run("xz", ["-c", "-1", "-T2"], { input: data })));
    assert.equal(ours, sha256(run("xz", ["-c", "-1", "-T+1"], { input: data })));
    assert.notEqual(ours, sha256(run("xz", ["-c", "-1", "-T1"], { input: data })));
    const small = data.subarray(0, 200_000);
    assert.equal(
      sha256(await compressBuffer("xz", small)),
      sha256(run("xz", ["-c", "-6", "-T3"], { input: small })),
    );
    const zstd = sha256(await compressBuffer("zstd", data));
    assert.equal(zstd, sha256(run("zstd", ["-c", "-q", "-3", "-T1"], { input: data })));
    assert.equal(zstd, sha256(run("zstd", ["-c", "-q", "-3", "-T4"], { input: data })));
  });

  test("the real tools read what we write", async () => {
    const data = Buffer.concat([text, random.subarray(0, MB / 4)]);
    for (const [c, tool] of Object.entries(TOOLS) as [Compression, string][]) {
      const packed = await compressBuffer(c, data, { level: fast[c] });
      assert.ok(run(tool, ["-d", "-c"], { input: packed }).equals(data), `${tool} -d`);
    }
  });

  test("we read what the real tools write (incl. concatenated streams)", async () => {
    const data = Buffer.concat([text, random.subarray(0, MB / 4)]);
    for (const [c, tool] of Object.entries(TOOLS) as [Compression, string][]) {
      const packed = run(tool, ["-c", "-1"], { input: data });
      assert.ok((await decompressBuffer(c, packed, "tool")).equals(data), `${tool} output`);
      const bit = random.subarray(0, 1000);
      const two = Buffer.concat([
        run(tool, ["-c", "-1"], { input: text }),
        run(tool, ["-c", "-1"], { input: bit }),
      ]);
      assert.ok((await decompressBuffer(c, two, "tool")).equals(Buffer.concat([text, bit])), `${tool} x2`);
    }
    // Multi-block xz (as `xz -T2` and parallel Nix write it).
    const multi = run("xz", ["-c", "-1", "-T2", "--block-size=100000"], { input: data });
    assert.ok((await decompressBuffer("xz", multi, "multi.xz")).equals(data));
  });
});

describe("NARs written by nix copy", () => {
  let fx: ReturnType<typeof buildFixtures>;
  before(() => {
    fx = buildFixtures();
  });

  for (const c of COMPRESSIONS) {
    test(`${c}`, async () => {
      const dir = makeTempDir(`compression-${c}`);
      // Nix compresses at the default levels (brotli 11: ~1 MB/s here, xz 6 and bzip2 9 not much faster on
      // binaries): the slow ones get small paths only.
      const slow = c === "br" || c === "xz" || c === "bzip2";
      makeNixCache({ paths: slow ? [fx.tree] : [fx.big, fx.hello], dir, compression: c });
      const closure = slow ? [fx.tree, fx.greeting] : [fx.big, fx.hello, fx.busybox, fx.greeting];
      for (const path of closure) {
        const hashPart = path.slice("/nix/store/".length, "/nix/store/".length + 32);
        const narinfo = readFileSync(join(dir, `${hashPart}.narinfo`), "utf8");
        const url = /^URL: (.*)$/m.exec(narinfo)![1];
        assert.match(narinfo, new RegExp(`^Compression: ${c}$`, "m"));
        assert.ok(url.endsWith(`.nar${nixNarExtension(c)}`), url);
        const nar = await decompressBuffer(parseCompression(c), readFileSync(join(dir, url)), url);
        assert.equal(sha256(nar), sha256(run("nix-store", ["--dump", path])), `${c} NAR of ${path}`);
      }
    });
  }
});

describe("bad input", () => {
  const good: Partial<Record<Compression, Buffer>> = {};
  before(async () => {
    for (const c of COMPRESSIONS)
      good[c] = await compressBuffer(c, Buffer.concat([text, random]), { level: fast[c] });
  });

  for (const c of COMPRESSIONS.filter((c) => c !== "none")) {
    const name = `nar/abc.nar${compressionExtension(c)}`;

    test(`${c}: truncated`, async () => {
      const data = good[c]!;
      for (const cut of [Math.floor(data.length / 2), data.length - 1, 3]) {
        await assert.rejects(decompressBuffer(c, data.subarray(0, cut), name), (e) =>
          assertOneLineError(e, name, new RegExp(`corrupt or truncated ${c} data: \\S`)),
        );
      }
      await assertNoChildren();
    });

    test(`${c}: corrupt`, async () => {
      const data = Buffer.from(good[c]!);
      // Overwrite a stretch in the middle (and, separately, the header).
      const mid = Buffer.from(data);
      randomBytes(4096).copy(mid, Math.floor(mid.length / 2));
      const head = Buffer.from(data);
      head.fill(0x55, 0, 16);
      for (const bad of [mid, head, randomBytes(100_000)]) {
        const result = decompressBuffer(c, bad, name);
        if (c === "br") {
          // Brotli has no checksum: damaged (or random) input may decode to other bytes without an error (the
          // NAR hash catches that). It must not decode to the original, though.
          const out = await result.catch((e: unknown) =>
            assertOneLineError(e, name, /corrupt or truncated br data/),
          );
          if (out !== true) assert.ok(!out.equals(Buffer.concat([text, random])));
          continue;
        }
        await assert.rejects(result, (e) =>
          assertOneLineError(e, name, new RegExp(`corrupt or truncated ${c} data`)),
        );
      }
      await assertNoChildren();
    });

    test(`${c}: empty input`, async () => {
      await assert.rejects(decompressBuffer(c, Buffer.alloc(0), name), (e) =>
        assertOneLineError(e, name, /corrupt/),
      );
      await assertNoChildren();
    });

    test(`${c}: bad data in a pipeline with a slow consumer`, async () => {
      let data = Buffer.from(good[c]!);
      // (Brotli has no checksum to catch damage: cut it short instead.)
      if (c === "br") data = data.subarray(0, Math.floor(data.length * 0.7));
      else randomBytes(1000).copy(data, Math.floor(data.length * 0.7));
      let got = 0;
      const sink = new Writable({
        highWaterMark: 1024,
        write(chunk: Buffer, _enc, cb) {
          got += chunk.length;
          setTimeout(cb, 1);
        },
      });
      await assert.rejects(
        pipeline(Readable.from(chunks(data, 65536)), decompressStream(c, name), sink),
        (e) => assertOneLineError(e, name, /corrupt or truncated/),
      );
      assert.ok(got < text.length + random.length);
      await assertNoChildren();
    });
  }
});

function* chunks(data: Buffer, size: number): Generator<Buffer> {
  for (let i = 0; i < data.length; i += size) yield data.subarray(i, i + size);
}

describe("processes", () => {
  for (const c of ["xz", "zstd", "bzip2"] as const) {
    test(`${c}: destroying the stream early kills the child`, async () => {
      const s = decompressStream(c, "early");
      s.write((await compressBuffer(c, random, { level: 1 })).subarray(0, 100_000));
      // The decompressor waits for more input: one child, running.
      await until(
        "the decompressor child",
        10_000,
        async () => assert.equal((await toolProcesses()).length, 1),
        20,
      );
      const closed = new Promise((resolve) => s.on("close", resolve));
      s.on("error", () => {});
      s.destroy();
      await closed;
      assert.deepEqual(await toolProcesses(), [], "child gone by 'close'");
    });

    test(`${c}: a source failing midway ends the child`, async () => {
      const packed = await compressBuffer(c, random, { level: 1 });
      async function* source(): AsyncGenerator<Buffer> {
        yield packed.subarray(0, 200_000);
        await sleep(20);
        throw new Error("source broke");
      }
      await assert.rejects(
        pipeline(source(), decompressStream(c, "x"), new Writable({ write: (_c, _e, cb) => cb() })),
        /source broke/,
      );
      await assertNoChildren();
    });

    test(`${c}: a consumer failing midway ends the child`, async () => {
      const packed = await compressBuffer(c, Buffer.concat([random, text]), { level: 1 });
      let n = 0;
      const sink = new Writable({
        write(_chunk, _enc, cb) {
          cb(++n === 3 ? new Error("sink broke") : null);
        },
      });
      await assert.rejects(
        pipeline(Readable.from(chunks(packed, 65536)), decompressStream(c, "x"), sink),
        /sink broke/,
      );
      await assertNoChildren();
    });

    test(`${c}: compressing, destroyed early`, async () => {
      const s = compressStream(c);
      s.on("error", () => {});
      s.write(random);
      const closed = new Promise((resolve) => s.on("close", resolve));
      s.destroy();
      await closed;
      assert.deepEqual(await toolProcesses(), []);
    });
  }

  test("a missing tool is a NixociError", async () => {
    const saved = process.env.PATH;
    process.env.PATH = "/nonexistent";
    try {
      await assert.rejects(decompressBuffer("xz", Buffer.from("abc"), "some.nar.xz"), (e) =>
        assertOneLineError(e, "some.nar.xz", /cannot run xz/),
      );
    } finally {
      process.env.PATH = saved;
    }
    await assertNoChildren();
  });

  test("large streams flow with backpressure", async () => {
    const data = Buffer.concat(Array.from({ length: 6 }, (_, i) => (i % 2 ? random : text)));
    for (const c of ["xz", "zstd"] as const) {
      const packed = await compressBuffer(c, data, { level: 1 });
      const hash = createHash("sha256");
      let maxChunk = 0;
      await pipeline(
        Readable.from(chunks(packed, 1 << 20)),
        decompressStream(c, "big"),
        async (src: AsyncIterable<Buffer>) => {
          for await (const chunk of src) {
            maxChunk = Math.max(maxChunk, chunk.length);
            hash.update(chunk);
          }
        },
      );
      assert.equal(hash.digest("hex"), sha256(data));
      assert.ok(maxChunk >= 16 * 1024, `chunks are not tiny (${maxChunk})`);
    }
  });
});

describe("zstd decoded in this process (data of a known, small size)", () => {
  const name = "nar/small.nar.zst";
  const data = Buffer.concat([text.subarray(0, 80_000), random.subarray(0, 40_000)]);
  const decode = (packed: Buffer, size: number) =>
    collectStream(
      Readable.from([packed.subarray(0, 1000), packed.subarray(1000)]),
      decompressStream("zstd", name, size),
    );

  test("small sizes decode in-process, equal to the tool's output; large sizes go to the tool", async () => {
    assert.ok(decompressStream("zstd", name, data.length) instanceof ZstdDecoder);
    for (const size of [IN_PROCESS_ZSTD_MAX + 1, undefined]) {
      const tool = decompressStream("zstd", name, size);
      assert.ok(!(tool instanceof ZstdDecoder), `size ${size}`);
      tool.destroy();
    }
    await assertNoChildren();
    // Written from a pipe (no content size in the frame), from a file (with it), at a high level, and two frames.
    const forms = [
      run("zstd", ["-c", "-3"], { input: data }),
      run("zstd", ["-c", "-19", "--stream-size=" + data.length], { input: data }),
      Buffer.concat([
        run("zstd", ["-c"], { input: data.subarray(0, 1000) }),
        run("zstd", ["-c"], { input: data.subarray(1000) }),
      ]),
      await compressBuffer("zstd", data),
    ];
    for (const packed of forms) assert.ok((await decode(packed, data.length)).equals(data));
    assert.deepEqual(await toolProcesses(), [], "no tool was started");
  });

  test("bad input: truncated, corrupt, random, empty, or more bytes than expected -- one line naming the NAR", async () => {
    const packed = run("zstd", ["-c", "-3"], { input: data });
    // fzstd checks no frame checksum: damaged data may decode to other bytes without an error (the NarHash
    // downstream catches that), but never to the original.
    const corrupt = Buffer.from(packed);
    randomBytes(2048).copy(corrupt, Math.floor(packed.length / 2));
    const damaged = await decode(corrupt, data.length).catch((e: unknown) =>
      assertOneLineError(e, name, /corrupt or truncated zstd data/),
    );
    if (damaged !== true) assert.ok(!damaged.equals(data));
    const header = Buffer.from(packed);
    header.fill(0x55, 0, 8);
    for (const [i, bad] of [
      packed.subarray(0, packed.length / 2),
      packed.subarray(0, 3),
      header,
      randomBytes(50_000),
      Buffer.alloc(0),
    ].entries())
      await assert.rejects(
        decode(bad, data.length),
        (e) => assertOneLineError(e, name, /corrupt or truncated zstd data: \S/),
        `bad input ${i}`,
      );
    // A bomb: a small frame of zeros that decodes to far more than the NAR it claims to be; stopped at the limit.
    const bomb = run("zstd", ["-c", "-19"], { input: Buffer.alloc(64 * MB) });
    assert.ok(bomb.length < 64 * 1024, `${bomb.length} bytes`);
    await assert.rejects(decode(bomb, 100_000), (e) =>
      assertOneLineError(e, name, /decompresses to more than the 100000 bytes expected/),
    );
  });
});

async function collectStream(source: Readable, filter: Duplex): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(source, filter, async (s: AsyncIterable<Buffer>) => {
    for await (const c of s) out.push(c);
  });
  return Buffer.concat(out);
}
