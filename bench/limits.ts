// Limits benchmark: how soon the bounded things end once their bound is hit. The tests only check that they do
// end (with the right error, within their timeout); how long it takes is measured here.
//
//   1. NixImageSource (what `nixoci serve` builds images with): a build that hangs, with buildTimeoutMs 300:
//      the time from the request to its 504, and how far past the limit that is.
//   2. NixEvalResolver: a build whose builder sleeps 90+ s (a throwaway derivation, built by nix-build):
//      abort() once the builder runs, the time until resolve() rejects and until the builder process is gone;
//      with timeoutMs 1000, the time from resolve() to its rejection.
//   3. `nixoci image-service` whose containerd socket does not exist: the time until PullImage and ListImages
//      answer UNAVAILABLE (a child process, started once; the calls have a 30 s deadline).
//   4. `nixoci snapshotter` holding a client connection: the time from SIGTERM to its exit (status 0).
// Each RUNS times; medians and every run's value. Nothing about time is asserted; a wrong outcome (no error,
// another error, a non-zero exit) throws.
import { execFileSync, spawn } from "node:child_process";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { criImageClient } from "../src/proto/cri.js";
import { OCI_MANIFEST } from "../src/oci/media-types.js";
import { NixImageSource } from "../src/servers/registry/nix-images.js";
import { RegistryStorage } from "../src/servers/registry/storage.js";
import { NixEvalResolver } from "../src/resolve/nix-eval.js";
import type { PackageResolver } from "../src/resolve/resolver.js";
import { snapshotsClient } from "../src/proto/containerd.js";
import { LocalStore } from "../src/store/local-store.js";
import { until } from "../test/support/poll.js";
import {
  removeSnapshotterDir,
  rpc,
  startSnapshotter,
  stopSnapshotter,
  waitExit,
} from "../test/support/snapshotter.js";
import { median } from "./common.js";

const NIXOCI = fileURLToPath(new URL("../../bin/nixoci.js", import.meta.url));
const RUNS = Number(process.env.NIXOCI_BENCH_LIMITS_RUNS) || 5;

const ms = (x: number) => `${x.toFixed(0)} ms`;

function row(what: string, xs: number[], note = ""): void {
  const each = xs.map((x) => x.toFixed(0)).join(" ");
  console.log(`${what.padEnd(66)}${ms(median(xs)).padStart(9)}  ${each.padEnd(28)}${note}`.trimEnd());
}

/** 1. A hanging build against a 300 ms build time limit. */
async function imageSourceLimit(work: string): Promise<void> {
  const limitMs = 300;
  const hanging: PackageResolver = {
    description: "hangs",
    currentRevision: async () => "r1",
    servesRevision: async (r: string) => r === "r1",
    resolve: () => new Promise<string[]>(() => undefined), // never settles, ignores the abort signal
    missingPackages: async () => [],
    packageNames: async () => undefined,
    architectures: async () => undefined,
  };
  const store = new LocalStore();
  const xs: number[] = [];
  try {
    for (let i = 0; i < RUNS; i++) {
      const source = new NixImageSource({
        storage: new RegistryStorage(join(work, `storage-${i}`)),
        resolver: hanging,
        store,
        defaultArch: "amd64",
        buildTimeoutMs: limitMs,
      });
      const t0 = performance.now();
      const err = await source
        .resolve("hello", "latest", {
          method: "GET",
          accept: [OCI_MANIFEST],
          signal: new AbortController().signal,
        })
        .then(
          () => undefined,
          (e: unknown) => e as { status?: number },
        );
      xs.push(performance.now() - t0);
      if (err?.status !== 504) throw new Error(`expected a 504, got ${String(err)}`);
    }
  } finally {
    store.close();
  }
  row(`NixImageSource: hanging build, limit ${limitMs} ms -> 504`, xs, `${ms(median(xs) - limitMs)} past it`);
}

/** A Nix file whose `slow` builds with `/bin/sleep SECONDS` (SECONDS unique per call, to find the process). */
function slowFile(dir: string): { nixFile: string; builder: string } {
  const nixFile = join(dir, `slow-${Math.random().toString(36).slice(2)}.nix`);
  const builder = `/bin/sleep ${(90 + Math.random() * 9).toFixed(4)}`;
  fs.writeFileSync(
    nixFile,
    `{ slow = derivation { name = "slow"; nonce = "${Math.random()}"; system = builtins.currentSystem;
       builder = "/bin/sh"; args = [ "-c" "${builder}; echo > $out" ]; }; }\n`,
  );
  return { nixFile, builder };
}

