// restoreNar against the real `nix-store --dump`/`--restore`, and its all-or-nothing behaviour on bad NARs.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { restoreNar } from "../../src/nix/nar-restore.js";
import { dumpPath } from "../../src/nix/nar-writer.js";
import { until } from "../support/poll.js";
import { collect } from "../support/streams.js";
import { NixociError } from "../../src/util/errors.js";
import {
  badNars,
  buildStorePath,
  chunked,
  dir,
  file,
  MAGIC,
  makeTree,
  nar,
  nixDump,
  nixRestore,
  snapshot,
  symlink,
} from "./nar-fixtures.js";

let work: string;
before(() => {
  work = fs.mkdtempSync(join(tmpdir(), "nixoci-restore-test-"));
});
after(() => {
  execFileSync("chmod", ["-R", "u+w", work]);
  fs.rmSync(work, { recursive: true, force: true });
});

let n = 0;
/** A fresh, empty directory to restore into. */
function freshDir(): string {
  const d = join(work, `case-${n++}`);
  fs.mkdirSync(d);
  return d;
}

test("round trip: restoreNar(nix-store --dump X), dumped again by nix-store, is the same NAR (names not UTF-8 too)", async () => {
  const src = join(work, "src-tree");
  makeTree(src, { big: true, nonUtf8: true });
  const original = nixDump(src);
  for (const chunk of [1 << 16, 1 << 20, 777]) {
    const dest = join(freshDir(), "out");
    const { narSize } = await restoreNar(chunked(original, chunk), dest, { input: "tree.nar" });
    assert.equal(narSize, original.length);
    assert.ok(nixDump(dest).equals(original), `chunk size ${chunk}`);
  }
});

test("round trip on a real store path, canonicalized like the store", async () => {
  const storePath = buildStorePath(work);
  const original = nixDump(storePath);
  const parent = freshDir();
  const dest = join(parent, "out");
  await restoreNar(Readable.from([original]), dest, { input: storePath, canonicalize: true });
  assert.ok(nixDump(dest).equals(original));
  // Canonical form: mtime 1, modes 0444/0555, directories 0555.
  const check = (p: string) => {
    const st = fs.lstatSync(p);
    if (!st.isSymbolicLink()) {
      const mode = st.mode & 0o7777;
      if (st.isDirectory()) assert.equal(mode, 0o555, p);
      else assert.ok(mode === 0o444 || mode === 0o555, `${p}: ${mode.toString(8)}`);
    }
    assert.equal(st.mtimeMs, 1000, p);
    if (st.isDirectory()) for (const e of fs.readdirSync(p)) check(join(p, e));
  };
  check(dest);
  assert.equal(fs.statSync(join(dest, "bin/run")).mode & 0o777, 0o555);
  assert.equal(fs.statSync(join(dest, "a")).mode & 0o777, 0o444);
  assert.deepEqual(fs.readdirSync(parent), ["out"]);
});

test("without canonicalize: modes 0644/0755 regardless of the umask, mtimes untouched", async () => {
  const bytes = nar(MAGIC, dir(["d", dir(["x", file("run", true)])], ["f", file("data")]));
  const dest = join(freshDir(), "out");
  const old = process.umask(0o077);
  try {
    await restoreNar([bytes], dest, { input: "modes.nar" });
  } finally {
    process.umask(old);
  }
  assert.equal(fs.statSync(dest).mode & 0o7777, 0o755);
  assert.equal(fs.statSync(join(dest, "d")).mode & 0o7777, 0o755);
  assert.equal(fs.statSync(join(dest, "d/x")).mode & 0o7777, 0o755);
  assert.equal(fs.statSync(join(dest, "f")).mode & 0o7777, 0o644);
  assert.ok(fs.statSync(join(dest, "f")).mtimeMs > 1000);
});

