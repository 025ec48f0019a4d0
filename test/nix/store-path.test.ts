import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync, chmodSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { NixociError } from "../../src/util/errors.js";
import { Hash, parseHash } from "../../src/nix/hash.js";
import {
  DEFAULT_STORE_DIR,
  StorePath,
  isStorePath,
  makeContentAddressedPath,
  makeFixedOutputPath,
  makeStorePath,
  makeTextPath,
  parseStoreBaseName,
  parseStorePath,
  toStorePathPrefix,
  validateStorePathName,
} from "../../src/nix/store-path.js";

const run = (cmd: string, args: string[]) => execFileSync(cmd, args, { encoding: "utf8" }).trim();

const work = mkdtempSync(join(tmpdir(), "nixoci-store-path-"));
after(() => rmSync(work, { recursive: true, force: true }));

const HASH = "g1w7hy3qg1w7hy3qg1w7hy3qg1w7hy3q";

// A small tree with a file, an executable, a symlink and a subdirectory; its content is random so that
// each run adds new paths to the store (nix would otherwise answer from what is already there).
function makeTree(name: string): string {
  const dir = join(work, name);
  mkdirSync(join(dir, "sub"), { recursive: true });
  writeFileSync(join(dir, "file"), randomBytes(64));
  writeFileSync(join(dir, "sub", "script"), "#!/bin/sh\necho hi\n");
  chmodSync(join(dir, "sub", "script"), 0o755);
  symlinkSync("sub/script", join(dir, "link"));
  return dir;
}

function makeFile(name: string): { file: string; data: Buffer } {
  const file = join(work, name);
  const data = randomBytes(200);
  writeFileSync(file, data);
  return { file, data };
}

const narHashOf = (path: string, algo: "sha1" | "sha256" = "sha256") =>
  Hash.of(algo, execFileSync("nix-store", ["--dump", path], { maxBuffer: 1 << 26 }));

test("reference vector: content-addressed path with a reference and a self-reference", () => {
  const p = makeContentAddressedPath({
    name: "foo",
    narHash: parseHash("sha256:10c209fa0890fe02c85a8c663ca8e7a37cc766bc5b1b29a0cc61b266f64121d3"),
    references: [`/nix/store/${HASH}-bar`],
    selfReference: true,
  });
  assert.equal(p.path, "/nix/store/n5wkd9frr45pa74if5gpz9j7mifg27fh-foo");
  assert.equal(p.baseName, "n5wkd9frr45pa74if5gpz9j7mifg27fh-foo");
  assert.equal(p.hashPart, "n5wkd9frr45pa74if5gpz9j7mifg27fh");
  assert.equal(p.name, "foo");
  assert.equal(p.storeDir, DEFAULT_STORE_DIR);
  assert.equal(String(p), p.path);
  // The same through makeStorePath, and each ingredient matters.
  const inner = "10c209fa0890fe02c85a8c663ca8e7a37cc766bc5b1b29a0cc61b266f64121d3";
  assert.equal(makeStorePath(`source:/nix/store/${HASH}-bar:self`, inner, "foo").path, p.path);
  assert.notEqual(makeStorePath(`source:/nix/store/${HASH}-bar`, inner, "foo").path, p.path);
  assert.notEqual(makeStorePath(`source:/nix/store/${HASH}-bar:self`, inner, "fo").path, p.path);
});

test("nix-store --add (file and directory) gives the content-addressed path", () => {
  for (const src of [makeFile("added-file").file, makeTree("added-dir")]) {
    const expected = run("nix-store", ["--add", src]);
    const narHash = parseHash(run("nix-store", ["-q", "--hash", expected]), "nix-store -q --hash", "sha256");
    assert.ok(narHash.equals(narHashOf(src)));
    const name = src.slice(src.lastIndexOf("/") + 1);
    assert.equal(makeContentAddressedPath({ name, narHash, references: [] }).path, expected);
    assert.equal(makeFixedOutputPath({ name, recursive: true, hash: narHash }).path, expected);
  }
});

test("nix-store --add-fixed (flat, every algorithm) gives the fixed-output path", () => {
  for (const algo of ["md5", "sha1", "sha256", "sha512"] as const) {
    const { file, data } = makeFile(`flat-${algo}`);
    const expected = run("nix-store", ["--add-fixed", algo, file]);
    const p = makeFixedOutputPath({ name: `flat-${algo}`, recursive: false, hash: Hash.of(algo, data) });
    assert.equal(p.path, expected, algo);
  }
});

test("nix-store --add-fixed --recursive (sha256 and sha1) gives the fixed-output path", () => {
  for (const algo of ["sha256", "sha1"] as const) {
    const dir = makeTree(`rec-${algo}`);
    const expected = run("nix-store", ["--add-fixed", "--recursive", algo, dir]);
    const p = makeFixedOutputPath({ name: `rec-${algo}`, recursive: true, hash: narHashOf(dir, algo) });
    assert.equal(p.path, expected, algo);
  }
  // Flat and recursive hashing of the same file are different paths.
  const { file } = makeFile("flat-vs-rec");
  assert.notEqual(
    run("nix-store", ["--add-fixed", "sha256", file]),
    run("nix-store", ["--add-fixed", "--recursive", "sha256", file]),
  );
});

