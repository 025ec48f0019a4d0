// Which encoder compresses a layer (src/image/layer-encoder.ts): ISA-L's igzip for large layers under `auto`
// where it is installed, zlib otherwise or when asked; the names (with versions) that go into layer identities;
// and the errors for levels and a missing igzip. The real igzip of the isal package (an install step) is used.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { encodersIdentity, ISAL_MIN_NAR_SIZE, layerEncoders } from "../../src/image/layer-encoder.js";
import { findIsal, findOnPath } from "../../src/util/tool-versions.js";
import { runText } from "../support/run.js";
import { makeTempDir } from "../support/fixtures.js";
import { igzipPath } from "../support/isal.js";

const work = makeTempDir("layer-encoder");
const ZLIB = `zlib-${process.versions.zlib}`;

function igzipVersion(): string {
  const out = spawnSync(igzipPath(), ["--version"], { encoding: "utf8" }).stdout;
  return /(\d+(?:\.\d+)+)/.exec(out)![1];
}

/** Runs `fn` with PATH set to `path` (restored after). */
async function withPath<T>(path: string, fn: () => Promise<T>): Promise<T> {
  const saved = process.env.PATH;
  process.env.PATH = path;
  try {
    return await fn();
  } finally {
    process.env.PATH = saved;
  }
}

test("auto: igzip at level 1 for layers of at least 256 KiB, zlib -6 below; names carry versions", async () => {
  const version = igzipVersion();
  const cacheDir = join(work, "auto");
  const encoderFor = await layerEncoders({ compression: "gzip", cacheDir });
  const large = encoderFor(ISAL_MIN_NAR_SIZE);
  assert.deepEqual(
    { ...large, igzip: undefined },
    {
      compression: "gzip",
      level: 1,
      igzip: undefined,
      name: `isal-${version}`,
    },
  );
  assert.equal(large.igzip, igzipPath());
  assert.deepEqual(encoderFor(ISAL_MIN_NAR_SIZE - 1), { compression: "gzip", level: 6, name: ZLIB });
  // However large: one igzip (it outpaces the tar; see layer-encoder.ts).
  assert.deepEqual(encoderFor(1 << 30), large);
  assert.deepEqual(encoderFor(0), { compression: "gzip", level: 6, name: ZLIB });
  // The version is memoized in the cache directory, keyed by the binary (a rebuild pays a stat, not a process).
  const memo = JSON.parse(readFileSync(join(cacheDir, "tools/igzip.json"), "utf8")) as { version: string };
  assert.equal(memo.version, version);
  assert.equal((await findIsal(cacheDir))?.version, version);
  assert.equal(
    await encodersIdentity({ compression: "gzip", cacheDir }),
    `${ZLIB}:6 >=${ISAL_MIN_NAR_SIZE}:isal-${version}:1`,
  );
});

test("zlib when asked or when a level is given; zstd named with its version, none with the codec alone", async () => {
  for (const opts of [
    { gzipEncoder: "zlib" as const },
    { level: 6 },
    { gzipEncoder: "auto" as const, level: 9 },
  ]) {
    const encoderFor = await layerEncoders({ compression: "gzip", ...opts });
    assert.deepEqual(encoderFor(1 << 30), { compression: "gzip", level: opts.level ?? 6, name: ZLIB });
  }
  const isal = await layerEncoders({ compression: "gzip", gzipEncoder: "isal", level: 1 });
  assert.equal(isal(0).name, `isal-${igzipVersion()}`);
  assert.equal(isal(0).level, 1);
  // zstd: named with its version (memoized like igzip's), and its path for the layer builds.
  const zstdVersion = /v(\d+(?:\.\d+)+)/.exec(runText("zstd", ["--version"]))![1];
  const cacheDir = join(work, "zstd");
  assert.deepEqual((await layerEncoders({ compression: "zstd", cacheDir }))(1 << 30), {
    compression: "zstd",
    level: undefined,
    name: `zstd-${zstdVersion}`,
    zstd: findOnPath("zstd"),
  });
  const memo = JSON.parse(readFileSync(join(cacheDir, "tools/zstd.json"), "utf8")) as { version: string };
  assert.equal(memo.version, zstdVersion);
  assert.equal(
    await encodersIdentity({ compression: "zstd", level: 10 }),
    `zstd-${zstdVersion}:10`,
    "serve's image keys name zstd's version too",
  );
  await withPath("/nonexistent", async () => {
    assert.equal((await layerEncoders({ compression: "zstd" }))(0).name, "zstd");
  });
  assert.equal(await encodersIdentity({ compression: "gzip", gzipEncoder: "zlib" }), `${ZLIB}:6`);
});

test("levels out of range, and igzip missing: auto falls back to zlib, isal is an error", async () => {
  await assert.rejects(
    layerEncoders({ compression: "gzip", gzipEncoder: "isal", level: 4 }),
    /^NixociError: compression level: 4 is out of range for ISA-L gzip \(0\.\.3\)$/,
  );
  await assert.rejects(
    layerEncoders({ compression: "gzip", level: 10 }),
    /^NixociError: compression level: 10 is out of range for gzip \(0\.\.9\)$/,
  );
  await withPath("/nonexistent", async () => {
    assert.equal(await findIsal(), undefined);
    const encoderFor = await layerEncoders({ compression: "gzip" });
    assert.equal(encoderFor(1 << 30).name, ZLIB);
    await assert.rejects(
      layerEncoders({ compression: "gzip", gzipEncoder: "isal" }),
      /^NixociError: --gzip-encoder isal: igzip \(ISA-L\) is not installed: install Debian's isal package, or use --gzip-encoder zlib$/,
    );
  });
});
