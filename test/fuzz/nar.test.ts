// Fuzzing the NAR reader and restorer (bytes from binary caches and from `nixoci nar restore` are untrusted), and
// the round trip property on generated trees: dump(tree) == nix-store --dump(tree), restore(dump(x)) == x.
import { test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import { join } from "node:path";
import { Readable } from "node:stream";
import fc from "fast-check";
import { parseNar, type NarHandler } from "../../src/nix/nar-reader.js";
import { restoreNar } from "../../src/nix/nar-restore.js";
import { dumpPath } from "../../src/nix/nar-writer.js";
import { NixociError } from "../../src/util/errors.js";
import { badNars, dir, file, MAGIC, nar, symlink } from "../nix/nar-fixtures.js";
import { makeTempDir } from "../support/fixtures.js";
import { fuzz, FUZZ_RUNS, mutated } from "../support/fuzz.js";
import { run } from "../support/run.js";

const SEEDS = [
  nar(MAGIC, file("hi\n")),
  nar(MAGIC, file("#!/bin/sh\n", true)),
  nar(MAGIC, symlink("../target")),
  nar(MAGIC, dir()),
  nar(
    MAGIC,
    dir(
      ["a", file("x".repeat(20))],
      ["b", dir(["c", symlink("/nix/store/x")], ["d", file("", true)])],
      ["e", dir()],
    ),
  ),
  ...badNars().map((b) => b.bytes),
];

/** Reads every file's contents, as a consumer would; counts nodes. */
function countingHandler(): NarHandler & { nodes: number } {
  const h = {
    nodes: 0,
    directory() {
      h.nodes++;
    },
    symlink() {
      h.nodes++;
    },
    async file(_p: readonly string[], _x: boolean, _size: number, contents: AsyncIterable<Buffer>) {
      h.nodes++;
      for await (const c of contents) void c;
    },
  };
  return h;
}

/** Source chunks of varying sizes, so every boundary of the reader's buffering gets crossed. */
function chunked(b: Buffer, size: number): Buffer[] {
  const out: Buffer[] = [];
  for (let i = 0; i < b.length; i += size) out.push(b.subarray(i, i + size));
  return out;
}

async function concat(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

test("fuzz: the NAR reader accepts or rejects with a NixociError, whatever the bytes and chunking", async () => {
  await fuzz("nar-reader", mutated(SEEDS), async (input) => {
    for (const size of [1, 7, 4096]) {
      try {
        await parseNar(chunked(input, size), countingHandler(), { input: "fuzz" });
      } catch (e) {
        if (!(e instanceof NixociError)) throw e;
        assert.match(e.message, /^fuzz: /);
      }
    }
  });
});

test("fuzz: restore leaves exactly the tree or nothing, and a restored tree dumps back to the same NAR", async () => {
  const parent = makeTempDir("fuzz-restore");
  let n = 0;
  await fuzz(
    "nar-restore",
    mutated(SEEDS),
    async (input) => {
      const area = join(parent, String(n++));
      fs.mkdirSync(area);
      const dest = join(area, "out");
      let narSize: number | undefined;
      try {
        ({ narSize } = await restoreNar(chunked(input, 512), dest, { input: "fuzz" }));
      } catch (e) {
        if (!(e instanceof NixociError)) throw e;
      }
      // Nothing but the destination (on success) in the area: no temporary, nothing beside it.
      assert.deepEqual(fs.readdirSync(area), narSize === undefined ? [] : ["out"]);
      if (narSize !== undefined) assert.deepEqual(await concat(dumpPath(dest)), input.subarray(0, narSize));
      fs.rmSync(area, { recursive: true, force: true });
    },
    { runs: Math.ceil(FUZZ_RUNS / 3) },
  );
});

// ---- generated trees ----

type Tree =
  | { kind: "file"; contents: Uint8Array; executable: boolean }
  | { kind: "symlink"; target: string }
  | { kind: "dir"; entries: [string, Tree][] };

/** Entry names as Nix allows them: 1-255 bytes, no "/" or NUL, not "." or "..". */
const entryName = fc
  .string({
    unit: fc.oneof(
      fc.constantFrom("a", "B", ".", "-", "_", " ", "é", "\u{1f600}", "~"),
      fc.string({ unit: "binary", minLength: 1, maxLength: 1 }),
    ),
    minLength: 1,
    maxLength: 12,
  })
  .filter(
    (s) => !s.includes("/") && !s.includes("\0") && s !== "." && s !== ".." && Buffer.byteLength(s) <= 255,
  );

const tree: fc.Arbitrary<Tree> = fc.letrec<{ node: Tree }>((tie) => ({
  node: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    fc.record({
      kind: fc.constant("file" as const),
      contents: fc.uint8Array({ maxLength: 300 }),
      executable: fc.boolean(),
    }),
    fc.record({
      kind: fc.constant("symlink" as const),
      target: fc.string({ minLength: 1, maxLength: 40 }).filter((s) => !s.includes("\0")),
    }),
    fc.record({
      kind: fc.constant("dir" as const),
      entries: fc.uniqueArray(fc.tuple(entryName, tie("node")), { maxLength: 5, selector: ([name]) => name }),
    }),
  ),
})).node;

function write(path: string, t: Tree): void {
  if (t.kind === "file") {
    fs.writeFileSync(path, t.contents, { mode: t.executable ? 0o755 : 0o644 });
  } else if (t.kind === "symlink") {
    fs.symlinkSync(t.target, path);
  } else {
    fs.mkdirSync(path);
    for (const [name, child] of t.entries) write(join(path, name), child);
  }
}

test("property: dump(tree) equals nix-store --dump; restore(dump(tree)) dumps to the same bytes", async () => {
  const parent = makeTempDir("fuzz-trees");
  let n = 0;
  await fc.assert(
    fc.asyncProperty(tree, async (t) => {
      const area = join(parent, String(n++));
      fs.mkdirSync(area);
      write(join(area, "in"), t);
      const dumped = await concat(dumpPath(join(area, "in")));
      assert.deepEqual(dumped, run("nix-store", ["--dump", join(area, "in")]));
      await restoreNar(chunked(dumped, 100), join(area, "out"), { input: "round trip" });
      assert.deepEqual(await concat(dumpPath(join(area, "out"))), dumped);
      fs.rmSync(area, { recursive: true, force: true });
    }),
    { numRuns: Math.ceil(FUZZ_RUNS / 3) },
  );
});
