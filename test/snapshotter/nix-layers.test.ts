// Nix layers in `nixoci snapshotter`, through its gRPC API called the way containerd calls it: Prepare with a
// layer's nix-store-path labels answers ALREADY_EXISTS when the store has the paths (substituting missing ones
// from a cache first), and container snapshots on top get one rbind mount of a root filesystem composed from
// the overlay plus read-only bind mounts of the store paths. Remove, SIGKILL + restart and Cleanup leave no
// mount behind. The snapshotter runs as a child process, as containerd would talk to it.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { basename, dirname, join } from "node:path";
import {} from "../../src/snapshotter/gcroots.js";
import { snapshotsClient } from "../../src/snapshotter/grpc.js";
import { mountsUnder } from "../support/daemons.js";
import { buildFixtures, generateCacheKey, makeNixCache, type FixtureAttr } from "../support/fixtures.js";
import {
  REF_LABEL,
  removeSnapshotterDir,
  rpc,
  runAsync,
  startSnapshotter,
  STORE_PATH_LABEL,
  stopSnapshotter,
  tail,
  type Client,
  type Reply,
  type Snapshotter,
} from "../support/snapshotter.js";

const REF = REF_LABEL;
const SP = STORE_PATH_LABEL;
const run = runAsync;
const removeDir = removeSnapshotterDir;

const dump = (p: string): Buffer =>
  execFileSync("nix-store", ["--dump", p], { maxBuffer: 256 << 20, timeout: 60_000 });

/** Runs `args` with runc in a bundle whose rootfs is an rbind mount of `source` (as containerd 1.6 mounts it). */
async function runcRun(source: string, work: string, args: string[]): Promise<string> {
  const bundle = mkdtempSync(join(work, "bundle-"));
  const rootfs = join(bundle, "rootfs");
  mkdirSync(rootfs);
  for (const d of ["proc", "dev", "sys", "tmp"]) mkdirSync(join(source, d), { recursive: true });
  await run("mount", ["--rbind", source, rootfs]);
  try {
    await run("runc", ["spec", "--bundle", bundle]);
    const spec = JSON.parse(readFileSync(join(bundle, "config.json"), "utf8")) as {
      process: { terminal: boolean; args: string[] };
    };
    spec.process.terminal = false;
    spec.process.args = args;
    writeFileSync(join(bundle, "config.json"), JSON.stringify(spec));
    const id = `nixoci-snnix-${process.pid}-${basename(bundle)}`;
    try {
      return await run("runc", ["--root", join(work, "runc"), "run", "--bundle", bundle, id], 30_000);
    } finally {
      await run("runc", ["--root", join(work, "runc"), "delete", "--force", id]).catch(() => undefined);
    }
  } finally {
    await run("umount", ["-R", rootfs]);
  }
}

function nixLabels(ref: string, paths: string[]): Record<string, string> {
  const labels: Record<string, string> = { [REF]: ref };
  paths.forEach((p, i) => (labels[`${SP}${i}`] = p));
  return labels;
}

/** Makes an ordinary committed layer `name` holding etc/ordinary.txt. */
async function ordinaryLayer(client: Client, name: string): Promise<void> {
  const p = await rpc(client, "Prepare", { key: `extract ${name}`, labels: { [REF]: name } });
  assert.equal(p.err, undefined, p.details);
  const m = (p.mounts as Reply[])[0];
  assert.equal(m.type, "bind");
  mkdirSync(join(m.source as string, "etc"));
  writeFileSync(join(m.source as string, "etc/ordinary.txt"), "from an ordinary layer\n");
  const c = await rpc(client, "Commit", { key: `extract ${name}`, name, labels: { [REF]: name } });
  assert.equal(c.err, undefined, c.details);
}

