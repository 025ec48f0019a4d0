// The frontend's fetch step realises store paths from binary caches: a NAR whose bytes differ from its signed
// NarHash must be refused even though the restorer has everything it needs before the stream ends.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fetchStep, openCaches } from "../../../src/servers/buildkit/steps.js";
import { parsePublicKey } from "../../../src/nix/signature.js";
import { buildFixtures, generateCacheKey, makeNixCache, makeTempDir } from "../../support/fixtures.js";
import { run } from "../../support/run.js";

const fx = buildFixtures();

/** A signed, uncompressed cache of `path` whose NAR has one content byte changed (same size, same NarHash line). */
function tamperedCache(path: string): { url: string; publicKey: string } {
  const dir = makeTempDir("fetch-step-cache");
  const key = generateCacheKey("fetch-step", join(dir, "key"));
  const cache = join(dir, "cache");
  const url = makeNixCache({
    paths: [path],
    dir: cache,
    compression: "none",
    secretKeyFile: key.secretKeyFile,
  });
  const hashPart = path.slice("/nix/store/".length, "/nix/store/".length + 32);
  const narinfo = readFileSync(join(cache, `${hashPart}.narinfo`), "utf8");
  const narFile = join(cache, /^URL: (.*)$/m.exec(narinfo)![1]);
  const nar = readFileSync(narFile);
  const at = nar.indexOf("Hello");
  assert.ok(at > 0, "the fixture's NAR holds a greeting to change");
  nar[at] ^= 0x20; // "hello": same length, a different NarHash
  writeFileSync(narFile, nar);
  return { url, publicKey: key.publicKey };
}

test("fetchStep refuses a NAR whose bytes do not match its signed NarHash and leaves nothing", async () => {
  const { url, publicKey } = tamperedCache(fx.greeting);
  const caches = await openCaches([url], { trustedKeys: [parsePublicKey(publicKey)] }, "/nix/store");
  const out = makeTempDir("fetch-step-out");
  try {
    await assert.rejects(fetchStep([fx.greeting], caches, out), /NAR hash mismatch/);
  } finally {
    caches.close();
  }
  const storeDir = join(out, "nix/store");
  assert.deepEqual(existsSync(storeDir) ? readdirSync(storeDir) : [], []);
});

test("fetchStep realises an untampered path, equal to the store's", async () => {
  const dir = makeTempDir("fetch-step-good");
  const key = generateCacheKey("fetch-step", join(dir, "key"));
  const url = makeNixCache({
    paths: [fx.greeting],
    dir: join(dir, "cache"),
    compression: "xz",
    secretKeyFile: key.secretKeyFile,
  });
  const caches = await openCaches([url], { trustedKeys: [parsePublicKey(key.publicKey)] }, "/nix/store");
  const out = join(dir, "out");
  try {
    await fetchStep([fx.greeting], caches, out);
  } finally {
    caches.close();
  }
  assert.deepEqual(
    run("nix-store", ["--dump", join(out, fx.greeting)]),
    run("nix-store", ["--dump", fx.greeting]),
  );
});
