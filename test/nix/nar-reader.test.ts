import { test } from "node:test";
import assert from "node:assert/strict";
import { Readable } from "node:stream";
import { fileNameBytes } from "../../src/util/file-names.js";
import { parseNar, type NarHandler } from "../../src/nix/nar-reader.js";
import { NixociError } from "../../src/util/errors.js";
import { badNars, chunked, dir, file, MAGIC, nar, symlink } from "./nar-fixtures.js";

type Event = [string, ...unknown[]];

/** A handler that records every event (reading file contents fully). */
function recorder(events: Event[]): NarHandler {
  return {
    directory(path) {
      events.push(["dir", path.join("/")]);
    },
    symlink(path, target) {
      events.push(["symlink", path.join("/"), target]);
    },
    async file(path, executable, size, contents, narOffset) {
      const parts: Buffer[] = [];
      for await (const c of contents) parts.push(Buffer.from(c));
      events.push([
        "file",
        path.join("/"),
        executable,
        size,
        Buffer.concat(parts).toString("latin1"),
        narOffset,
      ]);
    },
  };
}

const SAMPLE = nar(
  MAGIC,
  dir(
    ["bin", dir(["sh", file("#!/bin/sh\n", true)])],
    ["empty", dir()],
    ["f", file("hello world, this is longer than a chunk\n")],
    ["link", symlink("../f")],
    ["z", file("")],
  ),
);

test("parseNar reports the tree in NAR order with offsets", async () => {
  const events: Event[] = [];
  const { narSize } = await parseNar(chunked(SAMPLE, 1 << 20), recorder(events), { input: "sample" });
  assert.equal(narSize, SAMPLE.length);
  const fOffset = SAMPLE.indexOf("hello world");
  const shOffset = SAMPLE.indexOf("#!/bin/sh");
  assert.deepEqual(events, [
    ["dir", ""],
    ["dir", "bin"],
    ["file", "bin/sh", true, 10, "#!/bin/sh\n", shOffset],
    ["dir", "empty"],
    ["file", "f", false, 41, "hello world, this is longer than a chunk\n", fOffset],
    ["symlink", "link", "../f"],
    ["file", "z", false, 0, "", SAMPLE.indexOf("z\0") + 8 + 16 * 5 + 8],
  ]);
});

test("parseNar gives the same events whatever the chunking", async () => {
  const reference: Event[] = [];
  await parseNar([SAMPLE], recorder(reference), { input: "sample" });
  for (const size of [1, 3, 7, 8, 9, 16, 33, 100]) {
    const events: Event[] = [];
    const { narSize } = await parseNar(chunked(SAMPLE, size), recorder(events), { input: "sample" });
    assert.equal(narSize, SAMPLE.length);
    assert.deepEqual(events, reference, `chunk size ${size}`);
  }
});

test("parseNar accepts a Readable and Uint8Array chunks, and skips contents the handler ignores", async () => {
  const seen: string[] = [];
  const handler: NarHandler = {
    directory: (p) => void seen.push(`d:${p.join("/")}`),
    symlink: (p, t) => void seen.push(`l:${p.join("/")}:${t}`),
    file: (p, x, size) => void seen.push(`f:${p.join("/")}:${x}:${size}`),
  };
  await parseNar(Readable.from([new Uint8Array(SAMPLE)]), handler, { input: "sample" });
  assert.deepEqual(seen, [
    "d:",
    "d:bin",
    "f:bin/sh:true:10",
    "d:empty",
    "f:f:false:41",
    "l:link:../f",
    "f:z:false:0",
  ]);
});

test("parseNar lets a handler read part of the contents; the rest is skipped", async () => {
  const big = Buffer.alloc(100_000, 7);
  const bytes = nar(MAGIC, dir(["a", file(big)], ["b", file("after")]));
  const got: string[] = [];
  await parseNar(
    chunked(bytes, 4096),
    {
      directory() {},
      symlink() {},
      async file(path, _x, _size, contents) {
        for await (const c of contents) {
          got.push(`${path[0]}:${c.length}`);
          break;
        }
      },
    },
    { input: "partial" },
  );
  assert.equal(got.length, 2);
  assert.match(got[0], /^a:\d+$/);
  assert.ok(Number(got[0].slice(2)) <= 4096);
  assert.equal(got[1], "b:5");
});

test("reading contents after the handler returned fails instead of returning other bytes", async () => {
  let saved: AsyncIterable<Buffer> | undefined;
  const bytes = nar(MAGIC, dir(["a", file("x".repeat(50))], ["b", file("y")]));
  await parseNar(
    [bytes],
    {
      directory() {},
      symlink() {},
      file(path, _x, _s, contents) {
        if (path[0] === "a") saved = contents;
      },
    },
    { input: "late" },
  );
  await assert.rejects(async () => {
    for await (const c of saved!) void c;
  }, /read after the handler returned/);
});

