// Fault drills for the node daemons, each in a CRI stack of its own (docker-registry, `nixoci snapshotter`,
// containerd with its CRI plugin, NIXOCI_CONTAINERD; test/support/cri.ts), as test/servers/cri/cri-restart.test.ts does for two fixed
// points:
// - the snapshotter SIGKILLed at random and early points of a CRI pull of a nixoci image whose store layers it
//   substitutes into an empty store from a signed file:// cache (Prepare substituting and committing nix
//   layers, containerd's Prepare/apply/Commit of the customisation layer). The pull fails or completes (within
//   the liveness bound); restarted on the same --root, the pull run again completes and the image runs; every
//   path in the store is complete; no temporary is left in the store or the root; nothing is mounted; once the
//   image is removed containerd's GC leaves the snapshotter empty. Each trial starts from an empty store.
// - `nixoci image-service` SIGKILLed at random and early points of a nix:0 PullImage: containerd has the image
//   complete (it runs) or not at all; restarted, the pull completes and the image runs.
// - containerd SIGKILLed in the middle of an image-service pull: the pull fails with UNAVAILABLE, and the image
//   service stays up (answers the next call).
import { test, describe, before } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, rmSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import type { CriImageClient } from "../../src/proto/cri.js";
import { setTimeout as sleep } from "node:timers/promises";
import {
  checkSnapshotsConsistent,
  logSize,
  pushNixociImage,
  rpcLines,
  startCriStack,
  startSubstitutingStack,
  type CriStack,
  stopStackLeavingNoMounts,
  untilSnapshotterEmpty,
} from "../support/cri.js";
import { mountsUnder } from "../support/daemons.js";
import { buildFixtures, makeTempDir, type FixtureAttr } from "../support/fixtures.js";
import { startImageService } from "../support/image-service.js";
import { until } from "../support/poll.js";
import { run } from "../support/run.js";
import { exited, startSnapshotter, stopSnapshotter, tail } from "../support/snapshotter.js";
import {
  drillTimeout,
  entries,
  killDaemon,
  killPoints,
  pidTemporaries,
  privateTmpdir,
  runNixociOk,
  runTrials,
} from "../support/drill.js";
import { containerdUnderTest } from "../support/containerd-release.js";

/** How long a pull whose daemon died may take to end (a liveness bound: the failure is a hang). */
const END_BOUND_MS = 120_000;
const GREETING = "Hello from nixoci!\n";

let fx: Record<FixtureAttr, string>;
before(
  () => {
    fx = buildFixtures();
  },
  { timeout: 240_000 },
);

/** The outcome of a pull promise, as text, bounded by END_BOUND_MS. */
async function settle(p: Promise<unknown>, what: string): Promise<string> {
  const timer = new AbortController();
  const r = await Promise.race([
    p.then(
      () => "succeeded",
      (err: { code?: number; details?: string; message?: string }) =>
        `failed (${err.code ?? ""} ${err.details ?? err.message ?? String(err)})`.replace("( ", "("),
    ),
    sleep(END_BOUND_MS, "hung", { signal: timer.signal }).catch(() => "hung"),
  ]);
  timer.abort();
  assert.notEqual(r, "hung", `${what} did not end within ${END_BOUND_MS / 1000} s`);
  return r;
}

/** `nixoci build` of big and hello (entrypoint hello) into the store as nix:NAME: its nix:0 reference. */
async function buildNixImage(): Promise<string> {
  const r = await runNixociOk([
    "build",
    "-q",
    "--entrypoint",
    `${fx.hello}/bin/hello`,
    fx.big,
    fx.hello,
    "-o",
    `nix:drill-is-${process.pid}`,
  ]);
  return `nix:0${r.stdout.trim().split("\n").pop()!}`;
}

/** Retries a pull while containerd reconnects to a restarted daemon (bounded). */
function pullAgain(cri: CriImageClient, ref: string): Promise<string> {
  return until(
    `the pull of ${ref} after the restart`,
    90_000,
    async () => (await cri.pullImage({ image: { image: ref } }, { timeoutMs: 60_000 })).image_ref,
    500,
  );
}

/**
 * Removes every CRI image and every lease of the namespace (a killed pull's lease holds what it wrote for an
 * hour); containerd's GC must then leave the snapshotter with no snapshot and its snapshots directory empty.
 */
async function removeEverything(s: CriStack): Promise<void> {
  for (const img of (await s.cri.listImages({})).images)
    await s.cri.removeImage({ image: { image: img.id } }, { timeoutMs: 60_000 });
  for (const id of s.ctr(["leases", "ls", "-q"]).split("\n").filter(Boolean)) s.ctr(["leases", "rm", id]);
  // A deletion schedules containerd's GC, and the snapshotter's Cleanup after it: poll.
  await untilSnapshotterEmpty(s, () =>
    assert.deepEqual(entries(join(s.sn.root, "snapshots")), [], "no snapshot directory left"),
  );
  assert.deepEqual(mountsUnder(s.dir), [], "nothing mounted under the stack's dir");
  assert.deepEqual(mountsUnder(s.containerd.root), [], "nothing mounted under containerd's root");
}

