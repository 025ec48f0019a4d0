import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NixociError } from "../../src/util/errors.js";
import { parseCacheInfo, serializeCacheInfo, type CacheInfo } from "../../src/nix/cache-info.js";

const NIX = ["--extra-experimental-features", "nix-command"];
const work = mkdtempSync(join(tmpdir(), "nixoci-cache-info-"));
after(() => rmSync(work, { recursive: true, force: true }));

test("parses what cache.nixos.org serves", () => {
  assert.deepEqual(parseCacheInfo("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n", "t"), {
    storeDir: "/nix/store",
    wantMassQuery: true,
    priority: 40,
  });
});

test("defaults, trimming, unknown keys and lines without a colon", () => {
  const defaults: CacheInfo = { storeDir: "/nix/store", wantMassQuery: false, priority: 50 };
  assert.deepEqual(parseCacheInfo("", "t"), defaults);
  assert.deepEqual(parseCacheInfo("StoreDir: /nix/store\n", "t"), defaults);
  assert.deepEqual(
    parseCacheInfo(
      "junk line\nGetNarInfosV1: /x\n\nStoreDir:/gnu/store  \nPriority:  -3\nWantMassQuery: 0",
      "t",
    ),
    { storeDir: "/gnu/store", wantMassQuery: false, priority: -3 },
  );
});

test("serializes like Nix 2.8 writes a new file:// cache", () => {
  const cache = join(work, "cache");
  const file = join(work, "f");
  writeFileSync(file, "cache-info test\n");
  const path = execFileSync("nix-store", ["--add", file], { encoding: "utf8" }).trim();
  execFileSync("nix", [...NIX, "copy", "--to", `file://${cache}`, path]);
  const written = readFileSync(join(cache, "nix-cache-info"), "utf8");
  const parsed = parseCacheInfo(written, "nix-cache-info");
  assert.equal(serializeCacheInfo(parsed), written);
  assert.equal(written, "StoreDir: /nix/store\n");
});

test("serializes non-default values, and round-trips", () => {
  const infos: [CacheInfo, string][] = [
    [
      { storeDir: "/nix/store", wantMassQuery: true, priority: 30 },
      "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n",
    ],
    [{ storeDir: "/gnu/store", wantMassQuery: false, priority: 0 }, "StoreDir: /gnu/store\nPriority: 0\n"],
    [
      { storeDir: "/nix/store", wantMassQuery: true, priority: 50 },
      "StoreDir: /nix/store\nWantMassQuery: 1\n",
    ],
  ];
  for (const [info, text] of infos) {
    assert.equal(serializeCacheInfo(info), text);
    assert.deepEqual(parseCacheInfo(text, "t"), info);
  }
});

test("Nix honours the nix-cache-info we write", () => {
  // A cache whose nix-cache-info we wrote, for another store dir: Nix must refuse it, naming that dir.
  const cache = join(work, "foreign");
  const file = join(work, "g");
  writeFileSync(file, "foreign\n");
  const path = execFileSync("nix-store", ["--add", file], { encoding: "utf8" }).trim();
  execFileSync("nix", [...NIX, "copy", "--to", `file://${cache}`, path]);
  writeFileSync(
    join(cache, "nix-cache-info"),
    serializeCacheInfo({ storeDir: "/gnu/store", wantMassQuery: true, priority: 10 }),
  );
  assert.throws(
    () => execFileSync("nix", [...NIX, "path-info", "--store", `file://${cache}`, path], { stdio: "pipe" }),
    (err: { stderr?: Buffer }) => /\/gnu\/store/.test(String(err.stderr)),
  );
  writeFileSync(
    join(cache, "nix-cache-info"),
    serializeCacheInfo({ storeDir: "/nix/store", wantMassQuery: true, priority: 10 }),
  );
  const out = execFileSync("nix", [...NIX, "path-info", "--store", `file://${cache}`, path], {
    encoding: "utf8",
  });
  assert.equal(out.trim(), path);
});

test("malformed values are rejected with a NixociError naming the input", () => {
  const bad: [string, string][] = [
    ["Priority not a number", "Priority: high\n"],
    ["Priority fractional", "Priority: 1.5\n"],
    ["Priority empty", "Priority:\n"],
    ["Priority with garbage", "Priority: 30x\n"],
    ["Priority out of int range", "Priority: 2147483648\n"],
    ["WantMassQuery not 0/1", "WantMassQuery: yes\n"],
    ["WantMassQuery empty", "WantMassQuery: \n"],
    ["StoreDir relative", "StoreDir: nix/store\n"],
    ["StoreDir empty", "StoreDir: \n"],
    ["StoreDir trailing slash", "StoreDir: /nix/store/\n"],
    ["duplicate StoreDir", "StoreDir: /nix/store\nStoreDir: /gnu/store\n"],
    ["duplicate Priority", "Priority: 1\nPriority: 2\n"],
  ];
  for (const [what, text] of bad) {
    assert.throws(
      () => parseCacheInfo(text, "test-input"),
      (err: unknown) => err instanceof NixociError && err.message.startsWith("test-input: "),
      what,
    );
  }
});
