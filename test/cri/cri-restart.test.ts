// The snapshotter SIGKILLed in the middle of a CRI pull (real containerd 1.6 CRI plugin; registry, snapshotter
// and containerd as child processes): the pull fails with an error within a bound (no hang on the closed
// socket); the snapshotter restarted on the same --root and socket serves a new pull of the same image, which
// runs; nothing stays mounted; containerd's snapshots all exist in the snapshotter, every snapshot's parent
// exists; and once the images are removed containerd's GC leaves the snapshotter with no snapshot at all.
//
// Two kills, on one stack whose snapshotter substitutes into an empty store from a signed file:// cache:
// - during a Prepare that is substituting a store path (an entry appears in the store directory, i.e. the NAR is
//   being restored or was just renamed into place): a call cut off mid-way;
// - right after the first Prepare of a plain image's pull is logged: containerd is downloading and unpacking
//   that layer, and its Commit then finds the socket closed.
// The killed NAR restore's temporary directories are swept when the snapshotter restarts (their writer is gone).
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, readdirSync } from "node:fs";
import { basename, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import {
  chainIds,
  layerStorePaths,
  listSnapshots,
  logSize,
  pushBuilt,
  pushNixociImage,
  rpcLines,
  startCriStack,
  type CriStack,
  type PushedImage,
  stopStackLeavingNoMounts,
} from "../support/cri.js";
import { until } from "../support/poll.js";
import { mountsUnder } from "../support/daemons.js";
import {
  buildFixtures,
  generateCacheKey,
  makeNixCache,
  makeTempDir,
  type FixtureAttr,
} from "../support/fixtures.js";
import { exited, tail } from "../support/snapshotter.js";
import { makeImage } from "../oci/make-image.js";

/** How long a pull whose snapshotter died may take to fail. */
const FAIL_BOUND_MS = 60_000;

describe("the snapshotter SIGKILLed during a CRI pull, then restarted", () => {
  let fx: Record<FixtureAttr, string>;
  let stack: CriStack | undefined;
  let image: PushedImage;
  let store: string;
  /** Temporary store entries at the kill, and after the restart and re-pull. */
  let atKill: string[] = [];
  let left: string[] = [];
  const pulledIds: string[] = [];

  before(
    async () => {
      fx = buildFixtures();
      stack = await startCriStack({
        prefix: "crikill",
        snapshotterArgs: (dir) => {
          store = join(dir, "store");
          // It must exist: auto mode compares its filesystem with --root's, and with no store directory yet it
          // silently downloads nix layers instead of substituting into it.
          mkdirSync(store);
          const key = generateCacheKey("nixoci-cri-kill", join(dir, "keys"));
          const cache = makeNixCache({
            paths: [fx.hello, fx.big],
            dir: join(dir, "cache"),
            compression: "xz",
            secretKeyFile: key.secretKeyFile,
          });
          return ["--store", store, "--substituter", cache, "--trusted-public-key", key.publicKey];
        },
      });
      image = pushNixociImage(stack.registry, {
        installables: [fx.big, fx.hello],
        entrypoint: "/bin/hello",
        repo: "nixoci/big",
        workDir: makeTempDir("cri-kill-work"),
      });
    },
    { timeout: 240_000 },
  );

  after(() => stopStackLeavingNoMounts(stack));

  /** Starts a pull, kills the snapshotter when `trigger` says so (polled every 5 ms), checks the pull fails. */
  async function killDuringPull(ref: string, trigger: () => boolean, what: string): Promise<void> {
    const s = stack!;
    const started = Date.now();
    const pull = s.cri.pullImage({ image: { image: ref } }, { timeoutMs: 120_000 });
    const outcome = pull.then(
      () => "succeeded",
      (err: Error) => `failed: ${err.message}`,
    );
    let killed = false;
    let settled: string | undefined;
    void outcome.then((o) => (settled = o));
    while (!settled && Date.now() - started < 60_000) {
      if (trigger()) {
        s.sn.child.kill("SIGKILL");
        killed = true;
        break;
      }
      await sleep(5);
    }
    assert.ok(killed, `the trigger (${what}) fired before the pull ended (${settled ?? "still running"})`);
    const killedAt = Date.now();
    const timer = new AbortController();
    const result = await Promise.race([
      outcome,
      sleep(FAIL_BOUND_MS, "hung", { signal: timer.signal }).catch(() => "hung"),
    ]);
    timer.abort();
    console.log(
      `killed ${killedAt - started} ms into the pull (${what}); pull ${result} ${Date.now() - killedAt} ms later`,
    );
    assert.match(result, /^failed: /, "the pull fails once the snapshotter is gone");
    assert.ok(exited(s.sn.child) || (await sleep(1000), exited(s.sn.child)));
  }

  /** Restarts the snapshotter, pulls `ref` again (retrying while containerd reconnects, bounded), runs it. */
  async function restartPullRun(ref: string, id: string, want: string): Promise<void> {
    const s = stack!;
    await s.restartSnapshotter("SIGKILL");
    let attempts = 0;
    const pulled = await until(
      "the pull after the restart",
      60_000,
      async () => {
        attempts++;
        return s.cri.pullImage({ image: { image: ref } }, { timeoutMs: 60_000 });
      },
      500,
    );
    console.log(`pull after restart succeeded (attempt ${attempts})`);
    pulledIds.push(pulled.image_ref);
    assert.equal(s.run(ref, id), want);
    assert.deepEqual(mountsUnder(s.dir), [], "nothing mounted under the snapshotter's dir");
    assert.deepEqual(mountsUnder(s.containerd.root), [], "nothing mounted under containerd's root");
    await checkConsistent();
  }

  /** containerd's snapshots all exist in the snapshotter; the snapshotter's parents all exist. */
  async function checkConsistent(): Promise<void> {
    const s = stack!;
    // `ctr snapshots usage` asks the snapshotter (Usage) for every snapshot containerd's metadata has.
    const usage = s.ctr(["snapshots", "--snapshotter", "nixoci", "usage"]);
    assert.ok(usage.split("\n").length > 1, usage);
    const mine = await listSnapshots(s.sn.socket);
    const names = new Set(mine.map((i) => i.name));
    for (const i of mine)
      if (i.parent) assert.ok(names.has(i.parent), `parent ${i.parent} of ${i.name} exists`);
  }

  test(
    "killed while a Prepare substitutes a store path: the pull fails, restart, pull again, run",
    { timeout: 240_000 },
    async () => {
      // The trigger: a temporary entry in the store directory (a NAR being restored under a temporary name,
      // before its rename into place), i.e. the Prepare that substitutes it is cut off mid-way.
      const entries = (): string[] => {
        try {
          return readdirSync(store).filter((n) => n !== ".nixoci");
        } catch {
          return [];
        }
      };
      const temps = (): string[] => entries().filter((n) => n.startsWith("."));
      await killDuringPull(image.ref, () => temps().length > 0, "a temporary store entry appeared");
      atKill = temps();
      console.log(`store entries at the kill: ${entries().join(" ")}`);
      await restartPullRun(image.ref, "kill-sub-run", "Hello from nixoci!\n");
      // Every path is in the store now, whole.
      for (const p of image.layers.flatMap(layerStorePaths))
        assert.ok(entries().includes(basename(p)), `${p} is in the store`);
      left = temps();
      console.log(
        `temporary entries in the store after the restart and re-pull: ${left.join(" ") || "none"}`,
      );
    },
  );

  test(
    "no temporary leftovers in the store after a kill mid-substitution",
    {
      timeout: 10_000,
    },
    () => {
      assert.ok(atKill.length > 0, "the previous test killed the snapshotter mid-restore");
      assert.deepEqual(left, [], "the temporary entries of the killed restore are gone");
    },
  );

  test(
    "killed right after the first Prepare of a plain image's pull: the pull fails, restart, pull again, run",
    { timeout: 240_000 },
    async () => {
      const s = stack!;
      const plain = await makeImage({ hello: "plain after a kill\n", randomBytes: 8 << 20 });
      const { ref } = await pushBuilt(s.registry, plain, "plain/big");
      const from = logSize(s.sn);
      await killDuringPull(
        ref,
        () => rpcLines(s.sn, from).some((r) => r.method === "Prepare"),
        "a Prepare was logged",
      );
      await restartPullRun(ref, "kill-plain-run", "plain after a kill\n");
    },
  );

  test(
    "after removing the images containerd's GC leaves the snapshotter empty",
    { timeout: 120_000 },
    async () => {
      const s = stack!;
      // Every image CRI has (also those of pulls a failed test left behind).
      const ids = new Set([...pulledIds, ...(await s.cri.listImages({})).images.map((i) => i.id)]);
      for (const id of ids) await s.cri.removeImage({ image: { image: id } }, { timeoutMs: 60_000 });
      // A deletion schedules containerd's GC; the snapshotter cleanup runs in the background: poll.
      await until(
        "the snapshotter holds no snapshot",
        60_000,
        async () => {
          const left = await listSnapshots(s.sn.socket);
          if (left.length) throw new Error(left.map((i) => `${i.kind} ${i.name}`).join(", "));
        },
        250,
      );
      assert.deepEqual(mountsUnder(s.dir), []);
      assert.ok(chainIds(image.diffIds).length > 0);
      console.log(tail(s.sn.logFile, 3));
    },
  );
});
