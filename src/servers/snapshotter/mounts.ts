// Mount plumbing for the snapshotter, through util-linux's mount(8) and umount(8) (child processes spawned with
// argument arrays, never a shell): mounting, read-only bind mounts of many paths at once, unmounting all under a
// directory, and the mount table under a directory (/proc/self/mountinfo).
//
// Read-only bind mounts of a closure's thousands of store paths take one process: the [source, target] pairs
// become an fstab-format file in a private temporary directory (entries `SOURCE TARGET none bind,ro 0 0`),
// mounted with `mount --all --no-canonicalize --fstab FILE`; util-linux >= 2.27 makes bind,ro a bind mount plus
// a read-only remount. As measured with util-linux 2.38: a failing entry is reported on stderr ("mount: TARGET:
// ...") and the others are mounted all the same, the exit status then being 64 (some mounted) or 32 (none;
// entries already mounted are skipped and count as neither), so the caller unmounts what a failed call left.
// --no-canonicalize matters: canonicalizing every path made the run grow quadratically (5,000 entries: 4.2 s of
// CPU in mount(8), against 0.1 s without; the paths here are absolute and ours, and the kernel follows symlinks
// in them as mount(2) always does). Every target is then checked read-only in the mount table, and any
// left writable is remounted read-only, so a mount(8) that ignores ro with bind cannot leave a store writable.
//
// The mount(8)-per-path fallback stays for a mount(8) that cannot do the batch: busybox's (minimal hosts) has no
// --all/--fstab long options (and mounts bind,ro read-write: the check above remounts those), nor has an old
// util-linux. It is taken for good when the first batch fails other than by an entry (exit 64), and always with
// NIXOCI_NO_MOUNT_HELPER set.
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { Limiter } from "../../util/concurrency.js";

/** A failed command: its message has the command and its stderr; `status` is its exit status. */
export class CommandError extends Error {
  constructor(
    message: string,
    readonly status: number | undefined,
  ) {
    super(message);
    this.name = "CommandError";
  }
}

/** Runs `cmd` with `args` (no shell); rejects with a CommandError carrying its stderr. */
export function runCommand(cmd: string, args: string[], cwd?: string, timeout = 60_000): Promise<void> {
  return new Promise((resolve, reject) =>
    execFile(cmd, args, { cwd, timeout, maxBuffer: 16 << 20 }, (err, _stdout, stderr) =>
      err
        ? reject(
            new CommandError(
              `${cmd} ${args.join(" ")}: ${String(stderr).trim() || err.message}`,
              typeof err.code === "number" ? err.code : undefined,
            ),
          )
        : resolve(),
    ),
  );
}

/** `mount ARGS...` (relative paths in ARGS resolve against `cwd`). */
export function mount(args: string[], cwd?: string): Promise<void> {
  return runCommand("mount", args, cwd);
}

/** `umount ARGS...`. */
export function umount(args: string[], cwd?: string): Promise<void> {
  return runCommand("umount", args, cwd);
}

/** One mount of the table: where it is and its per-mount options (ro or rw, ...). */
export interface MountEntry {
  mountPoint: string;
  options: string[];
}

/** This process's mount table, in its order (a later entry for a mount point is on top). */
export function mountTable(): MountEntry[] {
  let text: string;
  try {
    text = readFileSync("/proc/self/mountinfo", "utf8");
  } catch {
    return [];
  }
  const out: MountEntry[] = [];
  for (const line of text.split("\n")) {
    const f = line.split(" ");
    if (f.length < 6) continue;
    const mp = f[4].replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    out.push({ mountPoint: mp, options: f[5].split(",") });
  }
  return out;
}

/** The mounts at or under `dir`. */
export function mountsUnder(dir: string): MountEntry[] {
  return mountTable().filter((m) => m.mountPoint === dir || m.mountPoint.startsWith(dir + "/"));
}

/** Mount points at or under dir (from /proc/self/mountinfo). */
export function mountPointsUnder(dir: string): string[] {
  return mountsUnder(dir).map((m) => m.mountPoint);
}

/**
 * Unmounts everything at and under `dir`: each top-most mount is detached with its whole subtree in one call
 * (MNT_DETACH; a composition's mounts are private, so nothing propagates), then checked gone.
 */