test("builtins.toFile gives the text path, with sorted references", () => {
  const tag = randomBytes(8).toString("hex");
  const expr = `let
      a = builtins.toFile "a" "a ${tag}";
      b = builtins.toFile "b" "b ${tag}";
      plain = builtins.toFile "plain" "hello ${tag}";
      withRefs = builtins.toFile "with-refs" "uses \${b} and \${a}";
    in [ a b plain withRefs ]`;
  const [a, b, plain, withRefs] = JSON.parse(
    run("nix-instantiate", ["--eval", "--strict", "--json", "-E", expr]),
  );
  const text = (name: string, contents: string, references: string[]) =>
    makeTextPath({ name, contentsHash: Hash.of("sha256", contents), references }).path;
  assert.equal(text("a", `a ${tag}`, []), a);
  assert.equal(text("plain", `hello ${tag}`, []), plain);
  // Reference order must not matter.
  assert.equal(text("with-refs", `uses ${b} and ${a}`, [b, a]), withRefs);
  assert.equal(text("with-refs", `uses ${b} and ${a}`, [a, b]), withRefs);
  assert.notEqual(text("with-refs", `uses ${b} and ${a}`, [a]), withRefs);
});

test("a store in another directory (local?store=...) gives paths in that directory", () => {
  const root = join(work, "alt");
  const storeDir = join(root, "store");
  const store = `local?store=${storeDir}&state=${root}/state&log=${root}/log`;
  const { file } = makeFile("alt-file");
  const added = run("nix-store", ["--store", store, "--add", file]);
  assert.ok(added.startsWith(storeDir + "/"));
  const narHash = parseHash(run("nix-store", ["--store", store, "-q", "--hash", added]));
  assert.equal(makeContentAddressedPath({ name: "alt-file", narHash, references: [], storeDir }).path, added);
  assert.notEqual(makeContentAddressedPath({ name: "alt-file", narHash, references: [] }).path, added);
  const parsed = parseStorePath(added, storeDir);
  assert.equal(parsed.storeDir, storeDir);
  assert.throws(() => parseStorePath(added), NixociError);

  const txt = JSON.parse(
    run("nix-instantiate", ["--store", store, "--eval", "--json", "-E", 'builtins.toFile "t" "in alt"']),
  );
  const p = makeTextPath({ name: "t", contentsHash: Hash.of("sha256", "in alt"), references: [], storeDir });
  assert.equal(p.path, txt);
});

test("makeFixedOutputPath refuses references on non-recursive-sha256 paths", () => {
  assert.throws(
    () =>
      makeFixedOutputPath({
        name: "x",
        recursive: false,
        hash: Hash.of("sha256", "x"),
        references: [`/nix/store/${HASH}-bar`],
      }),
    NixociError,
  );
  assert.throws(
    () => makeContentAddressedPath({ name: "x", narHash: Hash.of("sha1", "x"), references: [] }),
    NixociError,
  );
  assert.throws(
    () =>
      makeContentAddressedPath({ name: "x", narHash: Hash.of("sha256", "x"), references: ["/etc/passwd"] }),
    NixociError,
  );
  assert.throws(() => makeStorePath("source", "00".repeat(32), "bad name"), NixociError);
});

test("parseStorePath, parseStoreBaseName and isStorePath accept valid paths", () => {
  const valid = [
    `${HASH}-foo`,
    `${HASH}-a`,
    `${HASH}-hello-2.10`,
    `${HASH}-x.drv`,
    `${HASH}-A+b-c.d_e?f=g`,
    `${HASH}-.foo`, // a dot-file name is fine, only "." and ".." (and ".-"/"..-") are not
    `${HASH}-..foo`,
    `${HASH}-${"x".repeat(211)}`,
    `${"0".repeat(32)}-foo`,
  ];
  for (const base of valid) {
    const p = parseStorePath(`/nix/store/${base}`);
    assert.equal(p.baseName, base);
    assert.equal(p.path, `/nix/store/${base}`);
    assert.equal(parseStoreBaseName(base).path, p.path);
    assert.ok(isStorePath(p.path));
    assert.ok(p instanceof StorePath);
  }
  assert.equal(parseStorePath(`/gnu/store/${HASH}-foo`, "/gnu/store").storeDir, "/gnu/store");
});

