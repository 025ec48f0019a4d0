// Target mode's mountpoints directories (src/servers/snapshotter/mountpoints.ts): on /dev/shm by default, in a
// directory only this user may use (a symlink or a shared directory planted there is refused with one line
// naming it); a chain's directory holds an empty mountpoint per store path, is made once, and is swept when its
// chain is gone. A chain's store view (store-view.ts) shows exactly its store paths with the store's own files,
// metadata and inode numbers, and nothing else of the store; it is mounted once, unmounted when its chain has no
// container (its tree kept, mounted again from it), and removed with its chain or by a sweep.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  chmodSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { execFileSync } from "node:child_process";
import { basename, join } from "node:path";
import { defaultMountpointsDir, MountpointDirs } from "../../../src/servers/snapshotter/mountpoints.js";
import { mountPointsUnder } from "../../../src/servers/snapshotter/mounts.js";
import { buildViewTree, viewMountOptions } from "../../../src/servers/snapshotter/store-view.js";
import { ModeChooser } from "../../../src/servers/snapshotter/nix-layer-modes/auto.js";
import { LocalStore } from "../../../src/store/local-store.js";
import type { Logger } from "../../../src/util/logger.js";
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

test("a chain's directory: a mountpoint per path, made once; swept with its chain", async () => {
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
    assert.deepEqual((await dirs.sweep(new Set([8]))).sort(), ["7", "new-leftover"]);
    assert.deepEqual(readdirSync(dirs.dir), ["8"]);
    await dirs.remove(8);
    assert.deepEqual(readdirSync(dirs.dir), []);
  } finally {
    rmSync(dirs.dir, { recursive: true, force: true });
    rmSync(root, { recursive: true, force: true });
  }
});

test("a chain's store view: its paths only, the store's files and metadata; unmounted with its chain or a sweep", async () => {
  const fx = buildFixtures();
  const root = mkdtempSync(join("/tmp", "nixoci-mp-root-"));
  const dirs = new MountpointDirs(defaultMountpointsDir(root));
  try {
    assert.equal(await dirs.probeViews(root, "/nix/store"), undefined, "views work here");
    assert.deepEqual(readdirSync(dirs.dir), [], "the probe leaves nothing");
    assert.deepEqual(readdirSync(root), []);
    const picked = [fx.hello, fx["single-file"], fx["single-executable"], fx["symlink-path"]];
    const paths = picked.map((p) => ({ real: p, baseName: basename(p) }));
    const lower = await dirs.makeView(7, "nix/store", "/nix/store", () => paths);
    assert.equal(lower, join(dirs.dir, "v7/view/root"));
    assert.ok(mountPointsUnder(dirs.dir).includes(join(dirs.dir, "v7/view")), "mounted");
    const store = join(lower, "nix/store");
    assert.deepEqual(readdirSync(store).sort(), paths.map((p) => p.baseName).sort(), "its paths, no others");
    for (const p of picked) {
      const seen = join(store, basename(p));
      const [a, b] = [lstatSync(seen), lstatSync(p)];
      assert.deepEqual(
        [a.mode, a.uid, a.gid, a.mtimeMs, a.isFile() ? a.size : undefined],
        [b.mode, b.uid, b.gid, b.mtimeMs, b.isFile() ? b.size : undefined],
        p,
      );
    }
    const hello = join(store, basename(fx.hello), "bin/hello");
    assert.equal(lstatSync(hello).ino, lstatSync(join(fx.hello, "bin/hello")).ino, "the store's own file");
    assert.ok(readFileSync(hello).equals(readFileSync(join(fx.hello, "bin/hello"))));
    assert.equal(
      readFileSync(join(store, basename(fx["single-file"])), "utf8"),
      readFileSync(fx["single-file"], "utf8"),
    );
    assert.equal(readlinkSync(join(store, basename(fx["symlink-path"]))), readlinkSync(fx["symlink-path"]));
    assert.throws(() => writeFileSync(join(store, basename(fx.hello), "new"), "x"), { code: "EROFS" });
    // Made once: a second call finds it mounted; a snapshotter restarted finds it too.
    assert.equal(await dirs.makeView(7, "nix/store", "/nix/store", () => paths), lower);
    assert.equal(
      await new MountpointDirs(dirs.dir).makeView(7, "nix/store", "/nix/store", () => paths),
      lower,
    );
    assert.equal(mountPointsUnder(dirs.dir).length, 1);
    // A chain with no container left: unmounted, its tree kept; mounted again from it.
    await dirs.sweep(new Set([7]), new Set([7])); // kept, mounted
    assert.equal(mountPointsUnder(dirs.dir).length, 1);
    await dirs.sweep(new Set([7]), new Set());
    assert.deepEqual(mountPointsUnder(dirs.dir), []);
    assert.ok(existsSync(join(dirs.dir, "v7/tree")));
    assert.equal(await dirs.makeView(7, "nix/store", "/nix/store", () => paths), lower);
    await dirs.unmountView(7);
    assert.deepEqual(mountPointsUnder(dirs.dir), []);
    assert.equal(await dirs.makeView(7, "nix/store", "/nix/store", () => paths), lower);
    assert.equal(readdirSync(store).length, paths.length);
    await dirs.makeView(8, "nix/store", "/nix/store", () => paths.slice(0, 1));
    assert.deepEqual((await dirs.sweep(new Set([8]))).sort(), ["v7"]);
    assert.deepEqual(mountPointsUnder(dirs.dir), [join(dirs.dir, "v8/view")]);
    await dirs.remove(8);
    assert.deepEqual(readdirSync(dirs.dir), []);
    assert.deepEqual(mountPointsUnder(dirs.dir), []);
  } finally {
    for (const mp of mountPointsUnder(dirs.dir).reverse()) execFileSync("umount", ["-l", mp]);
    rmSync(dirs.dir, { recursive: true, force: true });
    rmSync(root, { recursive: true, force: true });
  }
});