function running(builder: string): boolean {
  try {
    execFileSync("pgrep", ["-f", `^${builder.replace(/\./g, "\\.")}$`], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** 2. NixEvalResolver: abort during the build, and a 1 s time limit. */
async function nixEvalLimits(work: string): Promise<void> {
  const toReject: number[] = [];
  const toGone: number[] = [];
  const timeouts: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const slow = slowFile(work);
    const r = new NixEvalResolver({ nixFile: slow.nixFile });
    const revision = await r.currentRevision();
    const controller = new AbortController();
    const resolving = r.resolve(["slow"], { revision, arch: "amd64", signal: controller.signal });
    resolving.catch(() => undefined);
    await until(
      "nix to start the builder",
      60_000,
      () => {
        if (!running(slow.builder)) throw new Error("no builder yet");
      },
      20,
    );
    const t0 = performance.now();
    controller.abort();
    const err = await resolving.then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    toReject.push(performance.now() - t0);
    if (!err || !/build cancelled/.test(err.message))
      throw new Error(`expected "build cancelled", got ${String(err)}`);
    await until(
      "the builder to be gone",
      60_000,
      () => {
        if (running(slow.builder)) throw new Error("builder still running");
      },
      5,
    );
    toGone.push(performance.now() - t0);
  }
  for (let i = 0; i < RUNS; i++) {
    const slow = slowFile(work);
    const r = new NixEvalResolver({ nixFile: slow.nixFile, timeoutMs: 1000 });
    const revision = await r.currentRevision();
    const t0 = performance.now();
    const err = await r.resolve(["slow"], { revision, arch: "amd64" }).then(
      () => undefined,
      (e: unknown) => e as Error,
    );
    timeouts.push(performance.now() - t0);
    if (!err || !/timed out after 1 s/.test(err.message))
      throw new Error(`expected a time-out, got ${String(err)}`);
    await until("the builder to be gone", 60_000, () => {
      if (running(slow.builder)) throw new Error("builder still running");
    });
  }
  row("NixEvalResolver: abort() during the build -> rejected", toReject);
  row("NixEvalResolver: abort() during the build -> builder gone", toGone);
  row("NixEvalResolver: timeoutMs 1000 -> rejected", timeouts, `${ms(median(timeouts) - 1000)} past it`);
}

/** 3. The image service with no containerd behind it. */
async function imageServiceNoContainerd(dir: string): Promise<void> {
  const socket = join(dir, "is.sock");
  const logFile = join(dir, "image-service.log");
  const fd = fs.openSync(logFile, "a");
  const child = spawn(
    process.execPath,
    [NIXOCI, "image-service", "--address", socket, "--containerd", join(dir, "no-such.sock")],
    { stdio: ["ignore", fd, fd] },
  );
  fs.closeSync(fd);
  const client = criImageClient(socket);
  try {
    await until(
      "the image service's socket",
      30_000,
      () => {
        if (child.exitCode !== null)
          throw new Error(`image service exited: ${fs.readFileSync(logFile, "utf8")}`);
        if (!fs.existsSync(socket)) throw new Error("no socket yet");
      },
      50,
    );
    const code = async (call: () => Promise<unknown>): Promise<number> => {
      try {
        await call();
        return 0;
      } catch (e) {
        return (e as { code?: number }).code ?? -1;
      }
    };
    // The first call also pays for connecting to the service: one untimed.
    await code(() => client.listImages({}, { timeoutMs: 30_000 }));
    const pulls: number[] = [];
    const lists: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      let t0 = performance.now();
      const c1 = await code(() =>
        client.pullImage({ image: { image: "docker.io/library/busybox:latest" } }, { timeoutMs: 30_000 }),
      );
      pulls.push(performance.now() - t0);
      t0 = performance.now();
      const c2 = await code(() => client.listImages({}, { timeoutMs: 30_000 }));
      lists.push(performance.now() - t0);
      if (c1 !== 14 || c2 !== 14) throw new Error(`expected UNAVAILABLE (14) twice, got ${c1} and ${c2}`);
    }
    row("image-service, containerd socket gone: PullImage -> UNAVAILABLE", pulls);
    row("image-service, containerd socket gone: ListImages -> UNAVAILABLE", lists);
  } finally {
    client.close();
    child.kill("SIGTERM");
    if (!(await waitExit(child, 10_000))) child.kill("SIGKILL");
  }
}

/** 4. SIGTERM to a snapshotter that has a client connected. */
async function snapshotterStop(dir: string): Promise<void> {
  const xs: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const d = join(dir, `sn-${i}`);
    fs.mkdirSync(d);
    const sn = await startSnapshotter(d, ["--log-level", "warn"]);
    const client = snapshotsClient(sn.socket);
    try {
      await rpc(client, "Stat", { key: "\u0000probe" }); // a live connection
      const t0 = performance.now();
      sn.child.kill("SIGTERM");
      await waitExit(sn.child, 60_000);
      xs.push(performance.now() - t0);
      if (sn.child.exitCode !== 0)
        throw new Error(`snapshotter exited with ${sn.child.exitCode ?? sn.child.signalCode}`);
    } finally {
      client.close();
      await stopSnapshotter(sn, "SIGKILL");
      await removeSnapshotterDir(d); // its GC roots under /nix/var too
    }
  }
  row("snapshotter with a client connected: SIGTERM -> exit 0", xs);
}

export async function benchLimits(): Promise<void> {
  // Unix socket paths are limited to 107 bytes: a short temp dir.
  const dir = fs.mkdtempSync(join("/tmp", "nixoci-bench-limits-"));
  const work = fs.mkdtempSync(join(tmpdir(), "nixoci-bench-limits-work-"));
  try {
    console.log(
      `\nLimits: how soon bounded things end once the bound is hit (median of ${RUNS}, then each run, ms)`,
    );
    await imageSourceLimit(work);
    await nixEvalLimits(work);
    await imageServiceNoContainerd(dir);
    await snapshotterStop(dir);
  } finally {
    if (!process.env.NIXOCI_KEEP_TMP)
      for (const d of [dir, work]) fs.rmSync(d, { recursive: true, force: true });
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await benchLimits();
