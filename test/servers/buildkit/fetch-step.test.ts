// The frontend's fetch step realises store paths from binary caches: a NAR whose bytes differ from its signed
// NarHash must be refused even though the restorer has everything it needs before the stream ends.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fetchStep, layerDir, openCaches, parseStepLayers } from "../../../src/servers/buildkit/steps.js";
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
    await assert.rejects(fetchStep([{ dir: "", paths: [fx.greeting] }], caches, out), /NAR hash mismatch/);
  } finally {
    caches.close();
  }
  const storeDir = join(out, "nix/store");
  assert.deepEqual(existsSync(storeDir) ? readdirSync(storeDir) : [], []);
});

test("fetchStep realises untampered paths, equal to the store's, one layer or a batch of layers each in its directory", async () => {
  const dir = makeTempDir("fetch-step-good");
  const key = generateCacheKey("fetch-step", join(dir, "key"));
  const url = makeNixCache({
    paths: [fx.greeting, fx.hello],
    dir: join(dir, "cache"),
    compression: "xz",
    secretKeyFile: key.secretKeyFile,
  });
  const caches = await openCaches([url], { trustedKeys: [parsePublicKey(key.publicKey)] }, "/nix/store");
  const out = join(dir, "out");
  const batch = join(dir, "batch");
  const [a, b] = [layerDir([fx.greeting]), layerDir([fx.hello])];
  try {
    await fetchStep(parseStepLayers([fx.greeting]), caches, out);
    await fetchStep(parseStepLayers([`${a}=${fx.greeting}`, `${b}=${fx.hello}`]), caches, batch);
  } finally {
    caches.close();
  }
  for (const [tree, path] of [
    [join(out, fx.greeting), fx.greeting],
    [join(batch, a, fx.greeting), fx.greeting],
    [join(batch, b, fx.hello), fx.hello],
  ])
    assert.deepEqual(run("nix-store", ["--dump", tree]), run("nix-store", ["--dump", path]));
  assert.deepEqual(readdirSync(batch).sort(), [a, b].sort(), "nothing but the layers' directories");
  assert.deepEqual(readdirSync(join(batch, a, "nix/store")), [fx.greeting.slice("/nix/store/".length)]);
});

test("step arguments: DIR=PATH,... layers or plain paths; malformed ones named", () => {
  const p = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x=y";
  assert.deepEqual(parseStepLayers([p]), [{ dir: "", paths: [p] }]);
  assert.deepEqual(parseStepLayers([`0a=${p},${p}2`]), [{ dir: "0a", paths: [p, `${p}2`] }]);
  assert.deepEqual(parseStepLayers([]), []);
  const bad: Array<[string[], string]> = [
    [[`0a=${p}`, p], `${p}: mixes plain store paths with DIR=PATH,... layers`],
    [[`../x=${p}`], `../x=${p}: a layer's directory must be lowercase hex`],
    [[`=${p}`], `=${p}: a layer's directory must be lowercase hex`],
    [["0A=" + p], `0A=${p}: a layer's directory must be lowercase hex`],
    [["0a="], "0a=: a layer with no store paths"],
    [["0a"], "0a: a layer with no store paths"],
    [["0a=,"], "0a=,: a layer with no store paths"],
  ];
  for (const [args, message] of bad)
    assert.throws(
      () => parseStepLayers(args),
      (err: Error) => err.message === message,
      args.join(" "),
    );
  // A layer's directory depends on its set of paths only.
  assert.equal(layerDir([fx.hello, fx.greeting]), layerDir([fx.greeting, fx.hello]));
  assert.notEqual(layerDir([fx.hello]), layerDir([fx.greeting]));
  assert.match(layerDir([fx.hello]), /^[0-9a-f]{20}$/);
});