test("parseNar stops after the root node: trailing bytes are not read", async () => {
  const bytes = Buffer.concat([nar(MAGIC, file("hi\n")), Buffer.from("trailing garbage")]);
  const { narSize } = await parseNar([bytes], recorder([]), { input: "t" });
  assert.equal(narSize, bytes.length - "trailing garbage".length);
  // Also when the garbage is in a later chunk that the parser never asks for.
  let pulledAfter = false;
  async function* src() {
    yield nar(MAGIC, file("hi\n"));
    pulledAfter = true;
    yield Buffer.from("more");
  }
  await parseNar(src(), recorder([]), { input: "t" });
  assert.equal(pulledAfter, false);
});

test("handler errors propagate unchanged", async () => {
  const boom = new Error("boom");
  await assert.rejects(
    parseNar(
      [SAMPLE],
      {
        directory() {},
        symlink() {},
        file() {
          throw boom;
        },
      },
      { input: "x" },
    ),
    (e) => e === boom,
  );
});

test("maxDepth is configurable and 63 levels are fine by default", async () => {
  let node = dir();
  for (let i = 0; i < 63; i++) node = dir(["d", node]);
  const ok = nar(MAGIC, node);
  await parseNar([ok], recorder([]), { input: "deep" });
  await assert.rejects(
    parseNar([ok], recorder([]), { input: "deep", maxDepth: 10 }),
    /nested more than 9 deep/,
  );
});

test("names are compared bytewise and may be any UTF-8", async () => {
  const events: Event[] = [];
  await parseNar(
    [
      nar(
        MAGIC,
        dir(
          ["10", file("")],
          ["9", file("")],
          ["B", file("")],
          ["a", file("")],
          ["Ä", file("")],
          ["ä", file("")],
        ),
      ),
    ],
    recorder(events),
    { input: "names" },
  );
  assert.deepEqual(
    events.filter((e) => e[0] === "file").map((e) => e[1]),
    ["10", "9", "B", "a", "Ä", "ä"],
  );
});

test("names and targets that are not UTF-8 are accepted, as Nix does, their bytes kept (util/file-names.ts)", async () => {
  const events: Event[] = [];
  const latin1 = Buffer.from([0x63, 0x61, 0x66, 0xe9]); // "café" in Latin-1
  await parseNar(
    [nar(MAGIC, dir(["a", file("")], ["caf\u00e9", file("")], [latin1, symlink(Buffer.from([0x2f, 0xff]))]))],
    recorder(events),
    { input: "latin1" },
  );
  const names = events.filter((e) => e[0] !== "dir").map((e) => e[1]);
  assert.deepEqual(names, ["a", "café", "caf\udce9"]);
  assert.deepEqual(fileNameBytes("caf\udce9"), latin1);
  const link = events.find((e) => e[0] === "symlink")!;
  assert.deepEqual(fileNameBytes(link[2] as string), Buffer.from([0x2f, 0xff]));
});

test("limits are inclusive: 255-byte names and 4095-byte targets are accepted", async () => {
  await parseNar([nar(MAGIC, dir(["n".repeat(255), symlink("/" + "t".repeat(4094))]))], recorder([]), {
    input: "x",
  });
});

for (const bad of badNars()) {
  test(`malformed NAR is rejected: ${bad.name}`, async () => {
    for (const size of [1 << 20, 1, 5]) {
      await assert.rejects(
        parseNar(chunked(bad.bytes, size), recorder([]), { input: `corpus/${bad.name}.nar` }),
        (e: unknown) => {
          assert.ok(e instanceof NixociError, `not a NixociError: ${String(e)}`);
          assert.equal(e.input, `corpus/${bad.name}.nar`);
          assert.ok(
            e.message.startsWith(`corpus/${bad.name}.nar: NAR at byte ${bad.offset}: `),
            `chunk size ${size}: wrong input/offset in: ${e.message}`,
          );
          assert.ok(
            e.message.includes(bad.problem),
            `chunk size ${size}: expected "${bad.problem}" in: ${e.message}`,
          );
          assert.ok(!e.message.includes("\n"));
          return true;
        },
      );
    }
  });
}

test("a huge declared length is rejected as soon as the length is read", async () => {
  // The input claims a 2^40-byte name and then ends: the limit is checked before waiting for (or allocating)
  // the bytes, so the error is about the length, not about truncation.
  const huge = Buffer.alloc(8);
  huge.writeBigUInt64LE(1n << 40n);
  const head = nar(MAGIC, "(", "type", "directory", "entry", "(", "name");
  await assert.rejects(
    parseNar([head, huge], recorder([]), { input: "h" }),
    /1099511627776 bytes long, more than the limit of 255/,
  );
});
