// Nix layers in `nixoci snapshotter`, through its gRPC API called the way containerd calls it: Prepare with a
// layer's nix-store-path labels answers ALREADY_EXISTS when the store has the paths (substituting missing ones
// from a cache first), and container snapshots on top get one rbind mount of a root filesystem composed from
// the overlay plus read-only bind mounts of the store paths. Remove, SIGKILL + restart and Cleanup leave no
// mount behind. The snapshotter runs as a child process, as containerd would talk to it.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
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
  statSync,
  writeFileSync,
} from "node:fs";
import { basename, dirname, join } from "node:path";
import Database from "better-sqlite3";
import { snapshotsClient } from "../../../src/proto/containerd.js";
import { MetadataStore } from "../../../src/servers/snapshotter/metadata.js";
import {
  layerStorePaths,
  pushNixociImage,
  startCriStack,
  type CriStack,
  type PushedImage,
} from "../../support/cri.js";
import { until } from "../../support/poll.js";
import { nixociOk } from "../../support/cli.js";
import { mountsUnder } from "../../support/daemons.js";
import {
  addNotUtf8Link,
  addNotUtf8Path,
  buildFixtures,
  NOT_UTF8_LINK_TARGET,
  generateCacheKey,
  makeNixCache,
  type FixtureAttr,
} from "../../support/fixtures.js";
import {
  REF_LABEL,
  removeSnapshotterDir,
  rpc,
  runAsync,
  logRecords,
  startSnapshotter as startSnapshotterProcess,
  STORE_PATH_LABEL,
  stopSnapshotter,
  tail,
  type Client,
  type Reply,
  type Snapshotter,
  killAndCheckNoMounts,
  list,
} from "../../support/snapshotter.js";

/** These tests give made-up chain IDs: the check that a layer's paths make its chain ID has tests of its own. */
const startSnapshotter = (dir: string, extra: string[] = [], env?: NodeJS.ProcessEnv) =>
  startSnapshotterProcess(dir, ["--trust-layer-labels", ...extra], env);