// Base names (and full paths built from them) that must be rejected.
const BAD_BASE_NAMES: [what: string, base: string][] = [
  ["empty", ""],
  ["hash only", HASH],
  ["hash and dash, no name", `${HASH}-`],
  ["no dash", `${HASH}foo`],
  ["hash too short", `${HASH.slice(1)}-foo`],
  ["hash too long", `0${HASH}-foo`],
  ["'e' in hash", `e${HASH.slice(1)}-foo`],
  ["'o' in hash", `o${HASH.slice(1)}-foo`],
  ["'u' in hash", `u${HASH.slice(1)}-foo`],
  ["'t' in hash", `t${HASH.slice(1)}-foo`],
  ["upper case hash", `${HASH.toUpperCase()}-foo`],
  ["name too long (212)", `${HASH}-${"x".repeat(212)}`],
  ["name '.'", `${HASH}-.`],
  ["name '..'", `${HASH}-..`],
  ["name '.-x'", `${HASH}-.-x`],
  ["name '..-x'", `${HASH}-..-x`],
  ["space in name", `${HASH}-foo bar`],
  ["slash in name", `${HASH}-foo/bar`],
  ["colon in name", `${HASH}-foo:bar`],
  ["non-ASCII name", `${HASH}-föo`],
  ["NUL in name", `${HASH}-foo\0`],
  ["newline in name", `${HASH}-foo\n`],
];

test("malformed base names are rejected with a NixociError naming the input", () => {
  for (const [what, base] of BAD_BASE_NAMES) {
    assert.throws(
      () => parseStoreBaseName(base, DEFAULT_STORE_DIR, "test-input"),
      (err: unknown) => err instanceof NixociError && err.message.startsWith("test-input: "),
      what,
    );
  }
});

test("malformed store paths are rejected with a NixociError naming the input", () => {
  const bad: [what: string, path: string][] = [
    ...BAD_BASE_NAMES.map(([what, base]): [string, string] => [what, `/nix/store/${base}`]),
    ["outside the store", `/nix/other/${HASH}-foo`],
    ["store dir prefix of another dir", `/nix/storex/${HASH}-foo`],
    ["the store dir itself", "/nix/store"],
    ["the store dir with slash", "/nix/store/"],
    ["relative", `nix/store/${HASH}-foo`],
    ["base name only", `${HASH}-foo`],
    ["trailing slash", `/nix/store/${HASH}-foo/`],
    ["subpath", `/nix/store/${HASH}-foo/bin/sh`],
    ["double slash", `/nix/store//${HASH}-foo`],
    ["double slash at start", `//nix/store/${HASH}-foo`],
    ["dot-dot", `/nix/store/../store/${HASH}-foo`],
    ["dot-dot after", `/nix/store/${HASH}-foo/..`],
    ["dot", `/nix/store/./${HASH}-foo`],
  ];
  for (const [what, path] of bad) {
    assert.throws(
      () => parseStorePath(path, DEFAULT_STORE_DIR, "test-input"),
      (err: unknown) => err instanceof NixociError && err.message.startsWith("test-input: "),
      what,
    );
    assert.equal(isStorePath(path), false, what);
  }
  // A store dir that is not normalised is itself an error.
  for (const dir of ["/nix/store/", "nix/store", "/nix//store", "/nix/../store", "/"]) {
    assert.throws(() => parseStorePath(`${dir}/${HASH}-foo`, dir), NixociError, dir);
  }
});

test("validateStorePathName", () => {
  validateStorePathName("foo");
  validateStorePathName("x".repeat(211));
  for (const name of ["", ".", "..", ".-x", "..-x", "x".repeat(212), "a b", "a/b", "ä"]) {
    assert.throws(
      () => validateStorePathName(name, "test-input"),
      (err: unknown) => err instanceof NixociError && err.message.startsWith("test-input: "),
      JSON.stringify(name),
    );
  }
});

test("toStorePathPrefix finds the store path a path belongs to", () => {
  const base = `${HASH}-foo`;
  for (const p of [
    `/nix/store/${base}`,
    `/nix/store/${base}/`,
    `/nix/store/${base}/bin/sh`,
    `/nix/store/${base}/a/b/`,
  ]) {
    assert.equal(toStorePathPrefix(p, DEFAULT_STORE_DIR).path, `/nix/store/${base}`, p);
  }
  assert.equal(toStorePathPrefix(`/gnu/store/${base}/x`, "/gnu/store").path, `/gnu/store/${base}`);
  const bad = [
    "/nix/store",
    "/nix/store/",
    `/etc/${base}/x`,
    `/nix/store/${base}/../other`,
    `/nix/store/${base}/./x`,
    `/nix/store/${base}//x`,
    `/nix/store//${base}/x`,
    `/nix/store/${HASH.slice(1)}-foo/x`,
    `/nix/store/${HASH}-./x`,
  ];
  for (const p of bad) {
    assert.throws(
      () => toStorePathPrefix(p, DEFAULT_STORE_DIR, "test-input"),
      (err: unknown) => err instanceof NixociError && err.message.startsWith("test-input: "),
      p,
    );
  }
});

test("makeStorePath hashes the documented fingerprint", () => {
  // Independent re-computation of the fingerprint hash for a text path, to pin the byte layout.
  const inner = createHash("sha256").update("hello").digest("hex");
  const fp = `text:sha256:${inner}:/nix/store:hello.txt`;
  const digest = createHash("sha256").update(fp).digest();
  const folded = Buffer.alloc(20);
  digest.forEach((b, i) => (folded[i % 20] ^= b));
  const p = makeStorePath("text", inner, "hello.txt");
  assert.equal(p.hashPart.length, 32);
  assert.deepEqual(Buffer.from(parseHash(`sha1:${p.hashPart}`).digest), folded);
});
