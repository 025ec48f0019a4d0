import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { NixociError } from "../../src/util/errors.js";
import { isNix32Chars, nix32Decode, nix32Encode, nix32Length } from "../../src/nix/nix32.js";

const VECTORS: [hex: string, nix32: string][] = [
  // sha256("abc") and the sha1 vector from the reference.
  [createHash("sha256").update("abc").digest("hex"), "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"],
  ["800d59cfcd3c05e900cb4e214be48f6b886a08df", "vw46m23bizj4n8afrc0fj19wrp7mj3c0"],
  ["", ""],
  ["00", "00"],
  ["ff", "7z"],
  ["0000000000000000000000000000000000000000", "00000000000000000000000000000000"],
];

test("nix32 vectors encode and decode", () => {
  for (const [hex, nix32] of VECTORS) {
    assert.equal(nix32Encode(Buffer.from(hex, "hex")), nix32, hex);
    assert.equal(nix32Decode(nix32).toString("hex"), hex, nix32);
  }
});

test("nix32Length", () => {
  const table: [number, number][] = [
    [0, 0],
    [1, 2],
    [16, 26],
    [20, 32],
    [32, 52],
    [64, 103],
  ];
  for (const [bytes, chars] of table) assert.equal(nix32Length(bytes), chars, `${bytes} bytes`);
});

test("nix32 round-trips random byte strings of every length up to 70", () => {
  for (let len = 0; len <= 70; len++) {
    const bytes = randomBytes(len);
    const s = nix32Encode(bytes);
    assert.equal(s.length, nix32Length(len));
    assert.ok(isNix32Chars(s));
    assert.deepEqual(nix32Decode(s), bytes);
  }
});

test("nix32Encode agrees with nix-hash --to-base32 on random digests", () => {
  const digests = Array.from({ length: 20 }, () => randomBytes(32).toString("hex"));
  const out = execFileSync("nix-hash", ["--type", "sha256", "--to-base32", ...digests], { encoding: "utf8" });
  const expected = out.trim().split("\n");
  assert.equal(expected.length, digests.length);
  digests.forEach((hex, i) => {
    assert.equal(nix32Encode(Buffer.from(hex, "hex")), expected[i]);
    assert.equal(nix32Decode(expected[i]).toString("hex"), hex);
  });
});

test("nix32Decode rejects malformed strings with a NixociError naming the input", () => {
  const valid = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";
  const bad: [what: string, s: string][] = [
    ["letter e", "e" + valid.slice(1)],
    ["letter o", valid.slice(0, 10) + "o" + valid.slice(11)],
    ["letter u", valid.slice(0, 20) + "u" + valid.slice(21)],
    ["letter t", valid.slice(0, -1) + "t"],
    ["upper case", valid.toUpperCase()],
    ["non-ASCII", valid.slice(0, -1) + "é"],
    ["space", valid.slice(0, -1) + " "],
    ["length 1", "0"],
    ["length 3", "000"],
    ["one char short", valid.slice(1)],
    // 52 chars carry 260 bits for 256: the first character may only be 0 or 1.
    ["overflow bits", "2" + valid.slice(1)],
    ["overflow bits (z)", "z" + valid.slice(1)],
  ];
  for (const [what, s] of bad) {
    assert.throws(
      () => nix32Decode(s, "test-input"),
      (err: unknown) => err instanceof NixociError && err.message.startsWith("test-input: "),
      what,
    );
  }
});
