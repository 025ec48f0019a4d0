// Checks the test fixtures themselves: the package set builds, runs, is deterministic in shape, and real
// binary caches can be made from it.
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import { existsSync, lstatSync, readFileSync, readdirSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import {
  FIXTURE_ATTRS,
  GC_ROOTS_DIR,
  PACKAGES_NIX,
  buildFixtures,
  generateCacheKey,
  makeNixCache,
  makeTempDir,
  nixNarExtension,
} from "../support/fixtures.js";
import { nixCmd, run, runText } from "../support/run.js";
import { COMPRESSIONS } from "../../src/util/compression.js";

const fx = buildFixtures();
const hashPart = (p: string): string => p.slice("/nix/store/".length, "/nix/store/".length + 32);

describe("fixture package set", () => {
  test("builds every attribute, memoised, rooted", () => {
    assert.equal(buildFixtures(), fx);
    assert.deepEqual(Object.keys(fx).sort(), [...FIXTURE_ATTRS].sort());
    for (const attr of FIXTURE_ATTRS) {
      assert.match(fx[attr], /^\/nix\/store\/[0-9a-z]{32}-/, attr);
      assert.ok(existsSync(fx[attr]) || lstatSync(fx[attr]).isSymbolicLink(), attr);
    }
    assert.equal(readlinkSync(join(GC_ROOTS_DIR, "all")), fx.all);
  });

  test("hello runs with its closure and prints the greeting", () => {
    assert.equal(runText(`${fx.hello}/bin/hello`, []), "Hello from nixoci!");
    assert.equal(readFileSync(`${fx.hello}/bin/hello`, "utf8").split("\n")[0], `#!${fx.busybox}/bin/sh`);
    const refs = runText("nix-store", ["-q", "--references", fx.hello]).split("\n").sort();
    assert.deepEqual(refs, [fx.busybox, fx.greeting].sort());
    assert.equal(runText(`${fx.busybox}/bin/echo`, ["hi"]), "hi");
    for (const applet of ["sh", "echo", "cat", "ls", "env", "true"]) {
      assert.equal(readlinkSync(`${fx.busybox}/bin/${applet}`), "busybox");
    }
  });

  test("the closure of all is the whole set", () => {
    const closure = runText("nix-store", ["-qR", fx.all]).split("\n").sort();
    assert.deepEqual(closure, Object.values(fx).sort());
  });

  test("references", () => {
    const refs = (p: string): string[] =>
      runText("nix-store", ["-q", "--references", p]).split("\n").filter(Boolean).sort();
    assert.deepEqual(refs(fx["self-ref"]), [fx["self-ref"]]);
    assert.deepEqual(refs(fx.tree), [fx.greeting]);
    assert.deepEqual(refs(fx["symlink-path"]), [fx.greeting]);
    assert.deepEqual(refs(fx["single-executable"]), [fx.busybox]);
    assert.deepEqual(refs(fx.big), []);
    assert.deepEqual(refs(fx["empty-dir"]), []);
  });

  test("shapes", () => {
    assert.ok(lstatSync(fx["single-file"]).isFile());
    assert.equal(lstatSync(fx["single-executable"]).mode & 0o111, 0o111);
    assert.ok(lstatSync(fx["symlink-path"]).isSymbolicLink());
    assert.deepEqual(readdirSync(fx["empty-dir"]), []);
    assert.equal(lstatSync(fx["empty-file"]).size, 0);
    const t = fx.tree;
    assert.equal(readlinkSync(`${t}/links/relative-file`), "../data/plain.txt");
    assert.equal(readlinkSync(`${t}/links/absolute-other-store-path`), `${fx.greeting}/share/greeting.txt`);
    assert.equal(readlinkSync(`${t}/links/dangling-relative`), "does-not-exist");
    assert.ok(readlinkSync(`${t}/links/long-target`).length > 1000);
    assert.deepEqual(readdirSync(`${t}/empty-dir`), []);
    assert.equal(lstatSync(`${t}/data/plain.txt`).mode & 0o111, 0);
    assert.equal(lstatSync(`${t}/bin/run`).mode & 0o111, 0o111);
    const longName = readdirSync(`${fx["long-names"]}/dir`).find((n) => n.startsWith("this-is"))!;
    assert.equal(Buffer.byteLength(longName), 255);
    assert.equal(fx["long-names"].length - "/nix/store/".length - 33, 200);
    const names = readdirSync(fx["sort-order"], { encoding: "buffer" }).map((b) => b.toString("utf8"));
    assert.ok(names.includes("é-acute") && names.includes("_underscore") && names.includes("dir"));
    assert.ok(lstatSync(`${fx.big}/random.bin`).size + lstatSync(`${fx.big}/numbers.txt`).size > 2.9e6);
    assert.equal(readFileSync(`${fx["self-ref"]}/share/self-path`, "utf8"), `${fx["self-ref"]}\n`);
  });

  test("deterministic: rebuilding produces the same NARs", () => {
    // --check rebuilds and fails if the output differs.
    for (const attr of ["big", "tree", "sort-order"]) {
      run("nix-build", ["--no-out-link", "--check", PACKAGES_NIX, "-A", attr]);
    }
  });
});

describe("makeNixCache", () => {
  const key = generateCacheKey("nixoci-test-1", makeTempDir("keys"));

  test("generateCacheKey", () => {
    assert.match(key.publicKey, /^nixoci-test-1:[A-Za-z0-9+/]{43}=$/);
    assert.match(key.secretKey, /^nixoci-test-1:[A-Za-z0-9+/]{86}==$/);
  });

  for (const c of COMPRESSIONS) {
    test(`compression ${c}`, () => {
      const dir = makeTempDir(`cache-${c}`);
      // Nix's brotli runs at quality 11 (~1 MB/s here): no busybox for it.
      const [root, closure]: [string, string[]] =
        c === "br" ? [fx.tree, [fx.tree, fx.greeting]] : [fx.hello, [fx.hello, fx.busybox, fx.greeting]];
      const url = makeNixCache({
        paths: [root],
        dir,
        compression: c,
        secretKeyFile: key.secretKeyFile,
        writeNarListing: true,
      });
      assert.equal(url, `file://${dir}`);
      assert.match(readFileSync(join(dir, "nix-cache-info"), "utf8"), /^StoreDir: \/nix\/store$/m);
      for (const p of closure) {
        const narinfo = readFileSync(join(dir, `${hashPart(p)}.narinfo`), "utf8");
        assert.match(narinfo, new RegExp(`^StorePath: ${p}$`, "m"));
        assert.match(narinfo, new RegExp(`^Compression: ${c}$`, "m"));
        assert.match(narinfo, /^Sig: nixoci-test-1:/m);
        const url = /^URL: (nar\/[0-9a-z]{52}\.nar(\.[a-z0-9]+)?)$/m.exec(narinfo);
        assert.ok(url, narinfo);
        assert.equal(url[2] ?? "", nixNarExtension(c));
        assert.ok(existsSync(join(dir, url[1])));
        assert.ok(existsSync(join(dir, `${hashPart(p)}.ls`)));
      }
      // Nix itself can read it back and verify the signatures.
      const info = JSON.parse(
        nixCmd([
          "path-info",
          "--json",
          "--store",
          url,
          "--option",
          "trusted-public-keys",
          key.publicKey,
          root,
        ]).toString(),
      ) as { path: string; signatures?: string[] }[];
      assert.equal(info[0].path, root);
      nixCmd([
        "store",
        "verify",
        "--store",
        url,
        "--option",
        "trusted-public-keys",
        key.publicKey,
        "-r",
        root,
      ]);
    });
  }
});