describe(`drill: the snapshotter SIGKILLed during a CRI pull of containerd ${containerdUnderTest().series} (Prepare/Commit, substituting nix layers)`, () => {
  test(
    "the pull ends; restarted, it pulls and runs; store paths complete; nothing left",
    { timeout: drillTimeout(90_000) },
    async () => {
      const { stack: s, store } = await startSubstitutingStack({
        prefix: "drill-sn",
        keyName: "nixoci-drill-sn",
        paths: [fx.hello, fx.big],
      });
      try {
        const image = pushNixociImage(s.registry, {
          installables: [fx.big, fx.hello],
          entrypoint: "/bin/hello",
          repo: "drill/sn",
          workDir: makeTempDir("drill-sn-work"),
        });
        const storeEntries = (): string[] => entries(store).filter((n) => n !== ".nixoci");
        /** Every path in the store directory is whole (its NAR equals /nix/store's). */
        const checkStore = (): void => {
          for (const n of storeEntries().filter((e) => !e.startsWith(".")))
            assert.deepEqual(
              run("nix-store", ["--dump", join(store, n)]),
              run("nix-store", ["--dump", join("/nix/store", n)]),
              `${n} is complete`,
            );
        };
        /** From an empty store: the snapshotter stopped, the store emptied, started again. */
        const emptyStore = async (): Promise<void> => {
          await removeEverything(s);
          await stopSnapshotter(s.sn, "SIGTERM");
          rmSync(store, { recursive: true, force: true });
          mkdirSync(store);
          s.sn = await startSnapshotter(s.dir, s.snapshotterArgs);
        };
        let runs = 0;
        const pullRun = async (): Promise<void> => {
          await pullAgain(s.cri, image.ref);
          assert.equal(s.run(image.ref, `drill-sn-${runs++}`), GREETING);
        };

        await emptyStore();
        const t0 = performance.now();
        await s.cri.pullImage({ image: { image: image.ref } }, { timeoutMs: 120_000 });
        const measured = Math.round(performance.now() - t0);
        console.log(
          `snapshotter: one CRI pull (substituting ${storeEntries().length} paths) takes ${measured} ms`,
        );

        await runTrials(
          "snapshotter during a CRI pull",
          killPoints("snapshotter", measured, { ciFixed: 1 }),
          async (p) => {
            await emptyStore();
            const from = logSize(s.sn);
            const t = performance.now();
            const pull = settle(
              s.cri.pullImage({ image: { image: image.ref } }, { timeoutMs: END_BOUND_MS }),
              "the pull",
            );
            await sleep(Math.max(0, t + p.ms - performance.now()));
            const killed = s.sn.child.pid!;
            s.sn.child.kill("SIGKILL");
            const rpcs = rpcLines(s.sn, from).filter(
              (r) => r.method === "Prepare" || r.method === "Commit",
            ).length;
            const atKill = storeEntries();
            const outcome = await pull;
            await until("the killed snapshotter to exit", 10_000, () => assert.ok(exited(s.sn.child)), 50);
            checkStore();
            s.sn = await startSnapshotter(s.dir, s.snapshotterArgs);
            // The restarted snapshotter swept the killed one's store temporaries before it listened.
            assert.deepEqual(
              pidTemporaries(store, { depth: 1, pids: new Set([killed]) }),
              [],
              "store temporaries",
            );
            await pullRun();
            checkStore();
            for (const l of image.layers.flatMap((d) => Object.entries(d.annotations ?? {})))
              if (l[0].startsWith("containerd.io/snapshot/nix-store-path."))
                assert.ok(existsSync(join(store, basename(l[1]))), `${l[1]} is in the store`);
            assert.deepEqual(pidTemporaries(store, { depth: 1 }), [], "no temporaries in the store");
            assert.deepEqual(pidTemporaries(s.sn.root), [], "no temporaries in the snapshotter's root");
            await checkSnapshotsConsistent(s);
            return `killed after ${rpcs} Prepare/Commit calls, ${atKill.length} store entries; the pull ${outcome}`;
          },
        );
        await removeEverything(s);
      } finally {
        // The stack stops the snapshotter it started; the ones started here since are stopped here.
        await stopSnapshotter(s.sn);
        await stopStackLeavingNoMounts(s);
      }
    },
  );
});

