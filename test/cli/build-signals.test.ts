// `nixoci build` interrupted: Ctrl-C (SIGINT) or SIGTERM in the middle of a layer being written to the layer cache,
// of an archive being written, or of a docker-archive on a stdout nobody reads removes every temporary it made (the
// cache's ".upload.tmp-*", the archive's, a --no-cache build's work directory in TMPDIR) and exits 128 + the
// signal's number; the cache stays usable. Each signal lands on a frozen build (SIGSTOP, all threads confirmed
// stopped) that is seen holding the temporary, so it is the removal that is tested, not a race.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { createCipheriv } from "node:crypto";
import { mkdirSync, readdirSync, writeFileSync } from "node:fs";
import { constants as osConstants } from "node:os";
import { join } from "node:path";
import { makeTempDir } from "../support/fixtures.js";
import { nixociOk } from "../support/cli.js";
import {
  assertNoTemporaries,
  entries,
  finish,
  interruptWhile,
  pidTemporaries,
  privateTmpdir,
  spawnNixoci,
  type Finished,
} from "../support/drill.js";
import { runText } from "../support/run.js";

let big: string;
before(() => {
  // 32 MiB of pseudo-random bytes (AES-CTR of zeros: the same store path every run) take about a second to gzip:
  // long enough to find its layer half-written.
  const tree = join(makeTempDir("build-signals-src"), "nixoci-signals-big");
  mkdirSync(tree);
  const cipher = createCipheriv("aes-256-ctr", Buffer.alloc(32), Buffer.alloc(16));
  writeFileSync(join(tree, "data.bin"), cipher.update(Buffer.alloc(32 << 20)));
  big = runText("nix-store", ["--add", tree]);
});

function assertSignalExit(r: Finished, signal: NodeJS.Signals): void {
  assert.deepEqual(
    { code: r.code, signal: r.signal, stderr: r.stderr },
    { code: 128 + osConstants.signals[signal], signal: null, stderr: "" },
  );
}

test("SIGINT while a layer is being written to the layer cache: its temporaries go, exit 130", async () => {
  const work = makeTempDir("build-sigint-layer");
  const cache = join(work, "cache");
  const out = join(work, "out");
  mkdirSync(out);
  const tmp = privateTmpdir("build-sigint-layer");
  const args = ["build", "-q", "-j", "1", "--cache-dir", cache, big, "-o", `oci-archive:${out}/img.tar`];
  const child = spawnNixoci(args, { env: { TMPDIR: tmp } });
  const ended = finish(child, performance.now());
  const pids = new Set([child.pid!]);
  const r = await interruptWhile(
    child,
    ended,
    // The layer is compressed in parts in a .gzip-batch.tmp directory, then joined into an .upload.tmp file (a
    // moment's work): either is the layer half-written.
    () =>
      pidTemporaries(join(cache, "blobs/sha256"), { pids }).some((t) =>
        /^\.(gzip-batch|upload)\.tmp-/.test(t),
      ),
    "SIGINT",
    "a layer half-written",
  );
  assertSignalExit(r, "SIGINT");
  assertNoTemporaries([cache, out, tmp], "after SIGINT");
  assert.deepEqual(entries(out), [], "no archive");
  assert.deepEqual(entries(tmp), [], "nothing in TMPDIR");
  // The cache is whole: the next build uses it and completes.
  nixociOk(args, { env: { TMPDIR: tmp } });
  assert.deepEqual(entries(out), ["img.tar"]);
  assertNoTemporaries([cache, out, tmp], "after the next build");
});

test("SIGTERM while an archive is being written: the archive's temporary goes, exit 143", async () => {
  const work = makeTempDir("build-sigterm-archive");
  const cache = join(work, "cache");
  const out = join(work, "out");
  mkdirSync(out);
  const tmp = privateTmpdir("build-sigterm-archive");
  // Uncompressed layers already in the cache: the build goes straight to writing the 32 MiB archive.
  const args = ["build", "-q", "--compression", "none", "--cache-dir", cache, big];
  nixociOk([...args, "--json"]);
  const child = spawnNixoci([...args, "-o", `oci-archive:${out}/img.tar`], { env: { TMPDIR: tmp } });
  const ended = finish(child, performance.now());
  const r = await interruptWhile(
    child,
    ended,
    () => readdirSync(out).some((n) => n.startsWith(`.img.tar.tmp-${child.pid}-`)),
    "SIGTERM",
    "the archive half-written",
  );
  assertSignalExit(r, "SIGTERM");
  assert.deepEqual(entries(out), [], "no archive, no temporary");
  assertNoTemporaries([cache, tmp], "after SIGTERM");
});

test("SIGTERM and SIGINT while a --no-cache build waits on stdout: its work directory in TMPDIR goes", async () => {
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    const tmp = privateTmpdir(`build-${signal}-stdout`);
    const child = spawnNixoci(["build", "-q", "--no-cache", big, "-o", "-"], { env: { TMPDIR: tmp } });
    // The first bytes of the archive, then nobody reads: the build blocks writing stdout, its layers in TMPDIR.
    const first = new Promise<void>((resolve) => child.stdout!.once("data", () => resolve()));
    let stderr = "";
    child.stderr!.on("data", (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once("exit", (code, sig) => resolve({ code, signal: sig })),
    );
    await Promise.race([
      first,
      exited.then((end) =>
        assert.fail(`the build ended before writing stdout: ${JSON.stringify({ ...end, stderr })}`),
      ),
    ]);
    child.stdout!.pause();
    assert.deepEqual(
      readdirSync(tmp).map((n) => n.replace(/\.tmp-\d+-[0-9a-f]{12}$/, ".tmp-PID-X")),
      ["nixoci-nocache.tmp-PID-X"],
      "the --no-cache build's work directory",
    );
    child.kill(signal);
    const end = await exited;
    child.stdout!.destroy();
    assert.deepEqual(
      { ...end, stderr },
      { code: 128 + osConstants.signals[signal], signal: null, stderr: "" },
    );
    assert.deepEqual(entries(tmp), [], `nothing left in TMPDIR after ${signal}`);
  }
});