describe("snapshotter nix layers", () => {
  let fx: Record<FixtureAttr, string>;
  let dir: string;
  let sn: Snapshotter | undefined;
  let client: Client;
  const args = ["--store", "/nix/store", "--nix-layers", "bind"];

  before(async () => {
    fx = buildFixtures();
    dir = mkdtempSync(join("/tmp", "nixoci-snnix-"));
    sn = await startSnapshotter(dir, args);
    client = snapshotsClient(sn.socket);
  });
  after(async () => {
    client?.close();
    await stopSnapshotter(sn, "SIGKILL");
    if (dir) {
      const left = mountsUnder(dir);
      await removeDir(dir);
      assert.deepEqual(left, [], "no mount left under the snapshotter's root");
    }
  });

  test(
    "a layer whose paths are in the store is committed from it; containers get a composed root",
    {
      timeout: 120_000,
    },
    async () => {
      await ordinaryLayer(client, "base");
      const paths = [fx.hello, fx.busybox, fx.greeting, fx["single-file"], fx["symlink-path"]];
      const p = await rpc(client, "Prepare", {
        key: "extract nix1",
        parent: "base",
        labels: nixLabels("nix1", paths),
      });
      assert.equal(p.err, 6, `ALREADY_EXISTS: ${p.details}`);
      const st = (await rpc(client, "Stat", { key: "nix1" })).info as Reply;
      assert.equal(st.kind, "COMMITTED");
      assert.equal(st.parent, "base");
      assert.equal(
        (await rpc(client, "Stat", { key: "extract nix1" })).err,
        5,
        "no active snapshot was left",
      );
      const again = await rpc(client, "Prepare", {
        key: "extract nix1b",
        parent: "base",
        labels: nixLabels("nix1", paths),
      });
      assert.equal(again.err, 6);

      // A container snapshot on top: one rbind mount, the same from Prepare and Mounts (twice), no new mounts.
      const c = await rpc(client, "Prepare", { key: "ctr1", parent: "nix1" });
      assert.equal(c.err, undefined, c.details);
      const mounts = c.mounts as Reply[];
      assert.equal(mounts.length, 1);
      assert.equal(mounts[0].type, "bind");
      assert.deepEqual(mounts[0].options, ["rbind", "rw"]);
      const rootfs = mounts[0].source as string;
      assert.match(rootfs, /\/root\/snapshots\/\d+\/rootfs$/);
      const count = mountsUnder(sn!.root).length;
      assert.equal(count, 1 + 4, "the overlay plus one bind per non-symlink store path");
      for (let i = 0; i < 2; i++) {
        const m = await rpc(client, "Mounts", { key: "ctr1" });
        assert.deepEqual(m.mounts, mounts);
      }
      assert.equal(mountsUnder(sn!.root).length, count, "Mounts is idempotent");

      // The store paths are there, byte for byte; the ordinary layer too.
      const inRoot = (p: string): string => join(rootfs, p);
      assert.ok(existsSync(inRoot(`${fx.hello}/bin/hello`)));
      for (const p of [fx.hello, fx.busybox, fx.greeting, fx["single-file"]])
        assert.ok(dump(inRoot(p)).equals(dump(p)), p);
      assert.equal(readlinkSync(inRoot(fx["symlink-path"])), readlinkSync(fx["symlink-path"]));
      assert.equal(readFileSync(inRoot("etc/ordinary.txt"), "utf8"), "from an ordinary layer\n");

      // Writes go to the upper dir; the store is read-only.
      writeFileSync(inRoot("written.txt"), "upper\n");
      assert.equal(readFileSync(join(dirname(rootfs), "fs", "written.txt"), "utf8"), "upper\n");
      assert.throws(() => writeFileSync(inRoot(`${fx.hello}/new`), "x"), /EROFS/);
      assert.throws(() => writeFileSync(inRoot(`${fx.hello}/bin/hello`), "x"), /EROFS|EACCES/);
      assert.equal(existsSync(`${fx.hello}/new`), false);
      assert.throws(() => writeFileSync(inRoot(fx["single-file"]), "x"), /EROFS|EACCES/);
      assert.doesNotMatch(
        readFileSync(sn!.logFile, "utf8"),
        /helper unusable/,
        "the one-process mount helper ran",
      );

      // It runs, and rbind carries the store mounts along (as containerd mounts it).
      assert.equal(await run("chroot", [rootfs, `${fx.hello}/bin/hello`]), "Hello from nixoci!\n");
      const target = join(dir, "mnt");
      mkdirSync(target);
      await run("mount", ["--rbind", rootfs, target]);
      try {
        assert.equal(await run("chroot", [target, `${fx.hello}/bin/hello`]), "Hello from nixoci!\n");
      } finally {
        await run("umount", ["-R", target]);
      }

      // A real container (runc) on the rbind of the composition.
      assert.equal(await runcRun(rootfs, dir, [`${fx.hello}/bin/hello`]), "Hello from nixoci!\n");
      assert.equal(mountsUnder(sn!.root).length, count, "runc left the composition as it was");

      // A view on the nix layer: read-only, composed the same way.
      const v = await rpc(client, "View", { key: "v1", parent: "nix1" });
      assert.equal(v.err, undefined, v.details);
      const vm = (v.mounts as Reply[])[0];
      assert.deepEqual(vm.options, ["rbind", "ro"]);
      assert.ok(dump(join(vm.source as string, fx.hello)).equals(dump(fx.hello)));
      assert.equal(existsSync(join(vm.source as string, "etc/ordinary.txt")), true);
      assert.equal((await rpc(client, "Remove", { key: "v1" })).err, undefined);

      // The unpacker's Prepare of a layer above the nix layer gets the plain overlay (the diff applier's).
      const u = await rpc(client, "Prepare", {
        key: "extract top",
        parent: "nix1",
        labels: { [REF]: "top" },
      });
      assert.equal((u.mounts as Reply[])[0].type, "overlay");
      assert.deepEqual((await rpc(client, "Mounts", { key: "extract top" })).mounts, u.mounts);
      assert.equal((await rpc(client, "Remove", { key: "extract top" })).err, undefined);

      // Remove unmounts the composition.
      assert.equal((await rpc(client, "Remove", { key: "ctr1" })).err, undefined);
      assert.deepEqual(mountsUnder(sn!.root), []);
    },
  );

  test(
    "a layer with a path missing from the store (no usable substituter) is prepared as usual",
    {
      timeout: 60_000,
    },
    async () => {
      const missing = `/nix/store/${"0".repeat(32)}-nixoci-not-there`;
      const labels = nixLabels("nix2", [fx.hello, missing]);
      const p = await rpc(client, "Prepare", { key: "extract nix2", parent: "base", labels });
      assert.equal(p.err, undefined, p.details);
      const m = (p.mounts as Reply[])[0];
      assert.equal(m.type, "overlay", "the unpacker's plain overlay");
      assert.deepEqual((await rpc(client, "Mounts", { key: "extract nix2" })).mounts, p.mounts);
      assert.equal((await rpc(client, "Stat", { key: "nix2" })).err, 5);
      const bad = await rpc(client, "Prepare", {
        key: "extract nix3",
        parent: "base",
        labels: nixLabels("nix3", ["/nix/store/../../etc"]),
      });
      assert.equal(bad.err, undefined, "a bad label is an ordinary layer");
      for (const key of ["extract nix2", "extract nix3"])
        assert.equal((await rpc(client, "Remove", { key })).err, undefined);
    },
  );

  test(
    "SIGKILL and restart: stale compositions are unmounted, live ones kept, Remove cleans up",
    {
      timeout: 120_000,
    },
    async () => {
      const roots: Record<string, string> = {};
      for (const key of ["ctr2", "ctr3"]) {
        const r = await rpc(client, "Prepare", { key, parent: "nix1" });
        assert.equal(r.err, undefined, r.details);
        roots[key] = (r.mounts as Reply[])[0].source as string;
      }
      client.close();
      await stopSnapshotter(sn, "SIGKILL");
      const snaps = join(sn!.root, "snapshots");
      // ctr3's composition was cut short (no completion marker); an orphan directory holds a mount.
      rmSync(join(dirname(roots.ctr3), "composed"));
      const orphan = join(snaps, "99999", "rootfs");
      mkdirSync(orphan, { recursive: true });
      await run("mount", ["-t", "tmpfs", "nixoci-test", orphan]);

      sn = await startSnapshotter(dir, args);
      client = snapshotsClient(sn.socket);
      const live = mountsUnder(snaps);
      assert.ok(live.includes(roots.ctr2), "ctr2's composition is kept");
      assert.ok(!live.some((m) => m.startsWith(dirname(roots.ctr3) + "/")), "ctr3's partial one is gone");
      assert.ok(!live.some((m) => m.startsWith(join(snaps, "99999"))), "the orphan's mount is gone");
      assert.equal((await rpc(client, "Cleanup", {})).err, undefined);
      assert.equal(existsSync(join(snaps, "99999")), false);

      // Both still work (ctr3 is composed again).
      for (const key of ["ctr2", "ctr3"]) {
        const m = await rpc(client, "Mounts", { key });
        assert.equal((m.mounts as Reply[])[0].source, roots[key]);
        assert.equal(await run("chroot", [roots[key], `${fx.hello}/bin/hello`]), "Hello from nixoci!\n");
      }
      for (const key of ["ctr2", "ctr3", "nix1", "base"]) {
        const r = await rpc(client, "Remove", { key });
        assert.equal(r.err, undefined, `${key}: ${r.details}`);
      }
      assert.deepEqual(mountsUnder(sn.root), []);
      assert.deepEqual(readdirSync(snaps), []);
    },
  );
});