describe(`drill: nixoci image-service SIGKILLed during a nix:0 pull into containerd ${containerdUnderTest().series}`, () => {
  test(
    "containerd has the image whole or not at all; restarted, it pulls and runs",
    { timeout: drillTimeout(90_000) },
    async () => {
      const ref = await buildNixImage();
      const s = await startCriStack({ prefix: "drill-is", snapshotterArgs: [] });
      const tmp = privateTmpdir("image-service");
      const args = ["--containerd", s.containerd.address, "--snapshotter", "nixoci"];
      let svc = await startImageService(s.dir, "is", args, { TMPDIR: tmp });
      let runs = 0;
      try {
        const t0 = performance.now();
        await svc.client.pullImage({ image: { image: ref } }, { timeoutMs: 120_000 });
        const measured = Math.round(performance.now() - t0);
        console.log(`image-service: one nix:0 pull takes ${measured} ms`);
        await runTrials(
          "image-service during a pull",
          killPoints("image-service", measured, { ciFixed: 1 }),
          async (p) => {
            await removeEverything(s);
            const t = performance.now();
            const pull = settle(
              svc.client.pullImage({ image: { image: ref } }, { timeoutMs: END_BOUND_MS }),
              "the pull",
            );
            await sleep(Math.max(0, t + p.ms - performance.now()));
            svc.child.kill("SIGKILL");
            const outcome = await pull;
            await svc.stop();
            // containerd has the image whole (it runs) or not at all.
            const listed = (await s.cri.imageStatus({ image: { image: ref } })).image;
            if (listed)
              assert.equal(
                s.run(`${ref}:latest`, `drill-is-${runs++}`),
                GREETING,
                "the image the killed pull left runs",
              );
            svc = await startImageService(s.dir, "is", args, { TMPDIR: tmp });
            const restarted = svc;
            const pulled = await restarted.client
              .pullImage({ image: { image: ref } }, { timeoutMs: 120_000 })
              .catch((err: Error) => {
                const state = exited(restarted.child) ? "exited" : "runs";
                throw new Error(
                  `the pull after the restart: ${err.message} (the service ${state}); its log:\n${tail(restarted.logFile)}`,
                  {
                    cause: err,
                  },
                );
              });
            assert.match(pulled.image_ref, /^sha256:/);
            assert.equal(s.run(`${ref}:latest`, `drill-is-${runs++}`), GREETING);
            await checkSnapshotsConsistent(s);
            const leases = s.ctr(["leases", "ls", "-q"]).split("\n").filter(Boolean).length;
            assert.deepEqual(entries(tmp), [], "nothing left in the image service's TMPDIR");
            return `the pull ${outcome}; the image was ${listed ? "there" : "absent"}; ${leases} leases left`;
          },
        );
        await removeEverything(s);
      } finally {
        await svc.stop();
        await stopStackLeavingNoMounts(s);
      }
    },
  );

  test(
    "containerd SIGKILLed mid-pull: UNAVAILABLE, and the image service stays up",
    { timeout: 600_000 },
    async () => {
      const ref = await buildNixImage();
      const s = await startCriStack({ prefix: "drill-ctrd", snapshotterArgs: [] });
      const svc = await startImageService(s.dir, "is", [
        "--containerd",
        s.containerd.address,
        "--snapshotter",
        "nixoci",
      ]);
      try {
        const from = logSize(s.sn);
        const pull = settle(
          svc.client.pullImage({ image: { image: ref } }, { timeoutMs: END_BOUND_MS }),
          "the pull",
        );
        // Mid-pull: once the first layer's Prepare reached the snapshotter.
        await until(
          "a Prepare of the pull",
          60_000,
          () => assert.ok(rpcLines(s.sn, from).some((l) => l.method === "Prepare")),
          5,
        );
        await killDaemon("containerd", (a) => a.includes(join(dirname(s.containerd.root), "config.toml")));
        const outcome = await pull;
        console.log(`containerd killed mid-pull: the pull ${outcome}`);
        assert.match(outcome, /^failed \(14 /, "UNAVAILABLE");
        assert.ok(!exited(svc.child), "the image service is still running");
        // It answers: a malformed reference is refused by the service itself, a pull with UNAVAILABLE again.
        const bad = await svc.client
          .pullImage({ image: { image: "nix:0/nix/store/../etc" } })
          .catch((e: { code: number }) => e);
        assert.equal((bad as { code: number }).code, 3, "INVALID_ARGUMENT");
        const again = await settle(
          svc.client.pullImage({ image: { image: ref } }, { timeoutMs: 30_000 }),
          "a pull",
        );
        assert.match(again, /^failed \(14 /, "UNAVAILABLE while containerd is gone");
        assert.ok(!exited(svc.child), "still running");
      } finally {
        await svc.stop();
        await stopStackLeavingNoMounts(s);
      }
    },
  );
});