test("nix-store --restore accepts our dump, and our restore matches nix-store --restore", async () => {
  const src = join(work, "src-tree-2");
  makeTree(src, { nonUtf8: true });
  const ours = await collect(dumpPath(src));
  const byNix = join(freshDir(), "by-nix");
  nixRestore(ours, byNix);
  const byUs = join(freshDir(), "by-us");
  await restoreNar([ours], byUs, { input: "x" });
  assert.ok(nixDump(byNix).equals(ours));
  assert.ok(nixDump(byUs).equals(ours));
  assert.deepEqual(snapshot(byUs), snapshot(byNix));
});

test("roots that are a single file or a symlink", async () => {
  for (const [name, node] of [
    ["file", file("hello\n")],
    ["exec", file("#!/bin/sh\n", true)],
    ["empty", file("")],
    ["link", symlink("/some/where")],
  ] as const) {
    const bytes = nar(MAGIC, node);
    for (const canonicalize of [false, true]) {
      const parent = freshDir();
      const dest = join(parent, name);
      assert.equal((await restoreNar([bytes], dest, { input: name, canonicalize })).narSize, bytes.length);
      assert.ok(nixDump(dest).equals(bytes), name);
      assert.deepEqual(fs.readdirSync(parent), [name]);
      if (canonicalize) assert.equal(fs.lstatSync(dest).mtimeMs, 1000);
    }
  }
});

test("refuses an existing destination (file, directory, dangling symlink) and leaves it alone", async () => {
  const bytes = nar(MAGIC, file("new"));
  const parent = freshDir();
  fs.writeFileSync(join(parent, "file"), "old");
  fs.mkdirSync(join(parent, "dir"));
  fs.symlinkSync("nowhere", join(parent, "dangling"));
  const before = snapshot(parent);
  for (const name of ["file", "dir", "dangling"]) {
    await assert.rejects(restoreNar([bytes], join(parent, name), { input: "x" }), (e: unknown) => {
      assert.ok(e instanceof NixociError);
      assert.match(e.message, new RegExp(`${name}: already exists`));
      return true;
    });
  }
  assert.deepEqual(snapshot(parent), before);
  assert.equal(fs.readFileSync(join(parent, "file"), "utf8"), "old");
});

for (const bad of badNars()) {
  test(`malformed NAR leaves nothing behind: ${bad.name}`, async () => {
    for (const canonicalize of [false, true]) {
      const parent = freshDir();
      fs.writeFileSync(join(parent, "sibling"), "keep");
      const before = snapshot(parent);
      const dest = join(parent, "out");
      await assert.rejects(
        restoreNar(chunked(bad.bytes, 3), dest, { input: `${bad.name}.nar`, canonicalize }),
        (e: unknown) => {
          assert.ok(e instanceof NixociError, String(e));
          assert.ok(e.message.startsWith(`${bad.name}.nar: NAR at byte ${bad.offset}: `), e.message);
          assert.ok(e.message.includes(bad.problem), e.message);
          return true;
        },
      );
      assert.deepEqual(snapshot(parent), before);
      assert.ok(!fs.existsSync(dest));
    }
  });
}

test("an error after much has been written (read-only directories included) removes everything", async () => {
  const good = nar(
    MAGIC,
    dir(
      ["a", dir(["inner", file("x".repeat(10000), true)], ["ro", dir()])],
      ["b", file("y")],
      ["c", dir(["d", file("z")])],
    ),
  );
  // Cut in the middle of the contents of c/d: a/ (finished, read-only when canonical) and b exist by then.
  const cut = good.subarray(0, good.lastIndexOf("z") + 1);
  for (const canonicalize of [false, true]) {
    const parent = freshDir();
    const dest = join(parent, "out");
    await assert.rejects(restoreNar([cut], dest, { input: "cut.nar", canonicalize }), /truncated NAR/);
    assert.deepEqual(fs.readdirSync(parent), []);
  }
});

test("a failing source stream removes everything and passes its error on", async () => {
  const parent = freshDir();
  async function* source() {
    yield nar(MAGIC, "(", "type", "directory", "entry", "(", "name", "a", "node", ...file("x"), ")");
    throw new Error("network down");
  }
  await assert.rejects(restoreNar(source(), join(parent, "out"), { input: "net" }), /network down/);
  assert.deepEqual(fs.readdirSync(parent), []);
});

