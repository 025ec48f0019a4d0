// Names and symlink targets that are not UTF-8: decoded to strings that keep every byte, and back.
import { test } from "node:test";
import assert from "node:assert/strict";
import { decodeFileName, hasEscapedBytes, joinFilePath, fileNameBytes } from "../../src/util/file-names.js";
import { quote } from "../../src/util/errors.js";

const b = (...bytes: number[]) => Buffer.from(bytes);

test("valid UTF-8 decodes as UTF-8, with no escapes", () => {
  for (const s of ["plain", "café", "Ä/ü", "\u{1f600} emoji", "a\u{10080}b"]) {
    const bytes = Buffer.from(s, "utf8");
    assert.equal(decodeFileName(bytes), s);
    assert.equal(hasEscapedBytes(decodeFileName(bytes)), false);
    assert.deepEqual(fileNameBytes(s), bytes);
  }
});

test("bytes outside valid UTF-8 become escapes, one per byte, and come back exactly", () => {
  const cases: [Buffer, string][] = [
    [b(0x61, 0xff), "a\udcff"],
    [b(0xe9), "\udce9"], // Latin-1 é
    [b(0xc3), "\udcc3"], // a truncated sequence
    [b(0xc3, 0x41), "\udcc3A"],
    [b(0xc0, 0x80), "\udcc0\udc80"], // overlong NUL
    [b(0xed, 0xa0, 0x80), "\udced\udca0\udc80"], // a UTF-16 surrogate written as UTF-8 (CESU-8)
    [b(0xf4, 0x90, 0x80, 0x80), "\udcf4\udc90\udc80\udc80"], // past U+10FFFF
    [b(0xf0, 0x9f, 0x98, 0x80, 0xe9), "\u{1f600}\udce9"], // a pair's low half (U+DE00), then an escape
    [b(0xf0, 0x90, 0x82, 0x80, 0x80), "\u{10080}\udc80"], // a pair whose low half is U+DC80, then an escape
  ];
  for (const [bytes, expected] of cases) {
    const s = decodeFileName(bytes);
    assert.equal(s, expected, bytes.toString("hex"));
    assert.ok(hasEscapedBytes(s));
    assert.deepEqual(fileNameBytes(s), bytes, bytes.toString("hex"));
  }
  assert.equal(hasEscapedBytes("\u{10080}"), false, "a pair's low half is not an escape");
});

test("every byte string round-trips, and different byte strings decode differently", () => {
  let seed = 7;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const seen = new Map<string, string>();
  for (let i = 0; i < 20000; i++) {
    const len = 1 + Math.floor(rand() * 8);
    // Bytes weighted towards the interesting ranges: ASCII, continuation bytes and lead bytes.
    const pick = [() => 0x41, () => 0x80 + Math.floor(rand() * 64), () => 0xc0 + Math.floor(rand() * 64)];
    const bytes = Buffer.from(Array.from({ length: len }, () => pick[Math.floor(rand() * 3)]()));
    const s = decodeFileName(bytes);
    assert.deepEqual(fileNameBytes(s), bytes, bytes.toString("hex"));
    const other = seen.get(s);
    assert.ok(
      other === undefined || other === bytes.toString("hex"),
      `${other} and ${bytes.toString("hex")}`,
    );
    seen.set(s, bytes.toString("hex"));
  }
});

test("joinFilePath is a string for plain names and the exact bytes otherwise", () => {
  assert.equal(joinFilePath("/tmp/x", []), "/tmp/x");
  assert.equal(joinFilePath("/tmp/x", ["a", "café"]), "/tmp/x/a/café");
  assert.deepEqual(
    joinFilePath("/tmp/x", ["a", decodeFileName(b(0x62, 0xe9))]),
    Buffer.from([...Buffer.from("/tmp/x/a/b"), 0xe9]),
  );
});

test("error messages quote bytes as UTF-8, with the others as escapes (not as Latin-1)", () => {
  assert.equal(quote(Buffer.from("café")), '"café"');
  assert.equal(quote(b(0x63, 0x61, 0x66, 0xe9)), '"caf\\udce9"');
});
