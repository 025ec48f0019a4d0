// File-system failures as a user reads them (issue 13): one line naming the path they gave or know (never a
// writer's temporary, ".x.tar.tmp-<pid>-…"), the problem in words (not the errno code), and the fix where there
// is one — a layer cache that refuses writes or is full names --cache-dir and --no-cache; an installable whose
// symlink points at a garbage-collected store path says so; directories under /proc (where Node's mkdir -p never
// returns) fail at once; Nix's database is readable by a user who cannot write beside it.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, statfsSync, symlinkSync } from "node:fs";
import { join } from "node:path";
import { buildFixtures, makeTempDir, type FixtureAttr } from "../support/fixtures.js";
import { nixoci, nixociOk, ROOT, type CliResult } from "../support/cli.js";
import { mountsUnder } from "../support/daemons.js";
import { nixCmd, nixociAsNobodyArgv, run, withCheckoutForNobody } from "../support/run.js";
import { pidTemporaries } from "../support/drill.js";

let fx: Record<FixtureAttr, string>;
before(() => {
  fx = buildFixtures();
});

const NOBODY = Number(spawnSync("id", ["-u", "nobody"], { encoding: "utf8" }).stdout.trim());
const NOGROUP = Number(spawnSync("id", ["-g", "nobody"], { encoding: "utf8" }).stdout.trim());

/** A fresh directory the user nobody can enter (makeTempDir's are 0700). */
function openDir(prefix: string): string {
  const dir = makeTempDir(prefix);
  chmodSync(dir, 0o755);
  return dir;
}

/** `nixoci ARGS` as the unprivileged user nobody (setpriv), its own cache under `cacheHome`. */
function nixociAsNobody(args: string[], env: NodeJS.ProcessEnv = {}): CliResult {
  const r = withCheckoutForNobody(ROOT, (root) =>
    spawnSync("setpriv", nixociAsNobodyArgv(root, args), {
      env: { ...process.env, ...env },
      timeout: 120_000,
    }),
  );
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString(), text: r.stdout.toString() };
}

/** Each case fails with exit 1 and exactly its line on stderr, nothing on stdout. */
function assertFails(cases: Array<[string, () => CliResult, string]>): void {
  for (const [what, runIt, line] of cases) {
    const r = runIt();
    assert.equal(r.stderr, `${line}\n`, what);
    assert.equal(r.status, 1, `${what}: ${r.stderr}`);
    assert.equal(r.text, "", `${what}: nothing on stdout`);
  }
}

test("an installable that is a symlink to a store path that is gone: the path is named, and why it may be gone", () => {
  const dir = makeTempDir("fs-errors-result");
  const gone = "/nix/store/00000000000000000000000000000000-gone";
  symlinkSync(gone, join(dir, "result"));
  symlinkSync("result", join(dir, "result-chain")); // a link to the link
  symlinkSync(`${gone}/bin/hello`, join(dir, "result-inside"));
  symlinkSync(join(dir, "nowhere"), join(dir, "elsewhere"));
  const collected = (arg: string): string =>
    `nixoci: ${arg}: points to ${gone}, which is not in the store (garbage-collected? rebuild it, e.g. with nix-build)`;
  const inDir = (args: string[]) => () => nixoci(args, { cwd: dir });
  assertFails([
    ["build ./result", inDir(["build", "--no-cache", "--json", "./result"]), collected("./result")],
    [
      "build a chain of links",
      inDir(["build", "--no-cache", "--json", "result-chain"]),
      collected("result-chain"),
    ],
    ["path-info", inDir(["path-info", "./result-inside"]), collected("./result-inside")],
    ["closure", inDir(["closure", join(dir, "result")]), collected(join(dir, "result"))],
    [
      "a link to nothing outside the store",
      inDir(["path-info", "./elsewhere"]),
      `nixoci: ./elsewhere: is a symlink to ${join(dir, "nowhere")}, which does not exist`,
    ],
    [
      "no such file at all",
      inDir(["path-info", "./absent"]),
      "nixoci: ./absent: not a store path, and no such file to resolve into the store",
    ],
  ]);
  // A link to a store path that is there still works.
  symlinkSync(fx.hello, join(dir, "result-ok"));
  assert.equal(nixociOk(["path-info", "./result-ok"], { cwd: dir }).text, `${fx.hello}\n`);
});

