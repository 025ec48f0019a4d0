// Mounts benchmark: the snapshotter's read-only bind mounts of a closure's store paths onto a bind-mode
// composition (src/servers/snapshotter/mounts.ts bindReadOnly), on a private tmpfs under os.tmpdir():
//
//   1. one `mount --all --no-canonicalize --fstab FILE` process for 1,000 and 5,000 paths;
//   2. the mount(8)-per-path fallback (NIXOCI_NO_MOUNT_HELPER), 16 at a time, for 1,000 paths;
//   3. unmountAll of the tmpfs holding 5,000 such mounts (one lazy umount of the subtree).
// Best of RUNS (the fallback: one run). Needs root. Nothing about time is asserted; every run checks that each
// target is mounted read-only (a wrong outcome throws).
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { bindReadOnly, mountsUnder, unmountAll } from "../src/servers/snapshotter/mounts.js";

const RUNS = Number(process.env.NIXOCI_BENCH_MOUNTS_RUNS) || 3;

/** A private tmpfs at `dir` with `n` source directories (one file each) and `n` empty targets. */
function setup(dir: string, n: number): Array<[string, string]> {
  fs.mkdirSync(dir, { recursive: true });
  execFileSync("mount", ["-t", "tmpfs", "tmpfs", dir]);
  execFileSync("mount", ["--make-private", dir]);
  const pairs: Array<[string, string]> = [];
  for (let i = 0; i < n; i++) {
    const s = join(dir, "src", `${i}-path`);
    const t = join(dir, "dst", `${i}-path`);
    fs.mkdirSync(s, { recursive: true });
    fs.mkdirSync(t, { recursive: true });
    fs.writeFileSync(join(s, "f"), String(i));
    pairs.push([s, t]);
  }
  return pairs;
}

function checkReadOnly(dir: string, n: number): void {
  const mounts = mountsUnder(join(dir, "dst"));
  const ro = mounts.filter((m) => m.options.includes("ro")).length;
  if (mounts.length !== n || ro !== n)
    throw new Error(`${n} read-only mounts expected, got ${mounts.length} (${ro} ro)`);
}

/** Best time (ms) of `runs` runs of bindReadOnly over `n` fresh pairs; the last run's unmountAll time too. */
async function measure(dir: string, n: number, runs: number, fallback: boolean): Promise<[number, number]> {
  let best = Infinity;
  let unmount = 0;
  for (let r = 0; r < runs; r++) {
    const pairs = setup(dir, n);
    try {
      if (fallback) process.env.NIXOCI_NO_MOUNT_HELPER = "1";
      const t0 = performance.now();
      await bindReadOnly(pairs, 16);
      best = Math.min(best, performance.now() - t0);
      checkReadOnly(dir, n);
    } finally {
      delete process.env.NIXOCI_NO_MOUNT_HELPER;
      const t1 = performance.now();
      await unmountAll(dir);
      unmount = performance.now() - t1;
    }
  }
  return [best, unmount];
}

export async function benchMounts(): Promise<void> {
  const dir = fs.mkdtempSync(join(tmpdir(), "nixoci-bench-mounts-"));
  try {
    console.log(`\nMounts: read-only bind mounts of N paths (best of ${RUNS}; fallback: 1 run)`);
    console.log("how".padEnd(44) + "paths".padStart(7) + "ms".padStart(9));
    const row = (how: string, n: number, ms: number): void =>
      console.log(how.padEnd(44) + String(n).padStart(7) + ms.toFixed(0).padStart(9));
    for (const n of [1000, 5000])
      row("mount --all --fstab (one process)", n, (await measure(dir, n, RUNS, false))[0]);
    row("mount(8) per path, 16 at a time (fallback)", 1000, (await measure(dir, 1000, 1, true))[0]);
    row("unmountAll of the tmpfs holding them", 5000, (await measure(dir, 5000, 1, false))[1]);
  } finally {
    await unmountAll(dir).catch(() => undefined);
    if (!mountsUnder(dir).length) fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await benchMounts();
