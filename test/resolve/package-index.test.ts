// PackageIndexResolver: an index of prebuilt store paths, realised into the real Nix store from a signed binary
// cache made by `nix copy`, with the nix binary out of reach (PATH holds only xz); index reloads on change,
// revisions, unknown names and architectures, untrusted caches. Also LiteralResolver.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readFileSync, renameSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parsePublicKey } from "../../src/nix/signature.js";
import { LiteralResolver } from "../../src/resolve/literal.js";
import { PackageIndexResolver, parsePackageIndex } from "../../src/resolve/package-index.js";
import { createResolver } from "../../src/resolve/create-resolver.js";
import { RevisionUnavailableError, UnknownPackageError } from "../../src/resolve/resolver.js";
import { BinaryCacheStore } from "../../src/store/binary-cache.js";
import { LocalStore } from "../../src/store/local-store.js";
import { buildFixtures, generateCacheKey, makeNixCache, makeTempDir } from "../support/fixtures.js";
import { run, runText } from "../support/run.js";

const fx = buildFixtures();
const work = makeTempDir("package-index");
const key = generateCacheKey("index-test-1", join(work, "keys"));
const otherKey = generateCacheKey("index-other-1", join(work, "keys"));
const store = new LocalStore();
const opened: BinaryCacheStore[] = [];
const victims: string[] = [];
after(() => {
  store.close();
  for (const s of opened) s.close();
  for (const v of victims) if (existsSync(v)) run("nix-store", ["--delete", v]);
});

/** A fresh store path (random nonce) referencing busybox, put in a signed cache and deleted from the store. */
function makeVictim(name: string): { path: string; url: string } {
  const nonce = Math.random().toString(36).slice(2);
  const expr = `derivation { name = "${name}"; nonce = "${nonce}"; system = builtins.currentSystem;
    builder = "/bin/sh"; args = ["-c" "echo \${builtins.storePath "${fx.busybox}"}/bin/sh > $out"]; }`;
  const path = runText("nix-build", ["--no-out-link", "-E", expr]);
  const dir = join(work, `cache-${name}-${nonce}`);
  const url = makeNixCache({ paths: [path], dir, compression: "xz", secretKeyFile: key.secretKeyFile });
  run("nix-store", ["--delete", path]);
  assert.ok(!existsSync(path));
  victims.push(path);
  return { path, url };
}

async function openCache(url: string, publicKey = key.publicKey): Promise<BinaryCacheStore> {
  const s = await BinaryCacheStore.open(url, { trustedKeys: [parsePublicKey(publicKey)] });
  opened.push(s);
  return s;
}

function writeIndex(file: string, doc: unknown): void {
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, JSON.stringify(doc));
  renameSync(tmp, file); // atomically, as documented
}

/** Runs f with PATH holding nothing but xz (the cache's decompressor): any attempt to run nix fails. */
async function withoutNix<T>(f: () => Promise<T>): Promise<T> {
  const bin = join(work, "bin-xz-only");
  if (!existsSync(bin)) {
    mkdirSync(bin);
    symlinkSync(runText("sh", ["-c", "command -v xz"]), join(bin, "xz"));
  }
  const saved = process.env.PATH;
  process.env.PATH = bin;
  try {
    return await f();
  } finally {
    process.env.PATH = saved;
  }
}

