// Target mode's mountpoints directories (src/servers/snapshotter/mountpoints.ts): on /dev/shm by default, in a
// directory only this user may use (a symlink or a shared directory planted there is refused with one line
// naming it); a chain's directory holds an empty mountpoint per store path, is made once, and is swept when its
// chain is gone.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readlinkSync,
  rmSync,
  symlinkSync,
} from "node:fs";
import { basename, join } from "node:path";
import { defaultMountpointsDir, MountpointDirs } from "../../../src/servers/snapshotter/mountpoints.js";
import { snapshotterInstance } from "../../../src/servers/snapshotter/gcroots.js";
import { buildFixtures } from "../../support/fixtures.js";

test("the default is on /dev/shm, per snapshotter root", () => {
  const dir = defaultMountpointsDir("/var/lib/nixoci/snapshotter");
  assert.equal(dir, `/dev/shm/nixoci-${snapshotterInstance("/var/lib/nixoci/snapshotter")}`);
  assert.notEqual(dir, defaultMountpointsDir("/var/lib/other"));
});

test("a planted symlink or a shared directory at the place is refused", () => {
  const root = mkdtempSync(join("/tmp", "nixoci-mp-root-"));
  const place = defaultMountpointsDir(root);
  const elsewhere = mkdtempSync(join("/tmp", "nixoci-mp-elsewhere-"));
  try {
    symlinkSync(elsewhere, place);
    assert.throws(
      () => new MountpointDirs(place),
      new Error(
        `${place}: not a private directory of this user (a symlink, owner 0, mode 777); remove it, or give --mountpoints-dir`,
      ),
    );
    rmSync(place);
    mkdirSync(place);
    chmodSync(place, 0o1777);
    assert.throws(
      () => new MountpointDirs(place),
      /not a private directory of this user \(a directory, owner 0, mode 777\)/,
    );
    assert.deepEqual(readdirSync(elsewhere), [], "nothing written through the symlink");
  } finally {
    rmSync(place, { recursive: true, force: true });
    rmSync(elsewhere, { recursive: true, force: true });
    rmSync(root, { recursive: true, force: true });
  }
});

test("a chain's directory: a mountpoint per path, made once; swept with its chain", () => {
  const fx = buildFixtures();
  const root = mkdtempSync(join("/tmp", "nixoci-mp-root-"));
  const dirs = new MountpointDirs(defaultMountpointsDir(root));
  try {
    assert.equal(existsSync(dirs.dir), false, "made on first need only");
    const paths = [fx.hello, fx["single-file"], fx["symlink-path"]].map((p) => ({
      real: p,
      baseName: basename(p),
    }));
    const made = dirs.make(7, "nix/store", paths);
    assert.equal(made, join(dirs.dir, "7"));
    assert.equal(lstatSync(dirs.dir).mode & 0o777, 0o700);
    const store = join(made, "nix/store");
    assert.deepEqual(readdirSync(store).sort(), paths.map((p) => p.baseName).sort());
    assert.deepEqual(readdirSync(join(store, basename(fx.hello))), []);
    assert.equal(lstatSync(join(store, basename(fx["single-file"]))).size, 0);
    assert.equal(readlinkSync(join(store, basename(fx["symlink-path"]))), readlinkSync(fx["symlink-path"]));
    // Made once: a second call finds it.
    const ino = lstatSync(made).ino;
    assert.equal(dirs.make(7, "nix/store", paths), made);
    assert.equal(lstatSync(made).ino, ino);
    dirs.make(8, "nix/store", paths.slice(0, 1));
    mkdirSync(join(dirs.dir, "new-leftover"));
    assert.deepEqual(dirs.sweep(new Set([8])).sort(), ["7", "new-leftover"]);
    assert.deepEqual(readdirSync(dirs.dir), ["8"]);
    dirs.remove(8);
    assert.deepEqual(readdirSync(dirs.dir), []);
  } finally {
    rmSync(dirs.dir, { recursive: true, force: true });
    rmSync(root, { recursive: true, force: true });
  }
});
