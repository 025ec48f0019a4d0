// Many streams through few igzip or zstd processes (src/util/compressor-batch.ts): each stream's output is exactly
// the tool's own for it alone (on stdin), with more streams than a process has pipes (processes replaced), several
// lanes at once, and with chunks from a pool that come back and are reused while others wait to be written; a
// stream that fails, a tool killed mid-stream or missing, or one that exits just after opening its first pipe fail
// their job (with one line; never a hang) and the next job works; close() leaves neither process nor directory, and a SIGKILLed owner takes its processes with it; an
// output whose gzip trailer does not match the stream, or that is not whole zstd frames, is refused; an output read
// while the tool still writes it is hashed whole.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { createCipheriv, createHash } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { setTimeout as delay } from "node:timers/promises";
import { gzipSync } from "node:zlib";
import {
  checkedGzipOutput,
  checkedZstdOutput,
  CompressorBatch,
  type CompressorBatchOptions,
} from "../../src/util/compressor-batch.js";
import { BufferPool } from "../../src/util/buffer-pool.js";
import { igzipPath, runIgzip } from "../support/isal.js";
import { makeTempDir } from "../support/fixtures.js";
import { until } from "../support/poll.js";

const work = makeTempDir("compressor-batch");

/** Pseudo-random (AES-CTR of zeros, seeded by `seed`) and text halves: compressible, the same every run. */
function sample(size: number, seed: number): Buffer {
  const key = Buffer.alloc(16);
  key.writeUInt32LE(seed);
  const random = createCipheriv("aes-128-ctr", key, Buffer.alloc(16)).update(Buffer.alloc(size >> 1));
  const text = Buffer.from(Array.from({ length: size }, (_, i) => `${seed}:${i}\n`).join("")).subarray(
    0,
    size - random.length,
  );
  return Buffer.concat([random, text]);
}

function chunks(data: Buffer, size = 100_000): Readable {
  const pieces: Buffer[] = [];
  for (let i = 0; i < data.length; i += size) pieces.push(data.subarray(i, i + size));
  return Readable.from(pieces);
}

async function compress(batch: CompressorBatch, data: Buffer): Promise<Buffer> {
  const job = await batch.job();
  await pipeline(chunks(data), job.stream);
  const out = await job.done();
  const bytes = readFileSync(out.path);
  assert.equal(out.size, bytes.length);
  assert.equal(out.sha256, createHash("sha256").update(bytes).digest("hex"));
  return bytes;
}

function gzipBatch(parentDir: string, rest: Partial<CompressorBatchOptions> = {}): CompressorBatch {
  return new CompressorBatch({ codec: "gzip", tool: igzipPath(), level: 1, parentDir, lanes: 1, ...rest });
}

/** zstd's own output for `data` on stdin, with the layer compressor's arguments. */
function zstdOf(data: Buffer, level = 3): Buffer {
  const args = ["--compress", "--stdout", "-q", `-${level}`, "-T0", ...(level > 19 ? ["--ultra"] : [])];
  const r = spawnSync("zstd", args, { input: data, maxBuffer: 1 << 30 });
  assert.equal(r.status, 0, r.stderr?.toString());
  return r.stdout;
}

/** Tool processes (igzip or zstd) whose working directory is `dir` (the batch's pipes live there). */
function toolsIn(dir: string, tool = "igzip"): number[] {
  const pids: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const argv0 = readFileSync(`/proc/${name}/cmdline`, "utf8").split("\0")[0];
      if (argv0.endsWith(tool) && readlinkSync(`/proc/${name}/cwd`) === dir) pids.push(Number(name));
    } catch {
      // exited
    }
  }
  return pids;
}

test("each stream's output is igzip's own, across lanes and replaced processes; close leaves nothing", async () => {
  const parent = join(work, "bytes");
  mkdirSync(parent);
  const batch = gzipBatch(parent, { lanes: 2, slots: 3 });
  const inputs = [0, 1, 2, 3, 4, 5, 6, 7].map((i) => sample([0, 1, 70_000, 1 << 20, 3_000_001][i % 5], i));
  const outputs = await Promise.all(inputs.map((data) => compress(batch, data)));
  for (let i = 0; i < inputs.length; i++)
    assert.ok(outputs[i].equals(runIgzip(["-c", "-n", "-1"], inputs[i])), `stream ${i}: igzip's bytes`);
  assert.ok(existsSync(batch.dir));
  await batch.close();
  assert.ok(!existsSync(batch.dir), "the directory is removed");
  assert.deepEqual(toolsIn(batch.dir), []);
  await assert.rejects(batch.job(), /closed/);
});