describe("snapshotter nix layers: substitution", () => {
  let fx: Record<FixtureAttr, string>;
  let dir: string;
  let sn: Snapshotter | undefined;
  let client: Client;

  before(async () => {
    fx = buildFixtures();
    dir = mkdtempSync(join("/tmp", "nixoci-snsub-"));
    const key = generateCacheKey("nixoci-test-sn", join(dir, "keys"));
    const cache = makeNixCache({
      paths: [fx.hello],
      dir: join(dir, "cache"),
      compression: "xz",
      secretKeyFile: key.secretKeyFile,
    });
    sn = await startSnapshotter(dir, [
      "--store",
      join(dir, "store"),
      "--substituter",
      "file:///nonexistent-nixoci-cache",
      "--substituter",
      cache,
      "--trusted-public-key",
      key.publicKey,
      "--nix-layers",
      "bind",
    ]);
    client = snapshotsClient(sn.socket);
  });
  after(async () => {
    client?.close();
    await stopSnapshotter(sn, "SIGKILL");
    if (dir) {
      const left = mountsUnder(dir);
      await removeDir(dir);
      assert.deepEqual(left, [], "no mount left under the test directory");
    }
  });

  test(
    "missing paths are substituted, then the layer is committed from the store",
    { timeout: 120_000 },
    async () => {
      const paths = [fx.hello, fx.busybox, fx.greeting];
      const p = await rpc(client, "Prepare", { key: "extract nixs", labels: nixLabels("nixs", paths) });
      assert.equal(p.err, 6, `ALREADY_EXISTS: ${p.details}\n${tail(sn!.logFile)}`);
      for (const path of paths) assert.ok(dump(join(dir, "store", basename(path))).equals(dump(path)), path);

      // A path no cache has: an ordinary Prepare.
      const q = await rpc(client, "Prepare", {
        key: "extract nixt",
        labels: nixLabels("nixt", [fx.hello, fx.tree]),
      });
      assert.equal(q.err, undefined, q.details);
      assert.equal(existsSync(join(dir, "store", basename(fx.tree))), false);

      const c = await rpc(client, "Prepare", { key: "ctr", parent: "nixs" });
      const rootfs = (c.mounts as Reply[])[0].source as string;
      assert.equal(await run("chroot", [rootfs, `${fx.hello}/bin/hello`]), "Hello from nixoci!\n");
      assert.ok(lstatSync(join(rootfs, fx.hello)).isDirectory());
      for (const key of ["ctr", "nixs", "extract nixt"])
        assert.equal((await rpc(client, "Remove", { key })).err, undefined);
      assert.deepEqual(mountsUnder(sn!.root), []);
    },
  );
});