test("a big view's tree is built a slice at a time, so the snapshotter answers calls meanwhile", async () => {
  const dir = mkdtempSync(join("/dev/shm", "nixoci-view-slices-"));
  try {
    writeFileSync(join(dir, "file"), "x");
    const paths = Array.from({ length: 1000 }, (_, i) => ({ real: join(dir, "file"), baseName: `p${i}` }));
    const store = join(dir, "tree/root/nix/store");
    const built = buildViewTree(join(dir, "tree"), "nix/store", paths);
    // The call returned at its first yield: part of the tree is there, not all of it.
    const atFirstTurn = readdirSync(store).length;
    assert.ok(atFirstTurn > 0 && atFirstTurn < paths.length, `${atFirstTurn} of ${paths.length} entries`);
    await built;
    assert.equal(readdirSync(store).length, paths.length);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a store or views directory an overlay option cannot hold is refused in one line, before anything is mounted", () => {
  for (const [tree, store, bad] of [
    ["/dev/shm/a,b/tree", "/nix/store", "/dev/shm/a,b/tree"],
    ["/dev/shm/x/tree", "/srv/nix:store", "/srv/nix:store"],
    ["/dev/shm/x/tree", "/srv/nix store", "/srv/nix store"],
  ])
    assert.throws(
      () => viewMountOptions(tree, store),
      new Error(`${bad}: an overlay lower directory cannot have a comma, colon, backslash or space in it`),
    );
  assert.equal(
    viewMountOptions("/dev/shm/x/v1/tree", "/nix/store"),
    "ro,lowerdir=/dev/shm/x/v1/tree:/nix/store,metacopy=on,redirect_dir=on",
  );
});

test("the probe fails with a store on overlayfs (a view over it is one level too deep for containers); auto then binds", async () => {
  const work = mkdtempSync(join("/tmp", "nixoci-mp-ovl-"));
  const dirs = new MountpointDirs(defaultMountpointsDir(work));
  try {
    for (const d of ["lower", "upper", "work", "root"]) mkdirSync(join(work, d));
    execFileSync("mount", [
      "-t",
      "overlay",
      "overlay",
      "-o",
      `lowerdir=${work}/lower,upperdir=${work}/upper,workdir=${work}/work`,
      join(work, "root"),
    ]);
    const why = await dirs.probeViews(work, join(work, "root"));
    // The view mounts; the container's overlay on it is refused (a third level).
    assert.match(String(why), /view-probe-\w+\/mnt: /, "views do not work there");
    assert.deepEqual(mountPointsUnder(dirs.dir), [], "the probe leaves no mount");
    assert.deepEqual(readdirSync(work).sort(), ["lower", "root", "upper", "work"], "nor a directory");
    const warnings: unknown[] = [];
    const log = { warn: (msg: string, f: unknown) => warnings.push([msg, f]), info: () => undefined };
    const modes = new ModeChooser(
      "auto",
      new LocalStore({}),
      join(work, "root"),
      log as unknown as Logger,
      true,
      "auto",
      () => dirs.probeViews(work, join(work, "root")),
    );
    assert.equal(await modes.targetMounts(), "binds");
    assert.equal(warnings.length, 1);
    const [msg, fields] = warnings[0] as [string, { error: string }];
    assert.equal(msg, "store views unusable; target-mode paths are bind-mounted");
    assert.match(
      fields.error,
      /^mount -t overlay overlay -o lowerdir=\S+\/view-probe-\w+\/view\/root,upperdir=/,
    );
  } finally {
    for (const mp of mountPointsUnder(work).reverse()) execFileSync("umount", ["-l", mp]);
    rmSync(dirs.dir, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
});
