// Zero-copy nix layers (--nix-layers target) through a real containerd's CRI pull and ctr, on the release under
// test (NIXOCI_CONTAINERD). From 1.7 on, auto picks target mode (the snapshotter is told the node's release
// with --containerd-version): a nix layer's fs is empty, and containers get an overlay of the other layers
// topped by the chain's store view (one overlay per chain, mounted by the snapshotter on a tmpfs, shared,
// showing exactly the image's store paths). The container then reads the store's own files (same inode;
// the store is never written: a container's change goes to its own layer), whether run by `ctr run` (its
// temporary mounts too) or in a pod through CRI's RuntimeService as a kubelet runs it; `ctr snapshots mounts`
// works; a container keeps running across a SIGKILLed snapshotter and a SIGKILLed containerd; nothing stays
// mounted once containers are removed (the image's view is mounted while it has containers); removing the
// images through CRI releases their snapshots, views' trees and GC roots. Under 1.6 auto keeps link mode (and the same checks
// hold). With --target-mounts binds, containers get the chain's mountpoints directory and one read-only bind per
// store path with Mount.target, which containerd >= 1.7 mounts itself: the store's own files, same device and
// inode, read-only. Without --containerd-version, the running containerd's Version API or `containerd --version`
// decides.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { gcRootsDir } from "../../../src/servers/snapshotter/gcroots.js";
import { defaultMountpointsDir } from "../../../src/servers/snapshotter/mountpoints.js";
import {
  chainIds,
  kickContainerdGc,
  layerStorePaths,
  pushNixociImage,
  SNAPSHOTTER_NAME,
  startCriStack,
  stopStackLeavingNoMounts,
  type CriStack,
  type PushedImage,
  untilSnapshotterEmpty,
} from "../../support/cri.js";
import { until } from "../../support/poll.js";
import { criRuntimeClient, runInPod } from "../../support/cri-runtime.js";
import { mountsUnder, startContainerd, type Containerd } from "../../support/daemons.js";
import { buildFixtures, type FixtureAttr } from "../../support/fixtures.js";
import {
  removeSnapshotterDir,
  logRecords,
  REF_LABEL,
  rpc,
  shortTempDir,
  startSnapshotter,
  STORE_PATH_LABEL,
  stopSnapshotter,
  tail,
} from "../../support/snapshotter.js";
import { snapshotsClient } from "../../../src/proto/containerd.js";
import { containerdUnderTest } from "../../support/containerd-release.js";

const release = containerdUnderTest();
/** Whether this containerd mounts Mount.target (1.7 and later). */
const mountsTargets = release.series !== "1.6";

/**
 * Store-path binds left in containerd's temporary mounts (containerd-mount* in $XDG_RUNTIME_DIR, else $TMPDIR,
 * where `ctr run` and CRI mount a rootfs to read its /etc/group or /etc/passwd): only target mode's binds can be
 * there.
 */
function tempMountLeftovers(): string[] {
  return mountsUnder(process.env.XDG_RUNTIME_DIR || tmpdir()).filter((mp) =>
    /\/containerd-mount[^/]*\/nix\/store\//.test(mp),
  );
}

/**
 * `ctr snapshots mounts` of a view `name` prepared above `image`'s top (removed after), checked as in either
 * mode: the first line is an overlay whose lower directories are the one giving the chain's store paths (shared
 * by its containers), then the ordinary layers only; `check` gets the lines and that first lower directory.
 */
function checkCtrMounts(
  s: CriStack,
  image: PushedImage,
  name: string,
  check: (lines: string[], storeLower: string) => void,
): void {
  const top = chainIds(image.diffIds).at(-1)!;
  s.ctr(["snapshots", "--snapshotter", SNAPSHOTTER_NAME, "prepare", name, top]);
  try {
    const lines = s
      .ctr(["snapshots", "--snapshotter", SNAPSHOTTER_NAME, "mounts", "/mnt", name])
      .trim()
      .split("\n");
    assert.match(lines[0], /^mount -t overlay overlay \/mnt -o /);
    const lower = /lowerdir=([^,]+)/.exec(lines[0])![1].split(":");
    const storeLayers = image.layers.filter((l) => layerStorePaths(l).length).length;
    assert.equal(lower.length, 1 + image.layers.length - storeLayers, lines[0]);
    check(lines, lower[0]);
  } finally {
    s.ctr(["snapshots", "--snapshotter", SNAPSHOTTER_NAME, "rm", name]);
  }
}

