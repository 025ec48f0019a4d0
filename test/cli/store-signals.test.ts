// `nixoci substitute` and `nixoci cache push` interrupted: SIGINT or SIGTERM while a path is being restored into the
// target store, or while a NAR is being written into the binary cache, removes the temporary (the store's
// ".<hash>-<name>.tmp-*", the cache's ".upload.tmp-*") and exits 128 + the signal's number; the next run completes.
// Each signal lands on a process frozen with SIGSTOP (all threads confirmed stopped) that is seen holding the
// temporary, so it is the removal that is tested, not a race.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { createCipheriv } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { constants as osConstants } from "node:os";
import { basename, join } from "node:path";
import { makeTempDir } from "../support/fixtures.js";
import { nixociOk } from "../support/cli.js";
import {
  assertNoTemporaries,
  entries,
  finish,
  interruptWhile,
  pidTemporaries,
  spawnNixoci,
  type Finished,
} from "../support/drill.js";
import { runText } from "../support/run.js";

let big: string;
let cache: string;
before(() => {
  // 32 MiB of pseudo-random bytes (AES-CTR of zeros: the same store path every run, shared with build-signals):
  // long enough to find its NAR half-written or half-restored.
  const tree = join(makeTempDir("store-signals-src"), "nixoci-signals-big");
  mkdirSync(tree);
  const cipher = createCipheriv("aes-256-ctr", Buffer.alloc(32), Buffer.alloc(16));
  writeFileSync(join(tree, "data.bin"), cipher.update(Buffer.alloc(32 << 20)));
  big = runText("nix-store", ["--add", tree]);
  cache = join(makeTempDir("store-signals-cache"), "cache");
  nixociOk(["cache", "push", "-q", "--compression", "none", "--to", `file://${cache}`, big]);
});

function assertSignalExit(r: Finished, signal: NodeJS.Signals): void {
  assert.deepEqual(
    { code: r.code, signal: r.signal, stderr: r.stderr },
    { code: 128 + osConstants.signals[signal], signal: null, stderr: "" },
  );
}

test("substitute: SIGINT while a path is being restored into the target: its temporary goes, exit 130", async () => {
  const target = join(makeTempDir("store-signals-target"), "store");
  const args = [
    "substitute",
    "-q",
    "--no-check-sigs",
    "--from",
    `file://${cache}`,
    "--store-dir",
    target,
    big,
  ];
  const child = spawnNixoci(args);
  const pids = new Set([child.pid!]);
  const r = await interruptWhile(
    child,
    finish(child, performance.now()),
    () => pidTemporaries(target, { pids, depth: 1 }).length > 0,
    "SIGINT",
    "a path half-restored",
  );
  assertSignalExit(r, "SIGINT");
  assertNoTemporaries([target], "after SIGINT");
  assert.ok(!entries(target).includes(basename(big)), "the path is not in the target");
  // The next run completes.
  nixociOk(args);
  assert.ok(entries(target).includes(basename(big)));
  assertNoTemporaries([target], "after the next run");
});

test("cache push: SIGTERM while a NAR is being written: its temporary goes, exit 143", async () => {
  const to = join(makeTempDir("store-signals-push"), "cache");
  const args = ["cache", "push", "-q", "--compression", "xz", "--to", `file://${to}`, big];
  const child = spawnNixoci(args);
  const pids = new Set([child.pid!]);
  const r = await interruptWhile(
    child,
    finish(child, performance.now()),
    () => pidTemporaries(join(to, "nar"), { pids, depth: 1 }).length > 0,
    "SIGTERM",
    "a NAR half-written",
  );
  assertSignalExit(r, "SIGTERM");
  assertNoTemporaries([to], "after SIGTERM");
  assert.deepEqual(
    entries(to).filter((n) => n.endsWith(".narinfo")),
    [],
    "no narinfo for a path whose NAR was not written",
  );
  nixociOk(args);
  assert.equal(entries(to).filter((n) => n.endsWith(".narinfo")).length, 1);
  assertNoTemporaries([to], "after the next run");
});
