// The snapshotter's mount plumbing (src/servers/snapshotter/mounts.ts): fstab fields, and read-only bind mounts
// of many paths in one `mount --all --fstab` process (needs root), checked in /proc/self/mountinfo.
import { test, describe, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  bindReadOnly,
  bindReadOnlyFstab,
  fstabField,
  mountsUnder,
  unmountAll,
} from "../../../src/servers/snapshotter/mounts.js";
import { makeTempDir } from "../../support/fixtures.js";

describe("fstab fields", () => {
  test("space, tab, newline and backslash are escaped as libmount reads them", () => {
    assert.equal(fstabField("/a b\tc\nd\\e"), "/a\\040b\\011c\\012d\\134e");
    assert.equal(fstabField("/nix/store/abc-x,y#z"), "/nix/store/abc-x,y#z");
    assert.equal(fstabField("/ü"), "/ü");
    assert.equal(bindReadOnlyFstab([["/s 1", "/t"]]), "/s\\0401 /t none bind,ro 0 0\n");
  });

  test("relative paths, other control characters and lone surrogates are refused", () => {
    for (const p of ["", "rel/path", "/a\rb", "/a\0b", "/a\x1bb", "/a\x7fb", "/a\ud800b"])
      assert.throws(() => fstabField(p), /not an absolute path an fstab entry can hold/, JSON.stringify(p));
  });
});

describe("bindReadOnly", () => {
  const dir = makeTempDir("mounts");
  after(() => unmountAll(dir));
  const fstabDirs = (): string[] => readdirSync(tmpdir()).filter((n) => n.startsWith("nixoci-fstab-"));

  /** Sources with a file each and empty targets, named `names`. */
  function pairs(sub: string, names: string[]): Array<[string, string]> {
    return names.map((n) => {
      const s = join(dir, sub, "src", n);
      const t = join(dir, sub, "dst", n);
      mkdirSync(s, { recursive: true });
      mkdirSync(t, { recursive: true });
      writeFileSync(join(s, "f"), n);
      return [s, t];
    });
  }

  test("every pair is mounted read-only, odd names too, and the fstab file goes", async () => {
    const before = fstabDirs();
    const names = [
      ...Array.from({ length: 200 }, (_, i) => `p${i}`),
      "sp ace",
      "ta\tb",
      "new\nline",
      "back\\slash",
    ];
    const ps = pairs("ok", names);
    await bindReadOnly(ps);
    const mounted = new Map(mountsUnder(join(dir, "ok")).map((m) => [m.mountPoint, m.options]));
    for (const [s, t] of ps) {
      assert.ok(mounted.get(t)?.includes("ro"), `${JSON.stringify(t)} mounted read-only`);
      assert.equal(readFileSync(join(t, "f"), "utf8"), readFileSync(join(s, "f"), "utf8"));
      assert.throws(() => writeFileSync(join(t, "new"), "x"), /EROFS/);
    }
    assert.equal(mounted.size, ps.length);
    assert.deepEqual(fstabDirs(), before);
    await unmountAll(join(dir, "ok"));
    assert.deepEqual(mountsUnder(join(dir, "ok")), []);
  });

  test("a failing entry fails the call, naming its target; the others are mounted", async () => {
    const ps = pairs("bad", ["a", "b", "c"]);
    ps[1] = [join(dir, "bad", "src", "missing"), ps[1][1]];
    await assert.rejects(bindReadOnly(ps), (err: Error) => err.message.includes(ps[1][1]));
    const mounted = mountsUnder(join(dir, "bad")).map((m) => m.mountPoint);
    assert.deepEqual(mounted.sort(), [ps[0][1], ps[2][1]].sort());
    await unmountAll(join(dir, "bad"));
  });

  test("an odd path is refused before anything is mounted", async () => {
    const ps = pairs("odd", ["a"]);
    await assert.rejects(bindReadOnly([...ps, ["/x\ry", join(dir, "odd")]]), /fstab entry/);
    assert.deepEqual(mountsUnder(join(dir, "odd")), []);
  });
});
