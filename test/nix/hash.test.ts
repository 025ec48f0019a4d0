import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { NixociError } from "../../src/util/errors.js";
import { Hash, decodeBase64Strict, hashSize, parseHash, type HashAlgo } from "../../src/nix/hash.js";

const ALGOS: HashAlgo[] = ["md5", "sha1", "sha256", "sha512"];
const nix = (...args: string[]) =>
  execFileSync("nix", ["--extra-experimental-features", "nix-command", ...args], { encoding: "utf8" }).trim();

test("Hash.of and toString in every format (sha256 of 'abc')", () => {
  const h = Hash.of("sha256", "abc");
  assert.equal(h.toString(), "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s");
  assert.equal(h.toString("nix32"), "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s");
  assert.equal(
    h.toString("base16"),
    "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  );
  assert.equal(h.toString("base64"), "sha256:ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
  assert.equal(h.toString("sri"), "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
  assert.ok(h.equals(Hash.of("sha256", Buffer.from("abc"))));
  assert.ok(!h.equals(Hash.of("sha256", "abd")));
  assert.ok(!Hash.of("sha1", "abc").equals(Hash.of("md5", "abc")));
});

test("hashSize", () => {
  assert.deepEqual(
    ALGOS.map((a) => hashSize(a)),
    [16, 20, 32, 64],
  );
});

test("formats and parsing agree with `nix hash file` for every algorithm", () => {
  const dir = mkdtempSync(join(tmpdir(), "nixoci-hash-"));
  const file = join(dir, "data");
  const data = randomBytes(1000);
  writeFileSync(file, data);
  for (const algo of ALGOS) {
    const ours = Hash.of(algo, data);
    const fromNix = {
      base16: nix("hash", "file", "--type", algo, "--base16", file),
      nix32: nix("hash", "file", "--type", algo, "--base32", file),
      base64: nix("hash", "file", "--type", algo, "--base64", file),
      sri: nix("hash", "file", "--type", algo, "--sri", file),
    };
    assert.equal(ours.toString("base16"), `${algo}:${fromNix.base16}`);
    assert.equal(ours.toString("nix32"), `${algo}:${fromNix.nix32}`);
    assert.equal(ours.toString("base64"), `${algo}:${fromNix.base64}`);
    assert.equal(ours.toString("sri"), fromNix.sri);
    for (const s of [
      `${algo}:${fromNix.base16}`,
      `${algo}:${fromNix.nix32}`,
      `${algo}:${fromNix.base64}`,
      fromNix.sri,
    ]) {
      const parsed = parseHash(s, "nix output", algo);
      assert.ok(parsed.equals(ours), s);
    }
  }
});

test("parseHash accepts upper-case base16 and round-trips every format", () => {
  const h = Hash.of("sha512", "round trip");
  assert.ok(parseHash(`sha512:${h.digest.toString("hex").toUpperCase()}`).equals(h));
  for (const algo of ALGOS) {
    const x = Hash.of(algo, randomBytes(10));
    for (const f of ["nix32", "base16", "base64", "sri"] as const)
      assert.ok(parseHash(x.toString(f)).equals(x));
  }
});

test("parseHash rejects malformed hashes with a NixociError naming the input", () => {
  const h = Hash.of("sha256", "abc");
  const nix32 = h.toString("nix32").slice("sha256:".length);
  const hex = h.toString("base16").slice("sha256:".length);
  const b64 = h.toString("base64").slice("sha256:".length);
  const bad: [what: string, s: string, expected?: HashAlgo][] = [
    ["empty", ""],
    ["no prefix", nix32],
    ["unknown algorithm", `sha3:${nix32}`],
    ["upper-case algorithm", `SHA256:${nix32}`],
    ["algorithm mismatch", `sha1:${Hash.of("sha1", "x").toString("nix32").slice(5)}`, "sha256"],
    ["sha512 where sha256 expected", Hash.of("sha512", "x").toString(), "sha256"],
    ["nix32 too short", `sha256:${nix32.slice(1)}`],
    ["nix32 too long", `sha256:0${nix32}`],
    ["nix32 bad char", `sha256:${nix32.slice(0, -1)}e`],
    ["nix32 overflow", `sha256:z${nix32.slice(1)}`],
    ["base16 bad char", `sha256:${hex.slice(0, -1)}g`],
    ["base16 odd length", `sha256:${hex.slice(1)}`],
    ["base64 bad char", `sha256:${b64.slice(0, -2)}!=`],
    ["base64 url-safe", `sha256:${b64.replace("+", "-")}`],
    ["base64 missing padding", `sha256:${b64.slice(0, -1)}`],
    ["base64 non-canonical", `md5:${Hash.of("md5", "x").toString("base64").slice(4, -3)}B==`],
    ["SRI with nix32", `sha256-${nix32}`],
    ["SRI with hex", `sha256-${hex}`],
    ["SRI too short", `sha256-${b64.slice(4)}`],
    ["trailing newline", `${h.toString()}\n`],
    ["leading space", ` ${h.toString()}`],
  ];
  for (const [what, s, expected] of bad) {
    assert.throws(
      () => parseHash(s, "test-input", expected),
      (err: unknown) => err instanceof NixociError && err.message.startsWith("test-input: "),
      what,
    );
  }
});

test("decodeBase64Strict", () => {
  assert.deepEqual(decodeBase64Strict("YWJj", "x"), Buffer.from("abc"));
  assert.deepEqual(decodeBase64Strict("YQ==", "x"), Buffer.from("a"));
  for (const s of ["YQ=", "YR==", "Y Q==", "YWJj\n", "YW=j", "====", "Y==="]) {
    assert.throws(() => decodeBase64Strict(s, "test-input"), /^NixociError: test-input: /, s);
  }
});