test("with a pool, chunks come back once in the pipe and are reused: the outputs are still igzip's", async () => {
  const parent = join(work, "pool");
  mkdirSync(parent);
  const pool = new BufferPool(1 << 20, 64);
  const batch = gzipBatch(parent, { lanes: 2, pool });
  const made = new Set<ArrayBufferLike>();
  // Every chunk is a pool buffer, taken while the chunks before it may still wait to be written: one given back
  // too early would be overwritten by a later chunk, and the output would not be igzip's for the data.
  const viaPool = (data: Buffer): Readable => {
    let off = 0;
    return new Readable({
      read() {
        if (off >= data.length) return void this.push(null);
        const buf = pool.take();
        made.add(buf.buffer);
        const n = data.copy(buf, 0, off);
        off += n;
        this.push(buf.subarray(0, n));
      },
    });
  };
  try {
    const inputs = [0, 1, 2, 3].map((i) => sample(10_000_000 + i * 77_777, 50 + i));
    const outputs = await Promise.all(
      inputs.map(async (data) => {
        const job = await batch.job();
        await pipeline(viaPool(data), job.stream);
        return readFileSync((await job.done()).path);
      }),
    );
    for (let i = 0; i < inputs.length; i++)
      assert.ok(outputs[i].equals(runIgzip(["-c", "-n", "-1"], inputs[i])), `stream ${i}: igzip's bytes`);
    // In flight at most, per lane: the writes' 4 MiB, the one being written, one in each stream's buffer.
    const chunksWritten = inputs.reduce((n, d) => n + Math.ceil(d.length / (1 << 20)), 0);
    assert.ok(made.size <= 2 * 8, `${made.size} buffers made for ${chunksWritten} chunks`);
    assert.ok(made.has(pool.take().buffer), "the pool holds buffers given back");
  } finally {
    await batch.close();
  }
  // Each lane's writes hold a thread of the pool (4 threads here): 8 lanes asked for are 3 processes.
  const wide = gzipBatch(parent, { lanes: 8 });
  try {
    const data = sample(100_000, 60);
    const outputs = await Promise.all(Array.from({ length: 8 }, () => compress(wide, data)));
    assert.ok(outputs.every((o) => o.equals(runIgzip(["-c", "-n", "-1"], data))));
    assert.equal(toolsIn(wide.dir).length, 3);
  } finally {
    await wide.close();
  }
});

test("a tool that exits right after opening its first pipe fails its job, and never hangs", async () => {
  const parent = join(work, "quitter");
  mkdirSync(parent);
  // Opens its first pipe for reading (so the batch finds it reading), then exits at once: the batch's second,
  // blocking open of the pipe comes before or after the exit, and either way the job fails.
  const quitter = join(work, "quitter.sh");
  writeFileSync(quitter, '#!/bin/sh\nwhile [ "$1" != -- ]; do shift; done\nexec 3<"$2"\n', { mode: 0o755 });
  for (let trial = 0; trial < 10; trial++) {
    const batch = gzipBatch(parent, { tool: quitter });
    try {
      const failed = (async () => {
        const job = await batch.job();
        try {
          await pipeline(chunks(sample(2_000_000, trial)), job.stream);
        } catch (err) {
          await job.done().catch(() => {});
          throw err;
        }
        await job.done();
      })();
      await assert.rejects(failed, /quitter\.sh exited with status 0 before it finished its input|EPIPE/);
    } finally {
      await batch.close();
    }
  }
});

test("levels 0-3 give igzip's bytes; a level out of range is refused", async () => {
  const parent = join(work, "levels");
  mkdirSync(parent);
  const data = sample(500_000, 9);
  for (const level of [0, 2, 3]) {
    const batch = gzipBatch(parent, { level });
    try {
      assert.ok((await compress(batch, data)).equals(runIgzip(["-c", "-n", `-${level}`], data)));
    } finally {
      await batch.close();
    }
  }
  assert.throws(() => gzipBatch(parent, { level: 4 }), /4 is out of range for ISA-L gzip \(0\.\.3\)/);
});

test("a stream that fails fails its job; the lane's next job works", async () => {
  const parent = join(work, "failing");
  mkdirSync(parent);
  const batch = gzipBatch(parent);
  try {
    const job = await batch.job();
    const failing = new Readable({
      read() {
        this.push(Buffer.alloc(300_000, 1));
        this.destroy(new Error("the source broke"));
      },
    });
    await assert.rejects(pipeline(failing, job.stream), /the source broke/);
    await assert.rejects(job.done(), /not written to its end/);
    const data = sample(200_000, 3);
    assert.ok((await compress(batch, data)).equals(runIgzip(["-c", "-n", "-1"], data)));
  } finally {
    await batch.close();
  }
});