describe(`snapshotter nix layers: auto's mode under containerd ${release.series} (CRI, ctr)`, () => {
  let fx: Record<FixtureAttr, string>;
  let stack: CriStack | undefined;
  let image: PushedImage;
  /** containerd's own directory (root, state: where its shims mount rootfs). */
  let containerdDir: string;

  before(
    async () => {
      fx = buildFixtures();
      stack = await startCriStack({
        prefix: "sntarget",
        snapshotterArgs: [
          "--store",
          "/nix/store",
          "--nix-layers",
          "auto",
          "--containerd-version",
          release.series,
        ],
        sandboxImage: "nixoci/pause:v1",
      });
      containerdDir = dirname(stack.containerd.root);
      // The pods' sandbox image: a nix image too, whose process sleeps.
      pushNixociImage(stack.registry, {
        installables: [fx.busybox],
        repo: "nixoci/pause",
        entrypoint: `${fx.busybox}/bin/busybox sleep 100000`,
        workDir: stack.dir,
      });
      image = pushNixociImage(stack.registry, {
        installables: [fx.hello, fx.busybox, fx["single-file"]],
        repo: "nixoci/target",
        entrypoint: "/bin/hello",
        workDir: stack.dir,
      });
    },
    { timeout: 240_000 },
  );
  after(() => stopStackLeavingNoMounts(stack));
  /** Where the snapshotter mounts its store views. */
  const viewsDir = (): string => defaultMountpointsDir(stack!.sn.root);

  test(
    mountsTargets
      ? "a CRI pull commits the store layers as mountpoints only; ctr run sees the store's files, read-only"
      : "a CRI pull commits the store layers as hard links (auto's choice under 1.6); ctr run works",
    { timeout: 240_000 },
    async () => {
      const s = stack!;
      const storeLayers = image.layers.filter((l) => layerStorePaths(l).length);
      assert.ok(storeLayers.length >= 1);
      const pulled = await s.cri.pullImage({ image: { image: image.ref } }, { timeoutMs: 120_000 });
      assert.match(pulled.image_ref, /^sha256:/);

      const version = logRecords(s.sn, "containerd version");
      assert.deepEqual(
        version.map((r) => [r.version, r.mountTargets]),
        [[release.series, mountsTargets]],
        tail(s.sn.logFile),
      );
      const committed = logRecords(s.sn, "nix layer: committed from the store");
      assert.equal(committed.length, storeLayers.length, "every store layer came from the store");
      for (const r of committed) {
        assert.equal(r.mode, mountsTargets ? "target" : "link");
        if (mountsTargets) assert.equal(r.files, 0, "no per-file work");
      }
      if (mountsTargets) {
        // A target layer's fs is empty (its mountpoints are made per chain): only the ordinary layers hold files.
        const snapshots = join(s.sn.root, "snapshots");
        const filled = readdirSync(snapshots).filter((id) => readdirSync(join(snapshots, id, "fs")).length);
        assert.equal(filled.length, image.layers.length - storeLayers.length, filled.join(" "));
      }

      assert.equal(s.run(image.ref, "nixoci-target-1"), "Hello from nixoci!\n");
      const bb = `${fx.busybox}/bin/busybox`;
      const hello = `${fx.hello}/bin/hello`;
      const st = statSync(hello);
      const seen = s.run(image.ref, "nixoci-target-2", [bb, "stat", "-L", "-c", "%d %i", hello]);
      // The store's own file (a view, an overlay, shows its own device) or a hard link to it (link mode).
      assert.match(seen, new RegExp(`^\\d+ ${st.ino}\\n$`));
      assert.equal(
        s.run(image.ref, "nixoci-target-3", [bb, "cat", fx["single-file"]]),
        readFileSync(fx["single-file"], "utf8"),
      );
      // A container's change to a store path goes to its own writable layer, never to the store.
      const touched = s.run(image.ref, "nixoci-target-4", [
        bb,
        "sh",
        "-c",
        `echo changed > ${fx.hello}/new && ${bb} cat ${fx.hello}/new`,
      ]);
      assert.equal(touched, "changed\n");
      assert.equal(existsSync(`${fx.hello}/new`), false, "the store is unchanged");
      assert.deepEqual(mountsUnder(s.dir), [], "the snapshotter mounts nothing under its root");
      // containerd removes a container's snapshot in its GC, after `ctr run --rm` returns.
      let kicked = 0;
      await until("the image's store view goes with its last container", 60_000, () => {
        if (++kicked % 8 === 0) kickContainerdGc(s); // a deletion during a collection waits for the next one
        assert.deepEqual(mountsUnder(viewsDir()), []);
      });
      assert.deepEqual(mountsUnder(containerdDir), [], "ctr run --rm unmounted what containerd mounted");
      assert.deepEqual(tempMountLeftovers(), [], "nor is a temporary mount left");
    },
  );

  if (mountsTargets)
    test("ctr snapshots mounts prints one overlay topped by the image's store view", () =>
      checkCtrMounts(stack!, image, "nixoci-target-view", (lines, storeLower) => {
        assert.equal(lines.length, 1, lines.join("\n"));
        assert.match(storeLower, /^\/dev\/shm\/nixoci-sn-[0-9a-f]{24}\/v\d+\/view\/root$/, "on a tmpfs");
        // Exactly the image's store paths, each the store's own (a directory: its files' inodes).
        const paths = [...new Set(image.layers.flatMap(layerStorePaths))];
        assert.deepEqual(
          readdirSync(join(storeLower, "nix/store")).sort(),
          paths.map((p) => basename(p)).sort(),
        );
        const hello = join(storeLower, fx.hello, "bin/hello");
        assert.equal(statSync(hello).ino, statSync(`${fx.hello}/bin/hello`).ino);
      }));

  if (mountsTargets)
    test(
      "a running container outlives a SIGKILLed snapshotter and containerd; removed, it leaves no mount",
      { timeout: 240_000 },
      async () => {
        const s = stack!;
        const bb = `${fx.busybox}/bin/busybox`;
        const id = "nixoci-target-long";
        s.ctr(["run", "-d", "--snapshotter", SNAPSHOTTER_NAME, image.ref, id, bb, "sleep", "600"]);
        const exec = (n: number): string =>
          s.ctr(["task", "exec", "--exec-id", `e${n}`, id, bb, "cat", fx["single-file"]]);
        const want = readFileSync(fx["single-file"], "utf8");
        assert.equal(exec(1), want);
        assert.equal(mountsUnder(containerdDir).length, 1, "the rootfs is mounted");

        await s.restartSnapshotter("SIGKILL");
        assert.equal(exec(2), want);
        await s.containerd.restart("SIGKILL");
        let n = 3;
        assert.equal(
          await until("task exec after containerd's restart", 30_000, async () => exec(n++)),
          want,
        );

        s.ctr(["task", "kill", "-s", "SIGKILL", id]);
        await until("the task stopped", 30_000, () => assert.match(s.ctr(["task", "ls"]), /\bSTOPPED\b/));
        s.ctr(["task", "delete", id]);
        s.ctr(["containers", "delete", id]);
        assert.deepEqual(mountsUnder(containerdDir), [], "nothing stays mounted");
        assert.deepEqual(mountsUnder(s.dir), []);
        // The store view the predecessor mounted goes with the last container too (the restarted snapshotter
        // has no record of readying it).
        let kicked = 0;
        await until("the store view goes with its last container", 60_000, () => {
          if (++kicked % 8 === 0) kickContainerdGc(s);
          assert.deepEqual(mountsUnder(viewsDir()), []);
        });
      },
    );

  test(
    "a container in a pod (CRI RuntimeService, as a kubelet runs it) reads the store's files; removed, it leaves no mount",
    { timeout: 240_000 },
    async () => {
      const s = stack!;
      const rt = criRuntimeClient(s.containerd.address);
      try {
        const logDir = join(s.dir, "pod-logs");
        mkdirSync(logDir);
        const hello = `${fx.hello}/bin/hello`;
        const st = statSync(hello);
        const run = (name: string, command?: string[]) =>
          runInPod(rt, { name, image: image.ref, command, logDir });
        assert.deepEqual(await run("hello"), { stdout: "Hello from nixoci!\n", exitCode: 0 });
        const stat = await run("stat", [`${fx.busybox}/bin/busybox`, "stat", "-L", "-c", "%d %i", hello]);
        assert.equal(stat.exitCode, 0);
        assert.match(stat.stdout, new RegExp(`^\\d+ ${st.ino}\\n$`), "the store's own file, or a link to it");
        assert.deepEqual(mountsUnder(containerdDir), [], "nothing stays mounted");
        assert.deepEqual(mountsUnder(s.dir), []);
        assert.deepEqual(tempMountLeftovers(), []);
      } finally {
        rt.close();
      }
    },
  );

  test(
    "CRI RemoveImage (the image and the pods' sandbox image): containerd's GC leaves the snapshotter empty and drops the image's GC root",
    { timeout: 120_000 },
    async () => {
      const s = stack!;
      const root = join(
        gcRootsDir(s.sn.root, { realDir: "/nix/store", storeDir: "/nix/store" }),
        `manifest-${image.manifestDigest.slice("sha256:".length)}`,
      );
      assert.ok(existsSync(root), `GC root ${root} while the image is there`);
      await s.cri.removeImage({ image: { image: image.ref } });
      await s.cri.removeImage({ image: { image: `${s.registry.host}/nixoci/pause:v1` } });
      await untilSnapshotterEmpty(s, () => assert.equal(existsSync(root), false, `${root} is gone`));
      assert.deepEqual(mountsUnder(containerdDir), []);
      assert.deepEqual(mountsUnder(s.dir), []);
      assert.deepEqual(mountsUnder(viewsDir()), [], "the images' store views went with them");
    },
  );
});

