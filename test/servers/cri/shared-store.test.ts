// One Nix store on shared storage, mounted READ-ONLY by two nodes (each a containerd of the release under test with
// the CRI plugin and a `nixoci snapshotter --store MOUNT/nix/store` of its own; one docker-registry serves both):
// - a block device both attach, as a SAN LUN is: an ext4 image of a chroot store, attached by each node through a
//   read-only loop device of its own;
// - a network filesystem: sshfs over loopback to a private sshd exporting a chroot store on local disk.
// For each: both nodes pull an image through CRI (as a kubelet does) and run it with no store layer's blob fetched
// from the registry and no copy of the store's files on the node (the container reads the shared mount's own file
// under target mode; the snapshotter's root holds no regular file with data under a layer's nix/store). Then a
// store path the nodes have looked for and not found (an image needing it falls back to downloading its layers,
// and a node with a substituter cannot write it into the read-only store: one clear log line) is added by the
// admin (loop: the nodes unmount, the admin writes to the image read-write, the nodes attach it again; sshfs:
// `nix copy` into the exported directory, which the nodes see once sshfs's cache expires), and both nodes pull
// that image with no store layer's blob fetched. Nothing stays mounted or attached.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, lstatSync, readdirSync, readFileSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import { gcRootsDir } from "../../../src/servers/snapshotter/gcroots.js";
import {
  blobGets,
  chainIds,
  layerClosureRoots,
  layerStorePaths,
  listSnapshots,
  logSize,
  pushNixociImage,
  registryLogLines,
  rpcLines,
  startCriStack,
  stopStackLeavingNoMounts,
  substituterArgs,
  type CriStack,
  type PushedImage,
} from "../../support/cri.js";
import { containerdUnderTest } from "../../support/containerd-release.js";
import { mountsUnder, startRegistry, type Registry } from "../../support/daemons.js";
import { buildFixtures, GC_ROOTS_DIR, PACKAGES_NIX, type FixtureAttr } from "../../support/fixtures.js";
import { until } from "../../support/poll.js";
import { runText } from "../../support/run.js";
import {
  attachReadOnly,
  cleanupMounts,
  copyToChrootStore,
  detach,
  loopDevicesOf,
  makeExt4Image,
  mountSshfs,
  startSshd,
  withImageWritable,
  type Attachment,
  type Sshd,
  type SshfsMount,
} from "../../support/shared-storage.js";
import { logRecords, removeSnapshotterDir, shortTempDir, tail } from "../../support/snapshotter.js";

const release = containerdUnderTest();
/** From 1.7 on auto holds nix layers as mountpoints (target); under 1.6, across filesystems, as metacopy stubs. */
const mountsTargets = release.series !== "1.6";
const CHANGED_GREETING = "Hello from the shared store!";

interface Node {
  name: string;
  stack: CriStack;
  /** Where the node mounts the shared store: its store is MOUNT/nix/store. */
  mount: string;
}

function readIfThere(file: string): Buffer | undefined {
  try {
    return readFileSync(file);
  } catch {
    return undefined;
  }
}

/**
 * Copies of the store's files in the snapshotter's root: regular files under a snapshot's fs/nix/store/REL with the
 * bytes of STORE/REL. (Metacopy stubs are sparse, so they read as zeros; target mode's layers hold no file.)
 */
function storeFileCopies(snapshotterRoot: string, store: string): string[] {
  const out: string[] = [];
  const walk = (dir: string, rel: string | undefined): void => {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      return; // removed meanwhile
    }
    for (const name of names) {
      const p = join(dir, name);
      // Snapshots containerd removes meanwhile (its GC runs in the background) are gone: not copies.
      const st = lstatSync(p, { throwIfNoEntry: false });
      if (!st) continue;
      const r = rel === undefined ? undefined : join(rel, name);
      if (st.isDirectory()) walk(p, r ?? (/\/fs\/nix\/store$/.test(p) ? "" : undefined));
      else if (r !== undefined && st.isFile() && st.size > 0) {
        const original = join(store, r);
        const bytes = readIfThere(p);
        if (bytes && existsSync(original) && bytes.equals(readFileSync(original))) out.push(p);
      }
    }
  };
  walk(join(snapshotterRoot, "snapshots"), undefined);
  return out;
}