test("igzip killed mid-stream fails the job in one line; a missing igzip fails its job; the batch goes on", async () => {
  const parent = join(work, "killed");
  mkdirSync(parent);
  const batch = gzipBatch(parent);
  try {
    const job = await batch.job();
    const [pid] = toolsIn(batch.dir);
    assert.ok(pid, "the lane's igzip runs");
    const endless = new Readable({
      read() {
        this.push(Buffer.alloc(64 * 1024, 7));
      },
    });
    const written = pipeline(endless, job.stream);
    process.kill(pid, "SIGKILL");
    await assert.rejects(written);
    await assert.rejects(job.done(), (err: Error) => {
      assert.ok(!err.message.includes("\n"), err.message);
      return true;
    });
    const data = sample(100_000, 4);
    assert.ok((await compress(batch, data)).equals(runIgzip(["-c", "-n", "-1"], data)), "a new process");
  } finally {
    await batch.close();
  }
  const missing = gzipBatch(parent, { tool: join(work, "no-such-igzip") });
  try {
    await assert.rejects(
      missing.job(),
      /no-such-igzip exited with status 127 before it finished its input: .*not found/,
    );
  } finally {
    await missing.close();
  }
});

test("zstd: each stream's output is zstd's own on stdin (-T0), across lanes and replaced processes", async () => {
  const parent = join(work, "zstd");
  mkdirSync(parent);
  const batch = new CompressorBatch({
    codec: "zstd",
    tool: "zstd",
    level: 3,
    parentDir: parent,
    lanes: 2,
    slots: 2,
  });
  try {
    const inputs = [0, 1, 2, 3, 4].map((i) => sample([0, 1, 300_000, 5_000_000, 1 << 20][i], 20 + i));
    const outputs = await Promise.all(inputs.map((data) => compress(batch, data)));
    for (let i = 0; i < inputs.length; i++)
      assert.ok(outputs[i].equals(zstdOf(inputs[i])), `stream ${i}: zstd's bytes`);
    const big = sample(600_000, 30);
    const ultra = new CompressorBatch({
      codec: "zstd",
      tool: "zstd",
      level: 20,
      parentDir: parent,
      lanes: 1,
    });
    try {
      assert.ok((await compress(ultra, big)).equals(zstdOf(big, 20)), "level 20 (--ultra)");
    } finally {
      await ultra.close();
    }
  } finally {
    await batch.close();
  }
  assert.deepEqual(toolsIn(batch.dir, "zstd"), []);
  assert.throws(
    () => new CompressorBatch({ codec: "zstd", tool: "zstd", level: 23, parentDir: parent, lanes: 1 }),
    /23 is out of range for zstd \(1\.\.22\)/,
  );
});

test("an output read while the tool still writes it is hashed whole (gzip and zstd)", async () => {
  const parent = join(work, "growing");
  mkdirSync(parent);
  for (const codec of ["gzip", "zstd"] as const) {
    const batch =
      codec === "gzip"
        ? gzipBatch(parent)
        : new CompressorBatch({ codec, tool: "zstd", level: 3, parentDir: parent, lanes: 1 });
    try {
      const data = sample(24 << 20, codec === "gzip" ? 40 : 41);
      const suffix = codec === "gzip" ? ".gz" : ".zst";
      const outputSize = (): number => {
        const name = readdirSync(batch.dir).find((n) => n.endsWith(suffix));
        return name ? statSync(join(batch.dir, name)).size : 0;
      };
      // After each megabyte the writer waits for the tool's output to grow (igzip writes as it goes; zstd once a
      // job of several megabytes is done, so not after every one): the reader finds the file part-written.
      let grewWhileWritten = 0;
      const grows = async (before: number, patienceMs: number): Promise<boolean> => {
        for (const end = Date.now() + patienceMs; Date.now() < end; await delay(5))
          if (outputSize() > before) return true;
        return false;
      };
      const slowly = async function* () {
        for (let off = 0; off < data.length; off += 1 << 20) {
          const before = outputSize();
          yield data.subarray(off, off + (1 << 20));
          if (off + (1 << 20) < data.length && (await grows(before, codec === "gzip" ? 10_000 : 300)))
            grewWhileWritten++;
        }
      };
      const job = await batch.job();
      await pipeline(Readable.from(slowly()), job.stream);
      const out = await job.done();
      assert.ok(grewWhileWritten >= (codec === "gzip" ? 10 : 1), `output grew ${grewWhileWritten} times`);
      const bytes = readFileSync(out.path);
      assert.equal(out.size, bytes.length);
      assert.equal(out.sha256, createHash("sha256").update(bytes).digest("hex"));
      assert.ok(bytes.equals(codec === "gzip" ? runIgzip(["-c", "-n", "-1"], data) : zstdOf(data)));
    } finally {
      await batch.close();
    }
  }
});