describe("snapshotter nix layers: mount(8) fallback", () => {
  let fx: Record<FixtureAttr, string>;
  let dir: string;
  let sn: Snapshotter | undefined;
  let client: Client;

  before(async () => {
    fx = buildFixtures();
    dir = mkdtempSync(join("/tmp", "nixoci-snm8-"));
    sn = await startSnapshotter(dir, ["--store", "/nix/store", "--nix-layers", "bind"], {
      ...process.env,
      NIXOCI_NO_MOUNT_HELPER: "1",
    });
    client = snapshotsClient(sn.socket);
  });
  after(async () => {
    client?.close();
    await stopSnapshotter(sn, "SIGKILL");
    if (dir) {
      const left = mountsUnder(dir);
      await removeDir(dir);
      assert.deepEqual(left, [], "no mount left under the test directory");
    }
  });

  test("without the helper, compositions are the same", { timeout: 60_000 }, async () => {
    const paths = [fx.hello, fx.busybox, fx.greeting, fx["single-file"]];
    const p = await rpc(client, "Prepare", { key: "extract n", labels: nixLabels("n", paths) });
    assert.equal(p.err, 6, p.details);
    const c = await rpc(client, "Prepare", { key: "ctr", parent: "n" });
    assert.equal(c.err, undefined, c.details);
    const rootfs = (c.mounts as Reply[])[0].source as string;
    assert.equal(mountsUnder(sn!.root).length, 1 + paths.length);
    assert.equal(await run("chroot", [rootfs, `${fx.hello}/bin/hello`]), "Hello from nixoci!\n");
    assert.throws(() => writeFileSync(join(rootfs, fx.hello, "new"), "x"), /EROFS/);
    assert.throws(() => writeFileSync(join(rootfs, fx["single-file"]), "x"), /EROFS|EACCES/);
    for (const key of ["ctr", "n"]) assert.equal((await rpc(client, "Remove", { key })).err, undefined);
    assert.deepEqual(mountsUnder(sn!.root), []);
  });
});