test("resolves index names and substitutes them from a signed cache, without the nix binary", async () => {
  const victim = makeVictim("index-victim");
  const file = join(work, "index.json");
  writeIndex(file, {
    revision: "2026-11-29.1",
    packages: {
      "x86_64-linux": { victim: victim.path, busybox: fx.busybox, pair: [fx.hello, fx.greeting] },
      arm64: { busybox: fx.busybox },
    },
  });
  const r = new PackageIndexResolver({ indexFile: file, store, substituters: [await openCache(victim.url)] });
  assert.equal(await r.currentRevision(), "2026-11-29.1");
  assert.equal(await r.servesRevision("2026-11-29.1"), true);
  assert.equal(await r.servesRevision("2026-11-28.1"), false);

  const paths = await withoutNix(() =>
    r.resolve(["victim", "busybox", "victim"], { revision: "2026-11-29.1", arch: "amd64" }),
  );
  assert.deepEqual(paths.sort(), [fx.busybox, victim.path].sort());
  // Nix itself sees the substituted path as valid, with its reference.
  run("nix-store", ["--check-validity", victim.path]);
  assert.equal(runText("nix-store", ["-q", "--references", victim.path]), fx.busybox);
  assert.equal(readFileSync(victim.path, "utf8"), `${fx.busybox}/bin/sh\n`);

  // A package may be several store paths.
  assert.deepEqual(await r.resolve(["pair"], { revision: "2026-11-29.1", arch: "amd64" }), [
    fx.hello,
    fx.greeting,
  ]);
  // Unknown names are all named; an architecture the index lacks knows nothing.
  await assert.rejects(
    r.resolve(["victim", "nope", "also-nope"], { revision: "2026-11-29.1", arch: "amd64" }),
    (e: unknown) => e instanceof UnknownPackageError && e.packages.join() === "also-nope,nope",
  );
  await assert.rejects(
    r.resolve(["victim"], { revision: "2026-11-29.1", arch: "arm64" }),
    (e: unknown) => e instanceof UnknownPackageError && /for arm64/.test(e.message),
  );
  await assert.rejects(
    r.resolve(["victim"], { revision: "2026-11-29.1", arch: "riscv64" }),
    UnknownPackageError,
  );
  await assert.rejects(r.resolve(["victim"], { revision: "old", arch: "amd64" }), RevisionUnavailableError);
});

test("the index is reloaded when the file changes", async () => {
  const file = join(work, "reload.json");
  writeIndex(file, { revision: "r1", packages: { amd64: { hello: fx.hello } } });
  const r = new PackageIndexResolver({ indexFile: file, store, substituters: [] });
  assert.equal(await r.currentRevision(), "r1");
  assert.deepEqual(await r.resolve(["hello"], { revision: "r1", arch: "amd64" }), [fx.hello]);
  writeIndex(file, { revision: "r2", packages: { amd64: { hello: fx.hello, tree: fx.tree } } });
  assert.equal(await r.currentRevision(), "r2");
  assert.equal(await r.servesRevision("r1"), false);
  await assert.rejects(r.resolve(["hello"], { revision: "r1", arch: "amd64" }), RevisionUnavailableError);
  assert.deepEqual(await r.resolve(["tree"], { revision: "r2", arch: "amd64" }), [fx.tree]);
  // A broken index is an error (not a stale answer), until it is fixed.
  writeIndex(file, { revision: "r3", packages: { amd64: { hello: "/tmp/not-a-store-path" } } });
  await assert.rejects(r.currentRevision(), /reload\.json: packages\.amd64\.hello/);
  writeIndex(file, { revision: "r4", packages: { amd64: { hello: fx.hello } } });
  assert.equal(await r.currentRevision(), "r4");
});

test("paths missing from the store need a cache; untrusted caches are refused", async () => {
  const victim = makeVictim("index-untrusted");
  const file = join(work, "untrusted.json");
  writeIndex(file, { revision: "u1", packages: { "x86_64-linux": { victim: victim.path } } });
  const none = new PackageIndexResolver({ indexFile: file, store, substituters: [] });
  await assert.rejects(
    none.resolve(["victim"], { revision: "u1", arch: "amd64" }),
    /is not in \/nix\/store, and no binary cache is configured/,
  );
  const untrusted = new PackageIndexResolver({
    indexFile: file,
    store,
    substituters: [await openCache(victim.url, otherKey.publicKey)],
  });
  await assert.rejects(untrusted.resolve(["victim"], { revision: "u1", arch: "amd64" }), /signature/);
  assert.ok(!existsSync(victim.path));
});

test("parsePackageIndex validates the document", () => {
  const ok = parsePackageIndex(
    JSON.stringify({ revision: "a.b-1", packages: { x86_64: { a: fx.hello }, "aarch64-linux": {} } }),
    "i.json",
  );
  assert.deepEqual([...ok.packages.keys()].sort(), ["amd64", "arm64"]);
  assert.deepEqual(ok.packages.get("amd64")!.get("a"), [fx.hello]);
  const bad: [unknown, RegExp][] = [
    ["[", /not valid JSON/],
    [[], /must be a JSON object/],
    [{ packages: {} }, /"revision" must be/],
    [{ revision: "has space", packages: {} }, /"revision" must be/],
    [{ revision: "r", packages: [] }, /"packages" must be an object/],
    [{ revision: "r", packages: { mips: {} } }, /unknown architecture "mips"/],
    [{ revision: "r", packages: { amd64: { a: 3 } } }, /packages\.amd64\.a must be a store path/],
    [{ revision: "r", packages: { amd64: { a: [] } } }, /packages\.amd64\.a must be a store path/],
    [{ revision: "r", packages: { amd64: { a: "/nix/store/short" } } }, /i\.json: packages\.amd64\.a/],
  ];
  for (const [doc, re] of bad) {
    assert.throws(() => parsePackageIndex(typeof doc === "string" ? doc : JSON.stringify(doc), "i.json"), re);
  }
});

