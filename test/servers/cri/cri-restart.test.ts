// The snapshotter SIGKILLed in the middle of a CRI pull (real containerd CRI plugin, NIXOCI_CONTAINERD; registry, snapshotter
// and containerd as child processes): the pull fails with an error within a bound (no hang on the closed
// socket); the snapshotter restarted on the same --root and socket serves a new pull of the same image, which
// runs; nothing stays mounted; containerd's snapshots all exist in the snapshotter, every snapshot's parent
// exists; and once the images are removed containerd's GC leaves the snapshotter with no snapshot at all.
//
// Two kills, each test on a stack of its own (started by the test, stopped at its end) whose snapshotter
// substitutes into an empty store from a signed file:// cache:
// - during a Prepare that is substituting a store path (an entry appears in the store directory, i.e. the NAR is
//   being restored or was just renamed into place): a call cut off mid-way. The killed NAR restore's temporary
//   directories are swept when the snapshotter restarts (their writer is gone);
// - right after the first Prepare of a plain image's pull is logged: containerd is downloading and unpacking
//   that layer, and its Commit then finds the socket closed.
import { test, describe, before } from "node:test";
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { basename } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import {
  checkSnapshotsConsistent,
  layerStorePaths,
  listSnapshots,
  logSize,
  pushBuilt,
  pushNixociImage,
  rpcLines,
  startSubstitutingStack,
  type CriStack,
  stopStackLeavingNoMounts,
  untilSnapshotterEmpty,
} from "../../support/cri.js";
import { until } from "../../support/poll.js";
import { freeze } from "../../support/drill.js";
import { mountsUnder } from "../../support/daemons.js";
import { buildFixtures, makeTempDir, type FixtureAttr } from "../../support/fixtures.js";
import { exited, tail } from "../../support/snapshotter.js";
import { makeImage } from "../../support/make-image.js";
import { containerdUnderTest } from "../../support/containerd-release.js";

/** How long a pull whose snapshotter died may take to fail (a liveness bound: the failure is a hang). */
const FAIL_BOUND_MS = 60_000;