describe(`a Nix store on shared storage, mounted read-only by two nodes (containerd ${release.series})`, () => {
  let fx: Record<FixtureAttr, string>;
  /** hello with another greeting: hello2 and greeting2 are new paths, busybox is shared with hello. */
  let hello2: string;
  let registry: Registry | undefined;
  let work: string;
  let image1: PushedImage;
  let image2: PushedImage;
  /** hello2's greeting (its other new path). */
  let greeting2: string;

  before(
    async () => {
      fx = buildFixtures();
      hello2 = runText("nix-build", [
        PACKAGES_NIX,
        "-A",
        "hello",
        "--argstr",
        "greetingText",
        CHANGED_GREETING,
        "--out-link",
        join(GC_ROOTS_DIR, "shared-store-hello2"),
      ]);
      work = shortTempDir("san");
      registry = await startRegistry();
      image1 = pushNixociImage(registry, {
        installables: [fx.hello],
        entrypoint: "/bin/hello",
        repo: "nixoci/shared-hello",
        workDir: work,
      });
      image2 = pushNixociImage(registry, {
        installables: [hello2],
        entrypoint: "/bin/hello",
        repo: "nixoci/shared-hello2",
        workDir: work,
      });
      greeting2 = image2.layers.flatMap(layerStorePaths).find((p) => p.endsWith("-greeting"))!;
      assert.ok(greeting2 && greeting2 !== fx.greeting, JSON.stringify(image2.layers));
    },
    { timeout: 240_000 },
  );

  after(async () => {
    await registry?.stop();
    if (work) await removeSnapshotterDir(work, Boolean(process.env.NIXOCI_KEEP_TMP));
  });

  /**
   * Node `name` on the store mounted at `mount`. Node a also substitutes from a signed cache of hello2's closure:
   * into a read-only store that must fail cleanly.
   */
  function startNode(name: string, mount: string): Promise<Node> {
    return startCriStack({
      prefix: `san${name}`,
      registry,
      snapshotterArgs: (dir) => [
        "--store",
        join(mount, "nix/store"),
        "--containerd-version",
        release.series,
        ...(name === "a" ? substituterArgs(dir, "nixoci-san", [hello2]) : []),
      ],
    }).then((stack) => ({ name, stack, mount }));
  }

  /** CRI PullImage on `node`: no store layer's blob fetched, every store layer committed from the store. */
  async function pullFromStore(node: Node, image: PushedImage): Promise<string> {
    const s = node.stack;
    const storeLayers = image.layers.filter((l) => layerStorePaths(l).length);
    const regFrom = registryLogLines(s.registry);
    const logFrom = logSize(s.sn);
    const pulled = await s.cri.pullImage({ image: { image: image.ref } }, { timeoutMs: 120_000 });
    const fetched = blobGets(s.registry, regFrom);
    for (const l of storeLayers)
      assert.ok(
        !fetched.includes(l.digest),
        `node ${node.name}: store layer ${l.digest} (${layerStorePaths(l).join(" ")}) is not fetched\n${tail(s.sn.logFile)}`,
      );
    const already = rpcLines(s.sn, logFrom).filter(
      (r) => r.method === "Prepare" && r.code === "ALREADY_EXISTS",
    );
    assert.equal(already.length, storeLayers.length, `node ${node.name}: ${JSON.stringify(already)}`);
    // The image's GC root is under the snapshotter's root (never in the read-only store).
    const root = join(
      gcRootsDir(s.sn.root, { realDir: join(node.mount, "nix/store"), storeDir: "/nix/store" }),
      `manifest-${image.manifestDigest.slice("sha256:".length)}`,
    );
    // The image's root (nix-closure-root) holds every layer's paths in its closure: it is the one link.
    assert.deepEqual(
      readdirSync(root).sort(),
      layerClosureRoots(storeLayers[0]).map((p) => basename(p)),
    );
    return pulled.image_ref;
  }

  /**
   * Runs `image` on `node` and checks that the node holds no copy of the store's files: the container reads
   * `greeting`'s file (the shared mount's own file, its inode, under target mode) and the snapshotter's root has no store file
   * with data.
   */
  function runsWithoutCopies(node: Node, image: PushedImage, greeting: string, id: string): void {
    const s = node.stack;
    const text = readFileSync(join(node.mount, greeting, "share/greeting.txt"), "utf8");
    assert.equal(s.run(image.ref, `${id}-run`), text);
    const file = `${greeting}/share/greeting.txt`;
    const seen = s.run(image.ref, `${id}-stat`, [`${fx.busybox}/bin/busybox`, "stat", "-c", "%d %i", file]);
    const st = statSync(join(node.mount, file));
    // Target mode's store view (an overlay) keeps the shared mount's inode and shows its own device.
    if (mountsTargets)
      assert.match(seen, new RegExp(`^\\d+ ${st.ino}\\n$`), `node ${node.name}: the shared mount's file`);
    else console.log(`node ${node.name}: in the container ${seen.trim()}, on the mount ${st.dev} ${st.ino}`);
    assert.deepEqual(
      storeFileCopies(s.sn.root, join(node.mount, "nix/store")),
      [],
      `node ${node.name}: no copy of a store file`,
    );
    const modes = new Set(logRecords(s.sn, "nix layer: committed from the store").map((r) => r.mode));
    assert.deepEqual([...modes], [mountsTargets ? "target" : "metacopy"]);
  }

  /**
   * Before the admin adds hello2: pulling image2 on `node` finds its new paths missing (node a's substitution into
   * the read-only store fails with one clear line), downloads those layers as ordinary ones (the snapshotter, from
   * the registry: CRI's labels say where; then the check for copies of store files does find them), and removing the image releases them.
   */
  async function pullBeforeTheAdmin(node: Node): Promise<void> {
    const s = node.stack;
    const logFrom = logSize(s.sn);
    const regFrom = registryLogLines(s.registry);
    const pulled = await s.cri.pullImage({ image: { image: image2.ref } }, { timeoutMs: 120_000 });
    const fetched = blobGets(s.registry, regFrom);
    const newLayers = image2.layers.filter((l) =>
      layerStorePaths(l).some((p) => p === hello2 || p === greeting2),
    );
    assert.ok(newLayers.length >= 1);
    for (const l of newLayers)
      assert.ok(
        fetched.includes(l.digest),
        `node ${node.name}: ${layerStorePaths(l).join(" ")} is downloaded`,
      );
    // (The shared store lacks them yet: compared with this machine's store, which built them.)
    assert.notDeepEqual(
      storeFileCopies(s.sn.root, "/nix/store"),
      [],
      "the check finds the downloaded layers' store files",
    );
    const log = readFileSync(s.sn.logFile).subarray(logFrom).toString();
    if (node.name === "a") {
      const failed = logRecords(s.sn, "nix layer: substitution failed; unpacking the layer");
      assert.ok(failed.length >= 1, tail(s.sn.logFile));
      for (const r of failed)
        assert.match(
          String(r.error),
          /: cannot substitute: \S+\/nix\/store: cannot add \/nix\/store\/\S+: the store is on a read-only file system$/,
        );
      console.log(`node a: ${JSON.stringify(failed[0])}`);
    } else assert.match(log, /paths missing from the store; fetched the layer from the registry/);
    await s.cri.removeImage({ image: { image: pulled.image_ref } }, { timeoutMs: 60_000 });
    const gone = new Set(chainIds(image2.diffIds).filter((c) => !chainIds(image1.diffIds).includes(c)));
    await until(`node ${node.name}: image2's own snapshots are removed`, 60_000, async () => {
      const left = (await listSnapshots(s.sn.socket)).filter((i) => gone.has(i.name.split("/").at(-1)!));
      assert.deepEqual(left, []);
      assert.deepEqual(storeFileCopies(s.sn.root, "/nix/store"), []);
    });
  }

  /** The whole scenario on two nodes whose stores are mounted at `mounts`; `addPath` is the admin's part. */
  async function scenario(nodes: Node[], addPath: () => Promise<void>): Promise<void> {
    for (const n of nodes) {
      await pullFromStore(n, image1);
      runsWithoutCopies(n, image1, fx.greeting, `san-${n.name}-1`);
    }
    for (const n of nodes) {
      assert.equal(existsSync(join(n.mount, hello2)), false);
      await pullBeforeTheAdmin(n);
    }
    await addPath();
    for (const n of nodes) {
      assert.ok(existsSync(join(n.mount, hello2)), `node ${n.name} sees ${hello2}`);
      await pullFromStore(n, image2);
      runsWithoutCopies(n, image2, greeting2, `san-${n.name}-2`);
      // The first image still runs from the store as it is now.
      runsWithoutCopies(n, image1, fx.greeting, `san-${n.name}-3`);
    }
  }

  describe("a filesystem image both nodes attach through read-only loop devices (a SAN LUN)", () => {
    let dir: string;
    let imageFile: string;
    const attached = new Map<string, Attachment>();
    const nodes: Node[] = [];

    before(
      async () => {
        dir = join(work, "loop");
        const chroot = join(dir, "chroot");
        copyToChrootStore(chroot, [fx.hello]);
        imageFile = join(dir, "store.ext4");
        makeExt4Image(imageFile, chroot);
        for (const name of ["a", "b"]) {
          attached.set(name, attachReadOnly(imageFile, join(dir, `node-${name}`)));
          nodes.push(await startNode(name, join(dir, `node-${name}`)));
        }
      },
      { timeout: 240_000 },
    );

    after(async () => {
      for (const n of nodes) await stopStackLeavingNoMounts(n.stack);
      for (const a of attached.values()) {
        try {
          detach(a);
        } catch {
          // the fallback below, and the check fails
        }
      }
      const left = mountsUnder(dir);
      cleanupMounts(dir, imageFile);
      assert.deepEqual(left, [], "nothing left mounted");
      assert.deepEqual(loopDevicesOf(imageFile), [], "no loop device left attached");
    });

    test(
      "both nodes pull and run without store-layer blobs or copies; a path the admin adds is seen after a remount",
      { timeout: 600_000 },
      async () => {
        // Two attachments of one image: each node has its own block device.
        assert.notEqual(attached.get("a")!.device, attached.get("b")!.device);
        await scenario(nodes, async () => {
          // ext4 is not a cluster filesystem: the nodes let go of it (a plain umount: nothing may hold it open,
          // snapshotters included, while they keep running), the admin writes, the nodes attach it again.
          for (const [name, a] of attached) {
            detach(a);
            attached.delete(name);
          }
          withImageWritable(imageFile, join(dir, "admin"), () =>
            copyToChrootStore(join(dir, "admin"), [hello2]),
          );
          for (const name of ["a", "b"])
            attached.set(name, attachReadOnly(imageFile, join(dir, `node-${name}`)));
        });
      },
    );
  });

  describe("a directory exported over sshfs (a network filesystem)", () => {
    let dir: string;
    let sshd: Sshd | undefined;
    const mounts: SshfsMount[] = [];
    const nodes: Node[] = [];
    let exported: string;

    before(
      async () => {
        dir = join(work, "sshfs");
        exported = join(dir, "export");
        copyToChrootStore(exported, [fx.hello]);
        sshd = await startSshd(join(dir, "sshd"));
        for (const name of ["a", "b"]) {
          const mount = join(dir, `node-${name}`);
          mounts.push(await mountSshfs(sshd, exported, mount));
          nodes.push(await startNode(name, mount));
        }
      },
      { timeout: 240_000 },
    );

    after(async () => {
      for (const n of nodes) await stopStackLeavingNoMounts(n.stack);
      for (const m of mounts) await m.unmount().catch(() => undefined);
      await sshd?.stop();
      const left = mountsUnder(dir);
      cleanupMounts(dir);
      assert.deepEqual(left, [], "nothing left mounted");
    });

    test(
      "both nodes pull and run without store-layer blobs or copies; a path the admin adds is seen after sshfs's cache expires",
      { timeout: 600_000 },
      async () => {
        await scenario(nodes, async () => {
          copyToChrootStore(exported, [hello2]);
          const db = "nix/var/nix/db/db.sqlite";
          // SFTP carries whole seconds.
          const want = Math.floor(statSync(join(exported, db)).mtimeMs / 1000);
          for (const n of nodes)
            await until(
              `node ${n.name} sees the new path and database`,
              120_000,
              () => {
                assert.ok(existsSync(join(n.mount, hello2)));
                assert.equal(Math.floor(statSync(join(n.mount, db)).mtimeMs / 1000), want);
              },
              500,
            );
        });
        // The nodes still let go of the store: nothing holds it open.
        for (const m of mounts.splice(0)) await m.unmount();
      },
    );
  });
});