test("LiteralResolver: store path base names, from the store or a cache", async () => {
  const victim = makeVictim("literal-victim");
  const local = new LiteralResolver({ store });
  assert.equal(await local.currentRevision(), "store");
  assert.equal(await local.servesRevision("anything-at-all"), true);
  const base = (p: string) => p.slice("/nix/store/".length);
  assert.deepEqual(await local.resolve([base(fx.hello)], { revision: "store", arch: "amd64" }), [fx.hello]);
  await assert.rejects(
    local.resolve([base(fx.hello), "hello", base(victim.path)], { revision: "store", arch: "amd64" }),
    (e: unknown) =>
      e instanceof UnknownPackageError && e.packages.join() === [base(victim.path), "hello"].sort().join(),
  );
  const cached = await createResolver({ store, substituters: [await openCache(victim.url)] });
  assert.ok(cached instanceof LiteralResolver);
  assert.deepEqual(
    await withoutNix(() => cached.resolve([base(victim.path)], { revision: "x", arch: "amd64" })),
    [victim.path],
  );
  run("nix-store", ["--check-validity", victim.path]);
});

test("missingPackages, packageNames and architectures answer from the index alone, substituting nothing", async () => {
  const absent = `/nix/store/${"0".repeat(32)}-absent`;
  const file = join(work, "names.json");
  writeIndex(file, {
    revision: "r1",
    packages: { amd64: { hello: fx.hello, absent }, "aarch64-linux": { busybox: fx.busybox } },
  });
  const r = new PackageIndexResolver({ indexFile: file, store, substituters: [] });
  const at = (arch: string) => ({ revision: "r1", arch });
  assert.deepEqual(await r.missingPackages(["nope", "absent", "hello", "busybox"], at("amd64")), [
    "busybox",
    "nope",
  ]);
  assert.deepEqual(await r.missingPackages(["hello", "busybox"], at("arm64")), ["hello"]);
  assert.deepEqual(await r.missingPackages(["hello"], at("riscv64")), ["hello"]);
  assert.equal(await store.queryPathInfo(absent), undefined);
  assert.deepEqual(await r.packageNames(at("amd64")), ["absent", "hello"]);
  assert.deepEqual(await r.packageNames(at("riscv64")), []);
  assert.deepEqual(await r.architectures(), ["amd64", "arm64"]);
  await assert.rejects(
    r.missingPackages(["hello"], { revision: "r0", arch: "amd64" }),
    RevisionUnavailableError,
  );
});

test("LiteralResolver: missingPackages asks the store and the caches, substituting nothing; no names, any architecture", async () => {
  const victim = makeVictim("literal-missing");
  const base = (p: string) => p.slice("/nix/store/".length);
  const names = [base(fx.hello), "hello", base(victim.path)];
  const opts = { revision: "store", arch: "amd64" };
  assert.deepEqual(
    await new LiteralResolver({ store }).missingPackages(names, opts),
    [base(victim.path), "hello"].sort(),
  );
  const cached = new LiteralResolver({ store, substituters: [await openCache(victim.url)] });
  assert.deepEqual(await cached.missingPackages(names, opts), ["hello"]);
  assert.equal(await store.queryPathInfo(victim.path), undefined);
  assert.equal(await cached.packageNames(opts), undefined);
  assert.equal(await cached.architectures(), undefined);
});

test("createResolver picks one source and refuses two", async () => {
  await assert.rejects(
    createResolver({ store, nixFile: "a.nix", indexFile: "i.json" }),
    /only one package source/,
  );
  const r = await createResolver({ store, indexFile: join(work, "reload.json") });
  assert.ok(r instanceof PackageIndexResolver);
  assert.match(r.description, /^package index .*reload\.json$/);
});