describe(`the snapshotter SIGKILLed during a CRI pull of containerd ${containerdUnderTest().series}, then restarted`, () => {
  let fx: Record<FixtureAttr, string>;

  before(
    () => {
      fx = buildFixtures();
    },
    { timeout: 240_000 },
  );

  /**
   * A stack of its own for one test: its snapshotter substitutes into an empty store (DIR/store) from a signed
   * file:// cache of fx.hello and fx.big.
   */
  function startKillStack(prefix: string): Promise<{ stack: CriStack; store: string }> {
    return startSubstitutingStack({ prefix, keyName: "nixoci-cri-kill", paths: [fx.hello, fx.big] });
  }

  /** Starts a pull, kills the snapshotter when `trigger` says so (polled every 5 ms), checks the pull fails. */
  async function killDuringPull(
    s: CriStack,
    ref: string,
    trigger: () => boolean,
    what: string,
  ): Promise<void> {
    const pull = s.cri.pullImage({ image: { image: ref } }, { timeoutMs: 120_000 });
    const outcome = pull.then(
      () => "succeeded",
      (err: Error) => `failed: ${err.message}`,
    );
    let settled: string | undefined;
    void outcome.then((o) => (settled = o));
    // Poll the trigger (a pull that ends first fails the test at once). When it fires, the snapshotter is frozen
    // (SIGSTOP, confirmed in /proc) and the trigger asked again: a state seen a moment before the kill may be
    // gone by then (a restore renamed into place), so the kill lands only on a frozen state the trigger holds
    // for; otherwise the snapshotter resumes and the polling goes on.
    const deadline = Date.now() + 60_000;
    for (;;) {
      assert.ok(Date.now() < deadline, `the trigger (${what}) did not fire within 60 s of the pull`);
      assert.equal(settled, undefined, `the trigger (${what}) fired before the pull ended`);
      if (trigger()) {
        await freeze(s.sn.child.pid!);
        if (trigger()) break;
        s.sn.child.kill("SIGCONT");
      }
      await sleep(5);
    }
    s.sn.child.kill("SIGKILL");
    const timer = new AbortController();
    const result = await Promise.race([
      outcome,
      sleep(FAIL_BOUND_MS, "hung", { signal: timer.signal }).catch(() => "hung"),
    ]);
    timer.abort();
    console.log(`killed the snapshotter (${what}); the pull ${result}`);
    assert.match(result, /^failed: /, "the pull fails once the snapshotter is gone");
    await until("the killed snapshotter to exit", 10_000, () => assert.ok(exited(s.sn.child)), 50);
  }

  /**
   * Restarts the snapshotter, pulls `ref` again (retrying while containerd reconnects, bounded), runs it;
   * returns the image id.
   */
  async function restartPullRun(s: CriStack, ref: string, id: string, want: string): Promise<string> {
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
    assert.equal(s.run(ref, id), want);
    assert.deepEqual(mountsUnder(s.dir), [], "nothing mounted under the snapshotter's dir");
    assert.deepEqual(mountsUnder(s.containerd.root), [], "nothing mounted under containerd's root");
    // containerd's metadata has the image's snapshots, and they are consistent with the snapshotter's.
    const usage = await checkSnapshotsConsistent(s);
    assert.ok(usage.split("\n").length > 1, usage);
    return pulled.image_ref;
  }

  /** Removes every image CRI has; containerd's GC must then leave the snapshotter with no snapshot at all. */
  async function removeImagesLeavesSnapshotterEmpty(s: CriStack, pulled: string): Promise<void> {
    assert.ok((await listSnapshots(s.sn.socket)).length > 0, "the pulled image has snapshots to remove");
    // Every image CRI has (the one pulled after the restart, and whatever the killed pull left).
    const ids = new Set([pulled, ...(await s.cri.listImages({})).images.map((i) => i.id)]);
    for (const id of ids) await s.cri.removeImage({ image: { image: id } }, { timeoutMs: 60_000 });
    // A deletion schedules containerd's GC; the snapshotter cleanup runs in the background: poll.
    await untilSnapshotterEmpty(s);
    assert.deepEqual(mountsUnder(s.dir), []);
  }

  test(
    "killed while a Prepare substitutes a store path: the pull fails; restarted, it pulls again and runs, the " +
      "killed restore's temporaries are swept, and removing the image leaves the snapshotter empty",
    { timeout: 420_000 },
    async () => {
      const { stack: s, store } = await startKillStack("crikill-sub");
      try {
        const image = pushNixociImage(s.registry, {
          installables: [fx.big, fx.hello],
          entrypoint: "/bin/hello",
          repo: "nixoci/big",
          workDir: makeTempDir("cri-kill-work"),
        });
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
        await killDuringPull(s, image.ref, () => temps().length > 0, "a temporary store entry appeared");
        const atKill = temps();
        console.log(`store entries at the kill: ${entries().join(" ")}`);
        assert.ok(atKill.length > 0, "killed mid-restore: a temporary entry was there");
        const pulled = await restartPullRun(s, image.ref, "kill-sub-run", "Hello from nixoci!\n");
        // Every path is in the store now, whole; the killed restore's temporary entries are gone.
        for (const p of image.layers.flatMap(layerStorePaths))
          assert.ok(entries().includes(basename(p)), `${p} is in the store`);
        assert.deepEqual(temps(), [], "the temporary entries of the killed restore are gone");
        await removeImagesLeavesSnapshotterEmpty(s, pulled);
        console.log(tail(s.sn.logFile, 3));
      } finally {
        await stopStackLeavingNoMounts(s);
      }
    },
  );

  test(
    "killed right after the first Prepare of a plain image's pull: the pull fails; restarted, it pulls again " +
      "and runs, and removing the image leaves the snapshotter empty",
    { timeout: 420_000 },
    async () => {
      const { stack: s } = await startKillStack("crikill-plain");
      try {
        const plain = await makeImage({ hello: "plain after a kill\n", randomBytes: 8 << 20 });
        const { ref } = await pushBuilt(s.registry, plain, "plain/big");
        const from = logSize(s.sn);
        await killDuringPull(
          s,
          ref,
          () => rpcLines(s.sn, from).some((r) => r.method === "Prepare"),
          "a Prepare was logged",
        );
        const pulled = await restartPullRun(s, ref, "kill-plain-run", "plain after a kill\n");
        await removeImagesLeavesSnapshotterEmpty(s, pulled);
      } finally {
        await stopStackLeavingNoMounts(s);
      }
    },
  );
});