import { containerdUnderTest } from "../../support/containerd-release.js";

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
  after(() => killAndCheckNoMounts(client, sn, dir, "the snapshotter's root"));

  test(
    "a layer whose paths are in the store is committed from it; containers get a composed root",
    {
      timeout: 120_000,
    },
    async () => {
      await ordinaryLayer(client, "base");
      const notUtf8Link = addNotUtf8Link(dir); // a symlink store path whose target is not UTF-8
      const paths = [fx.hello, fx.busybox, fx.greeting, fx["single-file"], fx["symlink-path"], notUtf8Link];
      const p = await rpc(client, "Prepare", {
        key: "extract nix1",
        parent: "base",
        labels: nixLabels("nix1", paths),
      });
      assert.equal(p.err, 6, `ALREADY_EXISTS: ${p.details}`);
      const st = (await rpc(client, "Stat", { key: "nix1" })).info as Reply;
      assert.equal(st.kind, "COMMITTED");
      assert.equal(st.parent, "base");
      // Its labels are kept but the store-path ones (its paths are its nix-layer record; containerd keeps its own
      // copy of every label and shows the union): an image of 6,000 paths would otherwise send them on each call.
      assert.deepEqual(st.labels, { [REF]: "nix1" });
      assert.deepEqual(
        (await list(client, [`labels."${REF}"==nix1`])).map((i) => i.labels),
        [{ [REF]: "nix1" }],
      );
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
      assert.deepEqual(readlinkSync(inRoot(notUtf8Link), { encoding: "buffer" }), NOT_UTF8_LINK_TARGET);
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

describe("snapshotter nix layers: a layer is committed from the store only when its paths make its chain ID", () => {
  let dir: string;
  let sn: Snapshotter | undefined;
  let client: Client;
  /** The store layers of an image `nixoci build` made: chain IDs (from the config's diff_ids) and paths. */
  let layers: { chain: string; parent: string; paths: string[]; diffId: string }[];

  before(async () => {
    const fx = buildFixtures();
    dir = mkdtempSync(join("/tmp", "nixoci-snverify-"));
    const layout = join(dir, "layout");
    nixociOk([
      "build",
      "-q",
      "--no-cache",
      "--max-layers",
      "3",
      "--compression",
      "none",
      fx.hello,
      fx.busybox,
      "-o",
      `oci:${layout}:v`,
    ]);
    const blob = (d: string) => JSON.parse(readFileSync(join(layout, "blobs/sha256", d.slice(7)), "utf8"));
    const index = JSON.parse(readFileSync(join(layout, "index.json"), "utf8"));
    const manifest = blob(index.manifests[0].digest);
    const diffIds = blob(manifest.config.digest).rootfs.diff_ids as string[];
    layers = [];
    let parent = "";
    for (const [i, l] of (manifest.layers as { annotations?: Record<string, string> }[]).entries()) {
      const chain = parent
        ? `sha256:${createHash("sha256").update(`${parent} ${diffIds[i]}`).digest("hex")}`
        : diffIds[i];
      const paths = layerStorePaths(l as Parameters<typeof layerStorePaths>[0]);
      if (paths.length) layers.push({ chain, parent, paths, diffId: diffIds[i] });
      parent = chain;
    }
    assert.ok(layers.length >= 2, "the image has two store layers or more");
    assert.equal(layers[0].parent, "", "the bottom layer is a store layer");
    sn = await startSnapshotterProcess(dir, ["--store", "/nix/store", "--nix-layers", "bind"]);
    client = snapshotsClient(sn.socket);
  });
  after(() => killAndCheckNoMounts(client, sn, dir));

  test("another image's chain ID with these paths is unpacked as usual; the real chain IDs are committed", async () => {
    const [bottom, second] = layers;
    // An image whose config claims the second layer's diff_id over the bottom one, and whose layer names the
    // bottom layer's paths: not committed (containerd would then download and check the layer itself).
    const forged = await rpc(client, "Prepare", {
      key: "extract forged",
      parent: bottom.chain,
      labels: nixLabels(second.chain, bottom.paths),
    });
    assert.equal(forged.err, 5, "NOT_FOUND: its parent is not there yet");
    // The bottom layer's diff_id claimed for other paths: not committed either.
    const g = await rpc(client, "Prepare", {
      key: "extract g",
      labels: nixLabels(bottom.chain, second.paths),
    });
    assert.equal(g.err, undefined, `an ordinary Prepare: ${g.details}`);
    assert.equal((await rpc(client, "Stat", { key: bottom.chain })).err, 5);
    assert.equal((await rpc(client, "Remove", { key: "extract g" })).err, undefined);
    const b = await rpc(client, "Prepare", {
      key: "extract b",
      labels: nixLabels(bottom.chain, bottom.paths),
    });
    assert.equal(b.err, 6, `ALREADY_EXISTS: ${b.details}\n${tail(sn!.logFile)}`);
    const f = await rpc(client, "Prepare", {
      key: "extract forged",
      parent: bottom.chain,
      labels: nixLabels(second.chain, bottom.paths),
    });
    assert.equal(f.err, undefined, `an ordinary Prepare: ${f.details}`);
    assert.equal(
      (await rpc(client, "Stat", { key: second.chain })).err,
      5,
      "nothing committed under that name",
    );
    assert.match(readFileSync(sn!.logFile, "utf8"), /do not make its chain ID/);
    assert.equal((await rpc(client, "Remove", { key: "extract forged" })).err, undefined);
    // The real second layer, then every other one: committed from the store.
    for (const l of layers.slice(1)) {
      const r = await rpc(client, "Prepare", {
        key: `extract ${l.chain}`,
        parent: l.parent,
        labels: nixLabels(l.chain, l.paths),
      });
      assert.equal(r.err, 6, `ALREADY_EXISTS: ${r.details}\n${tail(sn!.logFile)}`);
    }
    // Each set of paths was read once: its diff_ids are kept.
    const db = new Database(join(sn!.root, "metadata.db"), { readonly: true });
    try {
      const rows = db.prepare("SELECT diff_ids FROM layer_diff_ids").all() as { diff_ids: string }[];
      assert.equal(rows.length, layers.length);
    } finally {
      db.close();
    }
    for (const l of [...layers].reverse())
      assert.equal((await rpc(client, "Remove", { key: l.chain })).err, undefined);
  });

  test("above an ordinary layer (a base image's), named as containerd's metadata layer names it", async () => {
    // containerd commits the layers it unpacks as NAMESPACE/ID/<chain ID>, with the chain ID as ref label.
    const base = `sha256:${"ab".repeat(32)}`;
    const p = await rpc(client, "Prepare", { key: "k8s.io/7/extract-1 base", labels: { [REF]: base } });
    assert.equal(p.err, undefined, p.details);
    const named = `k8s.io/8/${base}`;
    const c = await rpc(client, "Commit", {
      key: "k8s.io/7/extract-1 base",
      name: named,
      labels: { [REF]: base },
    });
    assert.equal(c.err, undefined, c.details);
    const top = layers[layers.length - 1];
    const chain = `sha256:${createHash("sha256").update(`${base} ${top.diffId}`).digest("hex")}`;
    const r = await rpc(client, "Prepare", {
      key: `k8s.io/9/extract-2 ${chain}`,
      parent: named,
      labels: nixLabels(chain, top.paths),
    });
    assert.equal(r.err, 6, `ALREADY_EXISTS: ${r.details}\n${tail(sn!.logFile)}`);
    for (const key of [chain, named]) assert.equal((await rpc(client, "Remove", { key })).err, undefined);
  });
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
  after(() => killAndCheckNoMounts(client, sn, dir));

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
  after(() => killAndCheckNoMounts(client, sn, dir));

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
  after(() => killAndCheckNoMounts(client, sn, dir));

  test(
    "the layer holds hard links to the store; containers get a plain overlay",
    { timeout: 60_000 },
    async () => {
      const notUtf8 = addNotUtf8Path(dir);
      const notUtf8Link = addNotUtf8Link(dir); // a symlink store path whose target is not UTF-8
      const paths = [
        fx.hello,
        fx.busybox,
        fx.greeting,
        fx["single-file"],
        fx["symlink-path"],
        notUtf8,
        notUtf8Link,
      ];
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
        for (const path of [fx.hello, fx.busybox, fx.greeting, fx["single-file"], notUtf8])
          assert.ok(dump(join(target, path)).equals(dump(path)), path);
        assert.equal(readlinkSync(join(target, fx["symlink-path"])), readlinkSync(fx["symlink-path"]));
        assert.deepEqual(
          readlinkSync(join(target, notUtf8Link), { encoding: "buffer" }),
          NOT_UTF8_LINK_TARGET,
        );
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

/** Mounts a tmpfs at `dir` (created): a filesystem other than the store's, for --root. */
async function mountTmpfs(dir: string): Promise<void> {
  mkdirSync(dir, { recursive: true });
  await run("mount", ["-t", "tmpfs", "-o", "size=256m", "nixoci-test", dir]);
  assert.notEqual(statSync(dir).dev, statSync("/nix/store").dev, "--root is on another filesystem");
}

const sha256 = (p: string): string => createHash("sha256").update(readFileSync(p)).digest("hex");

describe("snapshotter nix layers: metacopy mode, --root on another filesystem", () => {
  let fx: Record<FixtureAttr, string>;
  let dir: string;
  let root: string;
  let sn: Snapshotter | undefined;
  let client: Client;
  const args = ["--store", "/nix/store", "--nix-layers", "metacopy"];

  before(async () => {
    fx = buildFixtures();
    dir = mkdtempSync(join("/tmp", "nixoci-snmeta-"));
    root = join(dir, "root");
    await mountTmpfs(root);
    sn = await startSnapshotter(dir, args);
    client = snapshotsClient(sn.socket);
  });
  after(async () => {
    client?.close();
    await stopSnapshotter(sn, "SIGKILL");
    if (dir) {
      const left = mountsUnder(dir).filter((m) => m !== root);
      await run("umount", [root]).catch(() => undefined);
      await removeDir(dir);
      assert.deepEqual(left, [], "no mount left under the test directory but the tmpfs");
    }
  });

  test(
    "stubs redirect into the store; containers, views and unpacks get one overlay with the store as data layer",
    { timeout: 120_000 },
    async () => {
      await ordinaryLayer(client, "base");
      const paths = [
        fx.hello,
        fx.busybox,
        fx.greeting,
        fx["single-file"],
        fx["symlink-path"],
        fx["sort-order"],
        fx["long-names"],
        fx["empty-file"],
        fx["empty-dir"],
        fx.big,
        addNotUtf8Path(dir),
      ];
      const p = await rpc(client, "Prepare", {
        key: "extract m1",
        parent: "base",
        labels: nixLabels("m1", paths),
      });
      assert.equal(p.err, 6, `ALREADY_EXISTS: ${p.details}\n${tail(sn!.logFile)}`);
      const committed = logRecords(sn!, "nix layer: committed from the store");
      assert.equal(committed.length, 1);
      assert.equal(committed[0].mode, "metacopy");
      const snaps = join(root, "snapshots");

      // The layer holds sparse stubs with the overlay xattrs, nothing of the files' data.
      const stubOf = (p: string): string => {
        const id = readdirSync(snaps).find((n) => existsSync(join(snaps, n, "fs", p.slice(1))));
        assert.ok(id, `a layer holding ${p}`);
        return join(snaps, id, "fs", p.slice(1));
      };
      // Every regular file of the layer is a stub (find counts them, getfattr lists those with the xattr).
      const layerFs = stubOf(fx.hello).slice(0, -fx.hello.length);
      const regular = execFileSync("find", [layerFs, "-type", "f"]).toString().trim().split("\n");
      const withXattr = execFileSync("getfattr", [
        "-R",
        "-P",
        "-h",
        "--absolute-names",
        "-m",
        "^trusted.overlay.metacopy$",
        layerFs,
      ])
        .toString()
        .split("\n")
        .filter((l) => l.startsWith("# file: "));
      assert.equal(withXattr.length, regular.length, "every file has trusted.overlay.metacopy");
      assert.ok(regular.length > 30, `${regular.length} files`);
      const stub = stubOf(`${fx.big}/random.bin`);
      const st = statSync(stub);
      assert.equal(st.size, statSync(`${fx.big}/random.bin`).size);
      assert.equal(st.blocks, 0, "sparse");
      assert.equal(st.mode, statSync(`${fx.big}/random.bin`).mode);
      const xattr = (name: string, file: string): string =>
        execFileSync("getfattr", ["--absolute-names", "--only-values", "-n", name, file]).toString();
      assert.equal(xattr("trusted.overlay.redirect", stub), `/${basename(fx.big)}/random.bin`);
      assert.equal(xattr("trusted.overlay.metacopy", stub), "");
      assert.equal(
        xattr("trusted.overlay.redirect", stubOf(fx["single-file"])),
        `/${basename(fx["single-file"])}`,
      );
      assert.equal(
        xattr("trusted.overlay.redirect", stubOf(`${fx["sort-order"]}/space name`)),
        `/${basename(fx["sort-order"])}/space name`,
      );

      // A container snapshot: one plain overlay with the store as a data-only lower layer; nothing mounted.
      const c = await rpc(client, "Prepare", { key: "ctr1", parent: "m1" });
      assert.equal(c.err, undefined, c.details);
      const m = (c.mounts as Reply[])[0];
      assert.equal(m.type, "overlay");
      const opts = m.options as string[];
      assert.ok(
        opts.some((o) => /^lowerdir=[^:]+\/fs:[^:]+\/fs::\/nix\/store$/.test(o)),
        opts.join(","),
      );
      assert.ok(opts.includes("metacopy=on") && opts.includes("redirect_dir=on"), opts.join(","));
      assert.deepEqual((await rpc(client, "Mounts", { key: "ctr1" })).mounts, c.mounts);
      assert.deepEqual(mountsUnder(root), [root], "nothing is mounted by the snapshotter");

      const target = join(dir, "mnt");
      mkdirSync(target);
      const mount = (mm: Reply): Promise<string> =>
        run("mount", [
          "-t",
          mm.type as string,
          mm.source as string,
          target,
          "-o",
          (mm.options as string[]).join(","),
        ]);
      await mount(m);
      try {
        const inRoot = (p: string): string => join(target, p);
        for (const path of paths.filter((x) => x !== fx["symlink-path"]))
          assert.ok(dump(inRoot(path)).equals(dump(path)), path);
        assert.equal(readlinkSync(inRoot(fx["symlink-path"])), readlinkSync(fx["symlink-path"]));
        assert.equal(sha256(inRoot(`${fx.big}/random.bin`)), sha256(`${fx.big}/random.bin`));
        assert.equal(readFileSync(inRoot("etc/ordinary.txt"), "utf8"), "from an ordinary layer\n");
        assert.equal(await run("chroot", [target, `${fx.hello}/bin/hello`]), "Hello from nixoci!\n");
        // Writes and metadata changes go to the upper dir; data still comes from the store.
        writeFileSync(inRoot(`${fx.hello}/new`), "upper\n");
        assert.equal(existsSync(`${fx.hello}/new`), false);
        chmodSync(inRoot(`${fx.big}/numbers.txt`), 0o600);
        assert.equal(sha256(inRoot(`${fx.big}/numbers.txt`)), sha256(`${fx.big}/numbers.txt`));
        assert.equal(statSync(`${fx.big}/numbers.txt`).mode & 0o777, 0o444, "the store is unchanged");
      } finally {
        await run("umount", [target]);
      }

      // A view of the nix layer: a read-only overlay of it over the store (no bind: the stubs need overlay).
      const v = await rpc(client, "View", { key: "v1", parent: "m1" });
      assert.equal(v.err, undefined, v.details);
      const vm = (v.mounts as Reply[])[0];
      assert.equal(vm.type, "overlay");
      assert.ok((vm.options as string[]).some((o) => /^lowerdir=[^:]+\/fs:[^:]+\/fs::\/nix\/store$/.test(o)));
      assert.ok(!(vm.options as string[]).some((o) => o.startsWith("upperdir=")));
      await mount(vm);
      try {
        assert.ok(dump(join(target, fx.hello)).equals(dump(fx.hello)));
        assert.throws(() => writeFileSync(join(target, "x"), "x"), /EROFS/);
      } finally {
        await run("umount", [target]);
      }
      assert.equal((await rpc(client, "Remove", { key: "v1" })).err, undefined);

      // A view of a nix layer without parent: lowerdir=LAYER::STORE, no upper dir (the kernel takes one regular
      // lower with a data-only one).
      const p2 = await rpc(client, "Prepare", { key: "extract m2", labels: nixLabels("m2", [fx.greeting]) });
      assert.equal(p2.err, 6, p2.details);
      const v2 = await rpc(client, "View", { key: "v2", parent: "m2" });
      assert.equal(v2.err, undefined, v2.details);
      const v2m = (v2.mounts as Reply[])[0];
      assert.equal(v2m.type, "overlay");
      assert.ok((v2m.options as string[]).some((o) => /^lowerdir=[^:]+\/fs::\/nix\/store$/.test(o)));
      await mount(v2m);
      try {
        assert.ok(dump(join(target, fx.greeting)).equals(dump(fx.greeting)));
      } finally {
        await run("umount", [target]);
      }
      for (const key of ["v2", "m2"]) assert.equal((await rpc(client, "Remove", { key })).err, undefined);

      // The unpacker's Prepare above it reads real content too.
      const u = await rpc(client, "Prepare", { key: "extract top", parent: "m1", labels: { [REF]: "top" } });
      assert.equal(u.err, undefined, u.details);
      assert.ok(((u.mounts as Reply[])[0].options as string[]).some((o) => o.endsWith("::/nix/store")));
      assert.equal((await rpc(client, "Remove", { key: "extract top" })).err, undefined);

      // SIGKILL and restart: the metadata still says metacopy, mounts are the same and work.
      client.close();
      await stopSnapshotter(sn, "SIGKILL");
      sn = await startSnapshotter(dir, args);
      client = snapshotsClient(sn.socket);
      assert.deepEqual((await rpc(client, "Mounts", { key: "ctr1" })).mounts, c.mounts);
      await mount(m);
      try {
        assert.equal(await run("chroot", [target, `${fx.hello}/bin/hello`]), "Hello from nixoci!\n");
        assert.equal(readFileSync(join(target, fx.hello, "new"), "utf8"), "upper\n");
      } finally {
        await run("umount", [target]);
      }
      assert.equal((await rpc(client, "Cleanup", {})).err, undefined);
      for (const key of ["ctr1", "m1", "base"]) {
        const r = await rpc(client, "Remove", { key });
        assert.equal(r.err, undefined, `${key}: ${r.details}`);
      }
      assert.deepEqual(readdirSync(snaps), []);
      assert.deepEqual(mountsUnder(root), [root]);
    },
  );
});

describe(`snapshotter nix layers: auto picks metacopy across filesystems, under containerd ${containerdUnderTest().series} (CRI)`, () => {
  let fx: Record<FixtureAttr, string>;
  let stack: CriStack | undefined;
  let image: PushedImage;

  before(
    async () => {
      fx = buildFixtures();
      stack = await startCriStack({
        prefix: "snmcri",
        snapshotterArgs: async (d) => {
          await mountTmpfs(join(d, "root"));
          return ["--store", "/nix/store", "--nix-layers", "auto"];
        },
      });
      image = pushNixociImage(stack.registry, {
        installables: [fx.hello, fx.busybox],
        repo: "nixoci/metacopy",
        entrypoint: "/bin/hello",
        workDir: stack.dir,
      });
    },
    { timeout: 240_000 },
  );
  after(async () => {
    await stack?.stop(); // unmounts everything under its dir (the tmpfs too) and removes it
  });

  test(
    "pull commits the store layers as metacopy; ctr run works, before and after a restart",
    { timeout: 240_000 },
    async () => {
      const s = stack!;
      const root = join(s.dir, "root");
      const storeLayers = image.layers.filter((l) => layerStorePaths(l).length);
      assert.ok(storeLayers.length >= 1);
      const pulled = await s.cri.pullImage({ image: { image: image.ref } }, { timeoutMs: 120_000 });
      assert.match(pulled.image_ref, /^sha256:/);

      assert.equal(
        logRecords(s.sn, "overlay metacopy with data-only layers supported").length,
        1,
        tail(s.sn.logFile),
      );
      const committed = logRecords(s.sn, "nix layer: committed from the store");
      assert.equal(
        committed.length,
        storeLayers.length,
        "every store layer came from the store, none was unpacked",
      );
      for (const r of committed) assert.equal(r.mode, "metacopy");

      assert.equal(s.run(image.ref, "nixoci-meta-1"), "Hello from nixoci!\n");
      // A file read inside the container is the store's.
      const sum = s.run(image.ref, "nixoci-meta-2", [
        `${fx.busybox}/bin/busybox`,
        "sha256sum",
        `${fx.hello}/bin/hello`,
      ]);
      assert.equal(sum.split(/\s+/)[0], sha256(`${fx.hello}/bin/hello`));
      assert.deepEqual(mountsUnder(root), [root], "ctr run --rm unmounted what containerd mounted");

      // SIGKILL and restart: containerd redials the proxy (bounded wait), the image still runs.
      await s.restartSnapshotter("SIGKILL");
      let attempt = 0;
      const out = await until("ctr run after restart", 30_000, async () =>
        s.run(image.ref, `nixoci-meta-3-${attempt++}`),
      );
      assert.equal(out, "Hello from nixoci!\n");
      assert.deepEqual(mountsUnder(root), [root]);
    },
  );
});

/** The snapshots table as every older nixoci made it. */
const OLDER_SNAPSHOTS_TABLE = `CREATE TABLE snapshots (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL CHECK (kind IN ('active', 'view', 'committed')), parent_id INTEGER REFERENCES snapshots(id),
  labels TEXT NOT NULL DEFAULT '{}', created INTEGER NOT NULL, updated INTEGER NOT NULL, size INTEGER, inodes INTEGER);`;

/**
 * A metadata database an older nixoci wrote (its snapshots table, then `sql`), opened twice, as its migration
 * must be idempotent: `check` runs on each opening (`first` on the first).
 */
function withOlderMetadata(sql: string, check: (md: MetadataStore, first: boolean) => void): void {
  const root = mkdtempSync(join("/tmp", "nixoci-snmig-"));
  try {
    const db = new Database(join(root, "metadata.db"));
    db.exec(`${OLDER_SNAPSHOTS_TABLE}\n${sql}`);
    db.close();
    for (let i = 0; i < 2; i++) {
      const md = new MetadataStore(root);
      try {
        check(md, i === 0);
      } finally {
        md.close();
      }
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

// A database written before nix_layers had a mode column (only `linked`) opens with each layer's mode derived
// from it, and keeps working for new layers.
test("metadata: nix_layers.linked from an older database becomes the mode", () => {
  withOlderMetadata(
    `CREATE TABLE nix_layers (id INTEGER PRIMARY KEY REFERENCES snapshots(id) ON DELETE CASCADE, paths TEXT NOT NULL,
        linked INTEGER NOT NULL DEFAULT 0);
      INSERT INTO snapshots (key, kind, created, updated) VALUES ('a', 'committed', 1, 1), ('b', 'committed', 1, 1);
      INSERT INTO nix_layers (id, paths, linked) VALUES (1, '["/nix/store/x"]', 1), (2, '["/nix/store/y"]', 0);`,
    (md, first) => {
      assert.deepEqual(md.nixLayer(1), { paths: ["/nix/store/x"], mode: "link" });
      assert.deepEqual(md.nixLayer(2), { paths: ["/nix/store/y"], mode: "bind" });
      if (first)
        md.transaction(() => {
          const r = md.create("active", "c", undefined, {});
          md.commit("c", "cc", {}, { size: 0, inodes: 0 });
          md.setNixLayer(r.id, ["/nix/store/z"], "metacopy");
        });
      assert.equal(md.nixLayer(md.mustGet("cc").id)?.mode, "metacopy");
    },
  );
});

// A database whose nix_layers.mode check predates target mode (link, bind, metacopy) opens with its rows kept
// and takes target layers.
test("metadata: a nix_layers table from before target mode takes target layers", () => {
  withOlderMetadata(
    `CREATE TABLE nix_layers (id INTEGER PRIMARY KEY REFERENCES snapshots(id) ON DELETE CASCADE, paths TEXT NOT NULL,
        linked INTEGER NOT NULL DEFAULT 0, mode TEXT CHECK (mode IN ('link', 'bind', 'metacopy')));
      INSERT INTO snapshots (key, kind, created, updated) VALUES ('a', 'committed', 1, 1), ('b', 'committed', 1, 1);
      INSERT INTO nix_layers (id, paths, linked, mode) VALUES (1, '["/nix/store/x"]', 1, 'link'),
        (2, '["/nix/store/y"]', 0, 'metacopy');`,
    (md, first) => {
      assert.deepEqual(md.nixLayer(1), { paths: ["/nix/store/x"], mode: "link" });
      assert.deepEqual(md.nixLayer(2), { paths: ["/nix/store/y"], mode: "metacopy" });
      if (first)
        md.transaction(() => {
          const r = md.create("active", "c", undefined, {});
          md.commit("c", "cc", {}, { size: 0, inodes: 0 });
          md.setNixLayer(r.id, ["/nix/store/z"], "target");
        });
      assert.deepEqual(md.nixLayer(md.mustGet("cc").id), { paths: ["/nix/store/z"], mode: "target" });
    },
  );
});

// A gc_roots table from before its rows recorded their links: each old row links its layer's paths.
test("metadata: a gc_roots table from before image-root links keeps its rows' layer paths", () => {
  withOlderMetadata(
    `CREATE TABLE nix_layers (id INTEGER PRIMARY KEY REFERENCES snapshots(id) ON DELETE CASCADE, paths TEXT NOT NULL,
        linked INTEGER NOT NULL DEFAULT 0, mode TEXT CHECK (mode IN ('link', 'bind', 'metacopy', 'target')));
      CREATE TABLE gc_roots (name TEXT NOT NULL, id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
        PRIMARY KEY (name, id));
      INSERT INTO snapshots (key, kind, created, updated) VALUES ('a', 'committed', 1, 1);
      INSERT INTO nix_layers (id, paths, linked, mode) VALUES (1, '["/nix/store/x","/nix/store/y"]', 0, 'target');
      INSERT INTO gc_roots (name, id) VALUES ('r', 1);`,
    (md, first) => {
      assert.deepEqual(
        [...md.gcRootPaths("r")],
        ["/nix/store/x", "/nix/store/y"],
        "an old row links its paths",
      );
      if (first) md.transaction(() => md.addGcRoot("s", 1, ["/nix/store/top"]));
      assert.deepEqual([...md.gcRootPaths("s")], ["/nix/store/top"], "a new row its image roots");
      assert.deepEqual(
        [...md.gcRoots()].map(([n, p]) => [n, [...p]]),
        [
          ["r", ["/nix/store/x", "/nix/store/y"]],
          ["s", ["/nix/store/top"]],
        ],
      );
    },
  );
});