test("directories under /proc, where Node's recursive mkdir never returns, fail at once naming the directory", () => {
  const dir = makeTempDir("fs-errors-proc");
  const bounded = (args: string[]) => () => nixoci(args, { timeoutMs: 60_000 });
  assertFails([
    [
      "build -o oci: under /proc",
      bounded(["build", "-q", "--no-cache", fx.hello, "-o", "oci:/proc/nixoci-layout/x"]),
      // Refused before any work: access() says root may write /proc, making an entry there fails.
      "nixoci: oci:/proc/nixoci-layout/x: the directory /proc cannot be written (no entries can be made there); choose a writable place for the layout",
    ],
    [
      "cache push --to a cache under /proc",
      bounded(["cache", "push", "--to", "file:///proc/nixoci-cache", fx.hello]),
      "nixoci: /proc/nixoci-cache: cannot create the directory: no such file or directory",
    ],
    [
      "snapshotter --root under /proc",
      bounded(["snapshotter", "--address", join(dir, "sn.sock"), "--root", "/proc/nixoci-snapshotter"]),
      "nixoci: /proc/nixoci-snapshotter: cannot create the directory: no such file or directory",
    ],
  ]);
});

test("a layer cache the user cannot write: the cache, the problem in words, and --cache-dir or --no-cache", () => {
  const dir = openDir("fs-errors-cache");
  const out = join(dir, "out");
  mkdirSync(out);
  chownSync(out, NOBODY, NOGROUP);
  // ~/.cache is another user's: the default cache cannot be made.
  const home = join(dir, "root-owned");
  mkdirSync(home);
  // The user's own cache, whose blob directory another user (root, via sudo) made: found only when a blob is written.
  const cache = join(dir, "cache");
  mkdirSync(join(cache, "blobs", "sha256"), { recursive: true });
  chownSync(cache, NOBODY, NOGROUP);
  const archive = `oci-archive:${out}/img.tar`;
  assertFails([
    [
      "the default cache under a ~/.cache of root's",
      () => nixociAsNobody(["build", "-q", fx.hello, "-o", archive], { XDG_CACHE_HOME: home }),
      `nixoci: ${home}/nixoci: cannot write the layer cache here (permission denied); give --cache-dir DIR (a writable directory) or --no-cache`,
    ],
    [
      "a cache whose blob directory is root's",
      () => nixociAsNobody(["build", "-q", "--cache-dir", cache, fx.hello, "-o", archive]),
      `nixoci: ${cache}: cannot write the layer cache (permission denied in blobs/sha256); give --cache-dir DIR (a writable directory) or --no-cache`,
    ],
  ]);
  assert.deepEqual(readdirSync(out), [], "no archive, no temporary");
  assert.deepEqual(pidTemporaries(cache), [], "no temporary in the cache");
  // --no-cache is the way out the message names.
  const r = nixociAsNobody(["build", "-q", "--no-cache", fx.hello, "-o", archive]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(readdirSync(out), ["img.tar"]);

  // Read-only (a read-only bind mount of the blob directory, as root): the same advice.
  const roCache = join(dir, "ro-cache");
  const roBlobs = join(roCache, "blobs", "sha256");
  mkdirSync(roBlobs, { recursive: true });
  run("mount", ["--bind", "-o", "ro", roBlobs, roBlobs]);
  try {
    assertFails([
      [
        "a cache whose blob directory is read-only",
        () => nixoci(["build", "-q", "--cache-dir", roCache, fx.hello, "-o", `oci-archive:${out}/ro.tar`]),
        `nixoci: ${roCache}: cannot write the layer cache (read-only file system in blobs/sha256); give --cache-dir DIR (a writable directory) or --no-cache`,
      ],
    ]);
  } finally {
    run("umount", [roBlobs]);
  }
  assert.deepEqual(readdirSync(out), ["img.tar"], "no second archive, no temporary");
});

test("a full file system (a 2 MiB tmpfs): the cache, TMPDIR or output, 'no space left on device', what to do", () => {
  const mnt = join(makeTempDir("fs-errors-full"), "tmpfs");
  mkdirSync(mnt);
  run("mount", ["-t", "tmpfs", "-o", "size=2m", "tmpfs", mnt]);
  try {
    const st = statfsSync(mnt);
    assert.ok(st.blocks * st.bsize <= 2 << 20, "a 2 MiB tmpfs");
    const out = makeTempDir("fs-errors-full-out");
    const tmp = join(mnt, "tmp");
    mkdirSync(tmp);
    // big: 2 MiB of pseudo-random bytes do not compress into what is left.
    assertFails([
      [
        "a layer cache on a full file system",
        () =>
          nixoci([
            "build",
            "-q",
            "--cache-dir",
            join(mnt, "cache"),
            fx.big,
            "-o",
            `oci-archive:${out}/a.tar`,
          ]),
        `nixoci: ${join(mnt, "cache")}: cannot write the layer cache (no space left on device); free space (nixoci cache gc removes what recent images do not use), or give --cache-dir DIR elsewhere or --no-cache`,
      ],
      [
        "--no-cache with TMPDIR on a full file system",
        () =>
          nixoci(["build", "-q", "--no-cache", fx.big, "-o", `oci-archive:${out}/b.tar`], {
            env: { TMPDIR: tmp },
          }),
        `nixoci: ${tmp}: cannot write the layers of a --no-cache build here (no space left on device); set TMPDIR to a directory with room, or drop --no-cache`,
      ],
    ]);
    // Outputs on it (the layer cache elsewhere): the output is named, not the temporary it was written under.
    const cache = makeTempDir("fs-errors-full-cache");
    assertFails([
      [
        "an archive on a full file system",
        () => nixoci(["build", "-q", "--cache-dir", cache, fx.big, "-o", `oci-archive:${mnt}/c.tar`]),
        `nixoci: ${mnt}/c.tar: cannot write the archive: no space left on device`,
      ],
      [
        "a new OCI layout on a full file system",
        () => nixoci(["build", "-q", "--cache-dir", cache, fx.big, "-o", `oci:${mnt}/layout`]),
        `nixoci: ${mnt}/layout: cannot write the OCI layout: no space left on device`,
      ],
    ]);
    assert.deepEqual(readdirSync(out), [], "no archive, no temporary");
    assert.deepEqual(readdirSync(mnt).sort(), ["cache", "tmp"], "no archive or layout, no temporary");
    assert.deepEqual(pidTemporaries(mnt), [], "no temporary in the cache or TMPDIR");
    assert.deepEqual(readdirSync(tmp), [], "the --no-cache work directory is gone");
  } finally {
    if (mountsUnder(mnt).length) run("umount", [mnt]);
  }
});

test("Nix's database read by a user who cannot write beside it, when no Nix process has it open", () => {
  // A chroot store (ROOT/nix/store, ROOT/nix/var/nix/db) made by Nix: its database is in WAL mode, and Nix removes
  // db.sqlite-shm as it closes it, which a read-only handle of another user cannot create again.
  const chroot = openDir("fs-errors-db");
  nixCmd(["copy", "--no-check-sigs", "--to", chroot, fx.hello]);
  const db = join(chroot, "nix/var/nix/db");
  assert.ok(!existsSync(join(db, "db.sqlite-shm")), "no WAL index beside the database");
  const closure = nixociOk(["closure", fx.hello]).text;
  const r = nixociAsNobody(["closure", "--store", join(chroot, "nix/store"), fx.hello]);
  assert.equal(r.stderr, "");
  assert.equal(r.text, closure);
  const info = nixociAsNobody(["path-info", "--store", join(chroot, "nix/store"), fx.hello]);
  assert.equal(info.stderr, "");
  assert.equal(info.text, `${fx.hello}\n`);
  assert.deepEqual(
    readdirSync(db).sort(),
    ["big-lock", "db.sqlite", "reserved", "schema"],
    "nothing written",
  );
});