// --target-mounts binds: the mountpoints directory and one read-only bind per store path with Mount.target.
if (mountsTargets)
  describe(`snapshotter target mode with --target-mounts binds under containerd ${release.series}`, () => {
    let fx: Record<FixtureAttr, string>;
    let stack: CriStack | undefined;
    let image: PushedImage;
    let containerdDir: string;

    before(
      async () => {
        fx = buildFixtures();
        stack = await startCriStack({
          prefix: "snbinds",
          snapshotterArgs: ["--store", "/nix/store", "--nix-layers", "target", "--target-mounts", "binds"],
        });
        containerdDir = dirname(stack.containerd.root);
        image = pushNixociImage(stack.registry, {
          installables: [fx.hello, fx.busybox, fx["single-file"], fx["symlink-path"]],
          repo: "nixoci/binds",
          entrypoint: "/bin/hello",
          workDir: stack.dir,
        });
      },
      { timeout: 240_000 },
    );
    after(() => stopStackLeavingNoMounts(stack));

    test(
      "ctr run reads the store's own files, read-only; nothing stays mounted",
      { timeout: 120_000 },
      async () => {
        const s = stack!;
        await s.cri.pullImage({ image: { image: image.ref } }, { timeoutMs: 120_000 });
        assert.equal(s.run(image.ref, "nixoci-binds-1"), "Hello from nixoci!\n");
        const bb = `${fx.busybox}/bin/busybox`;
        const hello = `${fx.hello}/bin/hello`;
        const st = statSync(hello);
        const seen = s.run(image.ref, "nixoci-binds-2", [bb, "stat", "-L", "-c", "%d %i", hello]);
        assert.equal(seen, `${st.dev} ${st.ino}\n`, "the store's own file");
        const touched = s.run(image.ref, "nixoci-binds-3", [
          bb,
          "sh",
          "-c",
          `${bb} touch ${fx.hello}/new 2>&1; echo status=$?`,
        ]);
        assert.equal(touched, `touch: ${fx.hello}/new: Read-only file system\nstatus=1\n`);
        assert.deepEqual(mountsUnder(s.dir), [], "the snapshotter mounts nothing");
        assert.deepEqual(mountsUnder(defaultMountpointsDir(s.sn.root)), []);
        assert.deepEqual(mountsUnder(containerdDir), [], "ctr run --rm unmounted what containerd mounted");
        assert.deepEqual(tempMountLeftovers(), [], "nor is a temporary mount left");
      },
    );

    test("ctr snapshots mounts prints the overlay and a read-only bind per store path", () =>
      checkCtrMounts(stack!, image, "nixoci-binds-view", (lines, storeLower) => {
        assert.match(storeLower, /^\/dev\/shm\/nixoci-sn-[0-9a-f]{24}\/\d+$/, "on a tmpfs");
        const mountpoints = readdirSync(join(storeLower, "nix/store")).sort();
        const binds = lines.slice(1).sort();
        // Every store path of the image but a symlink (its layer holds the symlink itself).
        const want = [...new Set(image.layers.flatMap(layerStorePaths))]
          .filter((p) => !lstatSync(p).isSymbolicLink())
          .map((p) => `mount -t bind ${p} /mnt${p} -o ro,rbind`)
          .sort();
        assert.deepEqual(binds, want);
        // One mountpoint (or symlink) per store path of the image.
        const paths = [...new Set(image.layers.flatMap(layerStorePaths))].map((p) => basename(p)).sort();
        assert.deepEqual(mountpoints, paths);
      }));
  });