export async function unmountAll(dir: string): Promise<void> {
  const mps = mountPointsUnder(dir);
  if (!mps.length) return;
  const set = new Set(mps);
  const top = [...set].filter((mp) => {
    for (let p = dirname(mp); p.length >= dir.length && p !== dirname(p); p = dirname(p))
      if (set.has(p)) return false;
    return true;
  });
  for (const mp of top) await umount(["-l", mp]).catch(() => undefined);
  for (const mp of mountPointsUnder(dir).sort((a, b) => b.length - a.length))
    await umount(["-l", mp]).catch(() => undefined);
  if (mountPointsUnder(dir).length) throw new Error(`${dir}: could not unmount everything under it`);
}

/**
 * `path` as an fstab field: absolute, with space, tab, newline and backslash written \040 \011 \012 \134 (as
 * libmount reads them back); any other control character, or a lone UTF-16 surrogate, is refused.
 */
export function fstabField(path: string): string {
  // eslint-disable-next-line no-control-regex
  if (!path.startsWith("/") || /[\0-\x08\x0b-\x1f\x7f]|[\uD800-\uDFFF]/u.test(path))
    throw new Error(`${JSON.stringify(path)}: not an absolute path an fstab entry can hold`);
  return path.replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, "0")}`);
}

/** The fstab text making each [source, target] a read-only bind mount. */
export function bindReadOnlyFstab(pairs: Array<[string, string]>): string {
  return pairs.map(([s, t]) => `${fstabField(s)} ${fstabField(t)} none bind,ro 0 0\n`).join("");
}

/** All the pairs in one `mount --all --fstab` process, the file in a private temporary directory. */
async function bindReadOnlyBatch(pairs: Array<[string, string]>): Promise<void> {
  const text = bindReadOnlyFstab(pairs); // refuses odd paths before anything is mounted
  const dir = await mkdtemp(join(tmpdir(), "nixoci-fstab-"));
  try {
    const file = join(dir, "fstab");
    await writeFile(file, text, { mode: 0o600 });
    await runCommand("mount", ["--all", "--no-canonicalize", "--fstab", file], undefined, 300_000);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** One `mount --bind -o ro` per pair, `parallelism` at a time (a target mounted already is redone). */
async function bindReadOnlyEach(pairs: Array<[string, string]>, parallelism: number): Promise<void> {
  for (const [s, t] of pairs) bindReadOnlyFstab([[s, t]]); // the same paths refused as by the batch
  const limiter = new Limiter(parallelism);
  await Promise.all(
    pairs.map(([s, t]) =>
      limiter.run(async () => {
        if (mountPointsUnder(t).includes(t)) await umount(["-l", t]);
        await mount(["--bind", "-o", "ro", s, t]);
      }),
    ),
  );
}

/** The targets whose top-most mount is not read-only (or that are no mount point). */
function writableTargets(targets: string[]): string[] {
  const ro = new Map<string, boolean>();
  for (const m of mountTable()) ro.set(m.mountPoint, m.options.includes("ro"));
  return targets.filter((t) => ro.get(t) !== true);
}

/** Remounts read-only the targets a mount(8) left writable; fails when any still is. */
async function ensureReadOnly(targets: string[], parallelism: number): Promise<void> {
  const writable = writableTargets(targets);
  if (!writable.length) return;
  const limiter = new Limiter(parallelism);
  await Promise.all(writable.map((t) => limiter.run(() => mount(["-o", "remount,bind,ro", t]))));
  const still = writableTargets(writable);
  if (still.length) throw new Error(`${still[0]}: not mounted read-only (${still.length} such targets)`);
}

let batchUsable: boolean | undefined;

/**
 * Read-only bind mounts of each [source, target]: in one `mount --all --fstab` process when that works here,
 * else (or with NIXOCI_NO_MOUNT_HELPER set) one mount(8) per pair, `parallelism` at a time; `onFallback` hears
 * why the batch was given up. On failure some targets may be mounted: the caller unmounts them.
 */
export async function bindReadOnly(
  pairs: Array<[string, string]>,
  parallelism = 16,
  onFallback?: (error: string) => void,
): Promise<void> {
  if (!pairs.length) return;
  let done = false;
  if (batchUsable !== false && !process.env.NIXOCI_NO_MOUNT_HELPER) {
    try {
      await bindReadOnlyBatch(pairs);
      batchUsable = done = true;
    } catch (err) {
      // Exit 64: some entries mounted, so mount(8) can do it and an entry failed.
      if (batchUsable || !(err instanceof CommandError) || err.status === 64) throw err;
      onFallback?.(err.message);
      batchUsable = false; // fall back for good (partial mounts are redone)
    }
  }
  if (!done) await bindReadOnlyEach(pairs, parallelism);
  await ensureReadOnly(
    pairs.map(([, t]) => t),
    parallelism,
  );
}