test("aborted while the source waits: rejects with the reason at once, and the tree is removed", async () => {
  const parent = freshDir();
  let resume: () => void = () => undefined;
  const more = new Promise<void>((r) => (resume = r));
  const whole = nar(
    MAGIC,
    dir(["a", file("small")], ["b", file(Buffer.alloc(1 << 20, 1))], ["c", file("late")]),
  );
  const cut = whole.length - (1 << 19);
  async function* source() {
    yield whole.subarray(0, cut); // into the middle of b
    await more; // the source stalls until after the abort
    yield whole.subarray(cut);
  }
  const stop = new AbortController();
  const restoring = restoreNar(source(), join(parent, "out"), { input: "slow", signal: stop.signal });
  await until("the temporary tree", 10_000, () => assert.equal(fs.readdirSync(parent).length, 1));
  const tmp = join(parent, fs.readdirSync(parent)[0]);
  await until("b being written", 10_000, () => assert.ok(fs.statSync(join(tmp, "b")).size > 0));
  stop.abort(new Error("stop now"));
  await assert.rejects(restoring, /stop now/);
  assert.deepEqual(fs.readdirSync(parent), []);
  resume(); // the abandoned parse stops at its next step
  // Aborted before it starts: nothing is created.
  await assert.rejects(
    restoreNar(Buffer.from(whole), join(parent, "out"), {
      input: "x",
      signal: AbortSignal.abort(new Error("no")),
    }),
    /no/,
  );
  assert.deepEqual(fs.readdirSync(parent), []);
});

test("symlinks in the NAR are never followed while restoring", async () => {
  // A symlink to a directory outside, then an entry that would go through it if names could contain "/";
  // they cannot, so the best an attacker can do is a symlink followed by a same-named entry (rejected as a
  // duplicate) or entries next to the symlink. Nothing may appear in the target directory.
  const victim = freshDir();
  const parent = freshDir();
  const attempts = [
    nar(MAGIC, dir(["x", symlink(victim)], ["x", dir(["pwned", file("gotcha")])])),
    nar(MAGIC, dir(["x", symlink(victim)], ["x/pwned", file("gotcha")])),
    nar(MAGIC, dir(["x", symlink(victim)], ["y", file("fine")], ["y", file("dup")])),
  ];
  for (const bytes of attempts) {
    await assert.rejects(restoreNar([bytes], join(parent, "out"), { input: "evil.nar" }), NixociError);
    assert.deepEqual(fs.readdirSync(victim), []);
    assert.deepEqual(fs.readdirSync(parent), []);
  }
  // A valid NAR with a symlink pointing outside: restored as a symlink, nothing written through it.
  const ok = nar(MAGIC, dir(["link", symlink(victim)], ["m", file("inside")]));
  await restoreNar([ok], join(parent, "out"), { input: "ok.nar", canonicalize: true });
  assert.equal(fs.readlinkSync(join(parent, "out/link")), victim);
  assert.deepEqual(fs.readdirSync(victim), []);
});

test("a destination with a long name (like a store path's) still gets a temporary sibling", async () => {
  const parent = freshDir();
  const name = "0".repeat(32) + "-" + "n".repeat(211);
  await restoreNar([nar(MAGIC, dir(["f", file("x")]))], join(parent, name), { input: "x" });
  assert.deepEqual(fs.readdirSync(parent), [name]);
});

test("a missing parent directory is an error naming the destination", async () => {
  const dest = join(work, "no-such-parent", "out");
  await assert.rejects(restoreNar([nar(MAGIC, file("x"))], dest, { input: "x" }), (e: unknown) => {
    assert.ok(e instanceof NixociError);
    assert.match(
      e.message,
      /^.*no-such-parent\/out: cannot create the root file \(no such file or directory\)$/,
    );
    return true;
  });
});
