// The metadata cache the frontend's plan step keeps between builds: narinfos and NAR listings remembered in one
// log per binary cache, read before asking the cache, and never trusted more than the cache itself.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { appendFileSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { MetadataLog } from "../../src/store/metadata-cache.js";
import { BinaryCacheStore } from "../../src/store/binary-cache.js";
import { parsePublicKey } from "../../src/nix/signature.js";
import { buildFixtures, generateCacheKey, makeNixCache, makeTempDir } from "../support/fixtures.js";

const NAME = (c: string, ext = "narinfo") => `${c.repeat(32)}.${ext}`;

describe("MetadataLog", () => {
  test("what was put is there for the next process after a flush; names that are not a narinfo's or listing's are not kept", async () => {
    const dir = makeTempDir("metadata-log");
    const a = MetadataLog.open(dir, "https://cache.example");
    assert.equal(a.get(NAME("a")), undefined);
    a.put(NAME("a"), "StorePath: a\n");
    a.put(NAME("b", "ls"), '{"version":1}');
    a.put("../escape.narinfo", "x");
    a.put(`${"c".repeat(32)}.nar`, "x");
    assert.equal(a.get(NAME("a")), "StorePath: a\n", "known at once to this process");
    await a.flush();
    const b = MetadataLog.open(dir, "https://cache.example");
    assert.equal(b.get(NAME("a")), "StorePath: a\n");
    assert.equal(b.get(NAME("b", "ls")), '{"version":1}');
    assert.equal(b.get("../escape.narinfo"), undefined);
    assert.equal(readdirSync(dir).length, 1, "one file per cache");
    // Another cache's log is another file.
    assert.equal(MetadataLog.open(dir, "https://other.example").get(NAME("a")), undefined);
    // The last entry of a name wins.
    b.put(NAME("a"), "StorePath: a2\n");
    await b.flush();
    assert.equal(MetadataLog.open(dir, "https://cache.example").get(NAME("a")), "StorePath: a2\n");
  });

  test("entries older than 30 days, a line cut short and lines that are not entries are skipped; the next append starts a new line", async () => {
    const dir = makeTempDir("metadata-log-bad");
    const log = MetadataLog.open(dir, "u");
    log.put(NAME("a"), "fresh");
    await log.flush();
    const file = log.file;
    const old = Math.floor(Date.now() / 1000) - 31 * 24 * 3600;
    appendFileSync(
      file,
      [
        JSON.stringify([old, NAME("o"), "too old"]),
        "not json",
        JSON.stringify({ name: NAME("x") }),
        JSON.stringify([1, NAME("y")]),
        JSON.stringify([Math.floor(Date.now() / 1000), "../../etc/passwd", "x"]),
        `[${Math.floor(Date.now() / 1000)},"${NAME("z")}","cut sh`, // a process killed while appending
      ].join("\n"),
    );
    const reread = MetadataLog.open(dir, "u");
    assert.equal(reread.get(NAME("a")), "fresh");
    for (const c of ["o", "x", "y", "z"]) assert.equal(reread.get(NAME(c)), undefined, c);
    reread.put(NAME("n"), "after the cut");
    await reread.flush();
    const again = MetadataLog.open(dir, "u");
    assert.equal(again.get(NAME("n")), "after the cut", "the append did not join the cut-short line");
    assert.equal(again.get(NAME("a")), "fresh");
  });

  test("a log grown past its limit is rewritten with its newest entries, in half the limit", async () => {
    const dir = makeTempDir("metadata-log-limit");
    const maxBytes = 4096;
    let log = MetadataLog.open(dir, "u", { maxBytes });
    const names = "abcdefghijklmnopqrstuvwxyz".split("").map((c) => NAME(c));
    for (const n of names) {
      log.put(n, "x".repeat(200));
      await log.flush();
      log = MetadataLog.open(dir, "u", { maxBytes });
    }
    assert.ok(statSync(log.file).size <= maxBytes, `${statSync(log.file).size} bytes`);
    assert.equal(log.get(names.at(-1)!), "x".repeat(200), "the newest is kept");
    assert.equal(log.get(names[0]), undefined, "the oldest went");
  });
});

describe("a binary cache with a metadata cache", () => {
  const fx = buildFixtures();

  test("remembered narinfos and listings are used without asking the cache; one that fails its checks is asked for again", async () => {
    const dir = makeTempDir("metadata-store");
    const key = generateCacheKey("metadata-store", join(dir, "key"));
    const cacheDir = join(dir, "cache");
    const url = makeNixCache({
      paths: [fx.hello],
      dir: cacheDir,
      compression: "none",
      secretKeyFile: key.secretKeyFile,
      writeNarListing: true,
    });
    const trust = { trustedKeys: [parsePublicKey(key.publicKey)] };
    const metaDir = join(dir, "meta");
    rmSync(metaDir, { force: true, recursive: true });
    const { mkdirSync } = await import("node:fs");
    mkdirSync(metaDir);
    const open = async () => {
      let log: MetadataLog | undefined;
      const store = await BinaryCacheStore.open(
        url,
        trust,
        "/nix/store",
        (u) => (log = MetadataLog.open(metaDir, u)),
      );
      return { store, log: log! };
    };
    const hashPart = fx.hello.slice("/nix/store/".length, "/nix/store/".length + 32);
    const narinfoFile = join(cacheDir, `${hashPart}.narinfo`);
    const listingFile = join(cacheDir, `${hashPart}.ls`);
    const genuine = readFileSync(narinfoFile, "utf8");

    const first = await open();
    const info = await first.store.queryPathInfo(fx.hello);
    const listing = await first.store.narListing(fx.hello);
    assert.ok(info && listing);
    await first.log.flush();
    first.store.close();

    // The cache no longer has them: the remembered ones answer, with the same checks passed.
    rmSync(narinfoFile);
    rmSync(listingFile);
    const second = await open();
    assert.deepEqual(await second.store.queryPathInfo(fx.hello), info);
    assert.deepEqual(await second.store.narListing(fx.hello), listing);
    second.store.close();

    // A remembered narinfo altered (its NarHash: the signature no longer matches) is not trusted: the cache's own
    // is asked for and used; with the cache's gone too, the cache does not have the path (never the altered entry).
    const otherHash = genuine.replace(
      /^NarHash: sha256:(.)/m,
      (_m, c: string) => `NarHash: sha256:${c === "0" ? "1" : "0"}`,
    );
    assert.notEqual(otherHash, genuine);
    const tampered = MetadataLog.open(metaDir, second.store.url);
    tampered.put(`${hashPart}.narinfo`, otherHash);
    await tampered.flush();
    writeFileSync(narinfoFile, genuine);
    const third = await open();
    assert.deepEqual(await third.store.queryPathInfo(fx.hello), info);
    await third.log.flush();
    third.store.close();
    assert.equal(
      MetadataLog.open(metaDir, third.store.url).get(`${hashPart}.narinfo`),
      genuine,
      "remembered anew",
    );

    const again = MetadataLog.open(metaDir, third.store.url);
    again.put(`${hashPart}.narinfo`, otherHash);
    await again.flush();
    rmSync(narinfoFile);
    const fourth = await open();
    assert.equal(await fourth.store.queryPathInfo(fx.hello), undefined);
    fourth.store.close();
  });
});