// Without --containerd-version, auto asks the node's containerd on the first nix layer: the running containerd's
// Version API at --containerd-address (here the test's containerd of the release under test), else
// `containerd --version` (the first on PATH: here the release under test's); a node where no containerd answers
// gets the modes that work everywhere, and a warning saying so.
describe(`snapshotter auto mode: the node's containerd version (${release.series})`, () => {
  let fx: Record<FixtureAttr, string>;
  let containerd: Containerd | undefined;

  before(
    async () => {
      fx = buildFixtures();
      containerd = await startContainerd();
    },
    { timeout: 120_000 },
  );
  after(() => containerd?.stop());

  /**
   * Starts a snapshotter with `args` and PATH `path`, makes one nix layer (the decision's first need), and returns
   * the log's version records and the committed layer's mode.
   */
  const decide = async (
    path: string,
    args: (dir: string) => string[],
  ): Promise<{ records: Record<string, unknown>[]; mode: unknown }> => {
    const dir = shortTempDir("snver");
    try {
      // A made-up chain ID (the layer check has tests of its own in nix-layers.test).
      const sn = await startSnapshotter(
        dir,
        ["--store", "/nix/store", "--trust-layer-labels", ...args(dir)],
        {
          ...process.env,
          PATH: path,
        },
      );
      const client = snapshotsClient(sn.socket);
      try {
        const labels = { [REF_LABEL]: "nixoci-version-layer", [`${STORE_PATH_LABEL}0`]: fx["single-file"] };
        const r = await rpc(client, "Prepare", { key: "extract-version", parent: "", labels });
        assert.equal(r.err, 6, `ALREADY_EXISTS: committed from the store\n${tail(sn.logFile)}`);
      } finally {
        client.close();
        await stopSnapshotter(sn);
      }
      const committed = logRecords(sn, "nix layer: committed from the store");
      assert.equal(committed.length, 1, tail(sn.logFile));
      return {
        records: [...logRecords(sn, "containerd version"), ...logRecords(sn, UNKNOWN)],
        mode: committed[0].mode,
      };
    } finally {
      await removeSnapshotterDir(dir);
    }
  };
  const UNKNOWN = "containerd's version unknown; nix layers are not mounted by target (containerd >= 1.7)";
  const absentSocket = (dir: string): string[] => ["--containerd-address", join(dir, "no-containerd.sock")];

  test(
    "no containerd on PATH, --containerd-address names the running containerd: its Version API decides",
    { timeout: 60_000 },
    async () => {
      const address = containerd!.address;
      const { records, mode } = await decide("/nonexistent", () => ["--containerd-address", address]);
      assert.deepEqual(
        records.map((r) => [r.level, r.msg, r.version, r.mountTargets, r.source, r.address]),
        [["debug", "containerd version", release.series, mountsTargets, "version API", address]],
      );
      assert.match(String(records[0].reported), new RegExp(`^v?${release.series.replace(".", "\\.")}\\.`));
      assert.equal(mode, mountsTargets ? "target" : "link");
    },
  );

  test("containerd --version on PATH decides", { timeout: 60_000 }, async () => {
    const path = release.binDir ? `${release.binDir}:${process.env.PATH ?? ""}` : (process.env.PATH ?? "");
    const { records, mode } = await decide(path, absentSocket);
    assert.deepEqual(
      records.map((r) => [r.level, r.msg, r.version, r.mountTargets, r.source]),
      [["debug", "containerd version", release.series, mountsTargets, "containerd --version"]],
    );
    assert.equal(mode, mountsTargets ? "target" : "link");
  });

  test("no containerd on PATH: a warning, and no target mode", { timeout: 60_000 }, async () => {
    let socket = "";
    const { records, mode } = await decide("/nonexistent", (dir) => {
      socket = join(dir, "no-containerd.sock");
      return absentSocket(dir);
    });
    assert.deepEqual(
      records.map((r) => [r.level, r.msg, r.error, r.versionApi]),
      [
        [
          "warn",
          UNKNOWN,
          "containerd --version: not found on PATH; name the version with --containerd-version 1.6|1.7|2.x",
          `containerd's Version API at ${socket}: no such socket`,
        ],
      ],
    );
    assert.equal(mode, "link");
  });
});