test("zstd outputs that are not whole frames are refused", async () => {
  const dir = join(work, "frames");
  mkdirSync(dir);
  const data = sample(700_000, 40);
  const good = zstdOf(data);
  const file = (name: string, bytes: Buffer) => {
    const path = join(dir, name);
    writeFileSync(path, bytes);
    return path;
  };
  const ok = await checkedZstdOutput(file("good.zst", good), "t");
  assert.equal(ok.size, good.length);
  // Two frames one after the other are whole frames too; so is the frame of an empty input.
  await checkedZstdOutput(file("two.zst", Buffer.concat([good, zstdOf(Buffer.from("x"))])), "t");
  await checkedZstdOutput(file("empty-input.zst", zstdOf(Buffer.alloc(0))), "t");
  const bad: Array<[string, Buffer, RegExp]> = [
    ["empty", Buffer.alloc(0), /no zstd frame/],
    ["truncated", good.subarray(0, good.length - 1), /cut short/],
    ["half", good.subarray(0, good.length >> 1), /cut short/],
    ["header only", good.subarray(0, 6), /cut short/],
    ["garbage after", Buffer.concat([good, Buffer.from("junk")]), /bad magic number/],
    ["gzip", gzipSync(data), /bad magic number/],
    ["reserved bit", Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x08, 0, 0, 0]), /reserved bit/],
  ];
  for (const [name, bytes, why] of bad)
    await assert.rejects(
      checkedZstdOutput(file(`${name}.zst`, bytes), "layer y"),
      (err: Error) =>
        /^layer y: zstd's output is not whole zstd frames: /.test(err.message) && why.test(err.message),
      name,
    );
  await assert.rejects(checkedZstdOutput(join(dir, "missing.zst"), "layer y"), /left no output \(ENOENT\)/);
});

test("an output whose gzip trailer does not match the stream is refused", async () => {
  const dir = join(work, "trailers");
  mkdirSync(dir);
  const data = Buffer.from("some layer bytes\n".repeat(1000));
  const good = join(dir, "good.gz");
  writeFileSync(good, gzipSync(data));
  const { crc32 } = (await import("node:zlib")) as unknown as { crc32: (b: Buffer) => number };
  const ok = await checkedGzipOutput(good, crc32(data), data.length, "test");
  assert.equal(ok.size, gzipSync(data).length);
  const cases: Array<[string, Buffer, number, number]> = [
    ["truncated", gzipSync(data).subarray(0, 30), crc32(data), data.length],
    ["empty", Buffer.alloc(0), crc32(data), data.length],
    ["another stream", gzipSync(Buffer.from("other")), crc32(data), data.length],
    ["wrong size", gzipSync(data), crc32(data), data.length + 1],
  ];
  for (const [name, bytes, crc, size] of cases) {
    const file = join(dir, `${name}.gz`);
    writeFileSync(file, bytes);
    await assert.rejects(
      checkedGzipOutput(file, crc, size, "layer x"),
      /^NixociError: layer x: igzip's output is not the gzip of the stream given/,
      name,
    );
  }
});

test("an owner killed with SIGKILL takes its igzip processes with it", async () => {
  const parent = join(work, "orphans");
  mkdirSync(parent);
  const script = join(work, "owner.mjs");
  const module = new URL("../../src/util/compressor-batch.js", import.meta.url).href;
  writeFileSync(
    script,
    `import { CompressorBatch } from ${JSON.stringify(module)};
const batch = new CompressorBatch({ codec: "gzip", tool: ${JSON.stringify(igzipPath())}, level: 1, parentDir: ${JSON.stringify(parent)}, lanes: 2 });
const jobs = await Promise.all([batch.job(), batch.job()]);
jobs[0].stream.write(Buffer.alloc(1000));
console.log(batch.dir);
setInterval(() => {}, 1000);
`,
  );
  const owner = spawn(process.execPath, [script], { stdio: ["ignore", "pipe", "inherit"] });
  let dir = "";
  owner.stdout.on("data", (d: Buffer) => (dir += d.toString()));
  await until("the owner started its lanes", 10_000, () => assert.ok(dir.endsWith("\n")), 20);
  dir = dir.trim();
  await until("both lanes' igzip run", 10_000, () => assert.equal(toolsIn(dir).length, 2), 20);
  owner.kill("SIGKILL");
  await until("no igzip of the dead owner is left", 10_000, () => assert.deepEqual(toolsIn(dir), []), 20);
});