describe("snapshotter nix layers: link mode", () => {
  let fx: Record<FixtureAttr, string>;
  let dir: string;
  let sn: Snapshotter | undefined;
  let client: Client;

  before(async () => {
    fx = buildFixtures();
    dir = mkdtempSync(join("/tmp", "nixoci-snlink-"));
    sn = await startSnapshotter(dir, ["--store", "/nix/store", "--nix-layers", "link"]);
    client = snapshotsClient(sn.socket);
  });
  after(async () => {
    client?.close();
    await stopSnapshotter(sn, "SIGKILL");
    if (dir) {
      const left = mountsUnder(dir);
      await removeDir(dir);
      assert.deepEqual(left, [], "no mount left under the test directory");
    }
  });

  test(
    "the layer holds hard links to the store; containers get a plain overlay",
    { timeout: 60_000 },
    async () => {
      const paths = [fx.hello, fx.busybox, fx.greeting, fx["single-file"], fx["symlink-path"]];
      const p = await rpc(client, "Prepare", { key: "extract n", labels: nixLabels("n", paths) });
      assert.equal(p.err, 6, p.details);
      const c = await rpc(client, "Prepare", { key: "ctr", parent: "n" });
      assert.equal(c.err, undefined, c.details);
      const m = (c.mounts as Reply[])[0];
      assert.equal(m.type, "overlay", "containerd's overlay snapshotter's shape");
      assert.deepEqual(await rpc(client, "Mounts", { key: "ctr" }).then((r) => r.mounts), c.mounts);
      assert.deepEqual(mountsUnder(sn!.root), [], "nothing is mounted by the snapshotter");

      const target = join(dir, "mnt");
      mkdirSync(target);
      await run("mount", [
        "-t",
        m.type as string,
        m.source as string,
        target,
        "-o",
        (m.options as string[]).join(","),
      ]);
      try {
        for (const path of [fx.hello, fx.busybox, fx.greeting, fx["single-file"]])
          assert.ok(dump(join(target, path)).equals(dump(path)), path);
        assert.equal(readlinkSync(join(target, fx["symlink-path"])), readlinkSync(fx["symlink-path"]));
        assert.equal(
          lstatSync(join(target, fx.hello, "bin/hello")).ino,
          lstatSync(`${fx.hello}/bin/hello`).ino,
        );
        assert.equal(await run("chroot", [target, `${fx.hello}/bin/hello`]), "Hello from nixoci!\n");
      } finally {
        await run("umount", [target]);
      }
      for (const key of ["ctr", "n"]) assert.equal((await rpc(client, "Remove", { key })).err, undefined);
      assert.deepEqual(readdirSync(join(sn!.root, "snapshots")), []);
    },
  );
});
