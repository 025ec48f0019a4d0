// makeDirs/makeDirsSync, the mkdir -p every writer uses: siblings made at once under a missing parent all succeed
// (one of them makes the parent while the others' first mkdir already failed), modes apply to every level, and a
// directory under /proc (where Node's own recursive mkdir never returns) fails with ENOENT naming it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { makeDirs, makeDirsSync, writeFileAtomic } from "../../src/util/fs.js";
import { makeTempDir } from "../support/fixtures.js";

test("makeDirs: siblings made at once under a missing parent all exist afterwards", async () => {
  const base = makeTempDir("fs-makedirs");
  for (let round = 0; round < 20; round++) {
    const parent = join(base, `r${round}`);
    const dirs = Array.from({ length: 20 }, (_, i) => join(parent, `d${i}`));
    // Started one event-loop turn apart, so one call's mkdir of the parent lands between another's failed mkdir
    // and its look at the parent.
    const calls: Promise<void>[] = [];
    for (const d of dirs) {
      calls.push(makeDirs(d));
      await new Promise((resolve) => setImmediate(resolve));
    }
    await Promise.all(calls);
    for (const d of dirs) assert.ok(statSync(d).isDirectory(), d);
  }
  await makeDirs(join(base, "r0", "d0")); // already there: nothing to do
});

test("makeDirs and makeDirsSync give every directory they create the mode (before the umask)", async () => {
  const base = makeTempDir("fs-makedirs-mode");
  const umask = process.umask(0o022);
  try {
    await makeDirs(join(base, "a", "b"), 0o700);
    makeDirsSync(join(base, "c", "d"), 0o750);
  } finally {
    process.umask(umask);
  }
  for (const [d, mode] of [
    ["a", 0o700],
    ["a/b", 0o700],
    ["c", 0o750],
    ["c/d", 0o750],
  ] as const)
    assert.equal(statSync(join(base, d)).mode & 0o777, mode, d);
});

test("under /proc: ENOENT naming the directory that cannot be made, at once", async () => {
  for (const dir of ["/proc/nixoci-makedirs", "/proc/nixoci-makedirs/x/y"]) {
    await assert.rejects(makeDirs(dir), { code: "ENOENT", path: "/proc/nixoci-makedirs" });
    assert.throws(() => makeDirsSync(dir), { code: "ENOENT", path: "/proc/nixoci-makedirs" });
  }
});

test("writeFileAtomic: a bare file name is written in the working directory, under a temporary name first", async () => {
  const dir = makeTempDir("fs-atomic");
  const cwd = process.cwd();
  process.chdir(dir);
  try {
    await writeFileAtomic("out.json", "{}\n");
    await writeFileAtomic("./b", "b");
  } finally {
    process.chdir(cwd);
  }
  assert.equal(readFileSync(join(dir, "out.json"), "utf8"), "{}\n");
  assert.deepEqual(readdirSync(dir).sort(), ["b", "out.json"]);
});
