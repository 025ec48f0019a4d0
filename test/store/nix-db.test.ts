// NixDb on a read-only filesystem, as nodes read a Nix store on shared storage they mount read-only: SQLite cannot
// create the WAL index (db.sqlite-shm) there, so the database is read as a copy in memory. The copy holds no
// descriptor on the file (the filesystem unmounts under a running reader, and a database mounted in its place is
// read), and a change is seen even when it keeps the file's inode, size and mtime (an admin's write in place
// within the same second on a filesystem with whole-second times). Real Nix databases (`nix copy --to local?root=...`) on
// tmpfs mounts made read-only; root only.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  copyFileSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { NixDb } from "../../src/store/nix-db.js";
import { mountsUnder } from "../support/daemons.js";
import { buildFixtures, GC_ROOTS_DIR, makeTempDir, PACKAGES_NIX } from "../support/fixtures.js";
import { nixCmd, run, runText } from "../support/run.js";
import { until } from "../support/poll.js";
import { ROOT } from "../support/cli.js";
import { spawnSync } from "node:child_process";

const DB = "nix/var/nix/db/db.sqlite";

/** Descriptors of this process open on files under `dir`. */
function descriptorsUnder(dir: string): string[] {
  return readdirSync("/proc/self/fd")
    .map((fd) => {
      try {
        return readlinkSync(`/proc/self/fd/${fd}`);
      } catch {
        return "";
      }
    })
    .filter((target) => target.startsWith(dir + "/"));
}

describe("NixDb on a read-only filesystem (a store on shared storage)", () => {
  let dir: string;
  let hello: string;
  let hello2: string;
  /** db.sqlite of a store holding hello's closure, and of one holding hello2's too (the same size). */
  let before1: string;
  let after2: string;
  let mnt: string;
  const dbs: NixDb[] = [];

  /** A fresh tmpfs at `mnt` holding `db` (its mtime set to `mtimeSec`), mounted read-only. */
  function mountReadOnly(db: string, mtimeSec: number): string {
    mkdirSync(mnt, { recursive: true });
    run("mount", ["-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt]);
    const file = join(mnt, "db.sqlite");
    copyFileSync(db, file);
    utimesSync(file, mtimeSec, mtimeSec);
    run("mount", ["-o", "remount,ro", mnt]);
    return file;
  }

  before(
    () => {
      const fx = buildFixtures();
      hello = fx.hello;
      hello2 = runText("nix-build", [
        PACKAGES_NIX,
        "-A",
        "hello",
        "--argstr",
        "greetingText",
        "Hello from the shared store!",
        "--out-link",
        join(GC_ROOTS_DIR, "shared-store-hello2"),
      ]);
      dir = makeTempDir("nixdb-ro");
      nixCmd(["copy", "--no-check-sigs", "--to", `local?root=${join(dir, "one")}`, hello]);
      nixCmd(["copy", "--no-check-sigs", "--to", `local?root=${join(dir, "two")}`, hello, hello2]);
      before1 = join(dir, "one", DB);
      after2 = join(dir, "two", DB);
      // The second test's premise: adding the paths kept the file's size.
      assert.equal(statSync(before1).size, statSync(after2).size);
      mnt = join(dir, "mnt");
    },
    { timeout: 120_000 },
  );

  after(() => {
    for (const db of dbs) db.close();
    const left = mountsUnder(mnt);
    for (const mp of left) run("umount", ["-l", mp]);
    assert.deepEqual(left, [], "each test unmounts its filesystem");
  });

  test("the copy holds no descriptor: the filesystem unmounts under the reader, and another one mounted is read", () => {
    const file = mountReadOnly(before1, 1_600_000_000);
    const db = new NixDb(file);
    dbs.push(db);
    assert.equal(db.closure(hello).length, 3);
    assert.equal(db.queryPathInfo(hello2), undefined);
    assert.deepEqual(descriptorsUnder(mnt), []);
    run("umount", [mnt]); // a plain umount: it fails when anything holds the filesystem
    // Another image of the store, the same size and mtime (a new tmpfs may even reuse the device number, and its
    // first file gets the same inode number).
    mountReadOnly(after2, 1_600_000_000);
    assert.equal(db.queryPathInfo(hello2)?.path, hello2);
    assert.equal(db.closure(hello2).length, 3);
    run("umount", [mnt]);
  });

  test("with the WAL files a Nix killed mid-write leaves, the read handle is let go when idle: the filesystem unmounts", async () => {
    // A writer killed with its database open leaves db.sqlite-wal and -shm: SQLite then opens a real read handle
    // even on a read-only filesystem, and a handle holds descriptors on all three files.
    const crashed = join(dir, "crashed");
    mkdirSync(crashed, { recursive: true });
    copyFileSync(before1, join(crashed, "db.sqlite"));
    const writer = spawnSync(process.execPath, [
      "-e",
      `const D = require(${JSON.stringify(join(ROOT, "node_modules/better-sqlite3"))});` +
        `new D(${JSON.stringify(join(crashed, "db.sqlite"))}).exec("CREATE TABLE nixoci_test (x)");` +
        `process.kill(process.pid, "SIGKILL")`,
    ]);
    assert.equal(writer.signal, "SIGKILL");
    assert.deepEqual(readdirSync(crashed).sort(), ["db.sqlite", "db.sqlite-shm", "db.sqlite-wal"]);
    mkdirSync(mnt, { recursive: true });
    run("mount", ["-t", "tmpfs", "-o", "size=16m", "tmpfs", mnt]);
    for (const f of readdirSync(crashed)) copyFileSync(join(crashed, f), join(mnt, f));
    run("mount", ["-o", "remount,ro", mnt]);
    const db = new NixDb(join(mnt, "db.sqlite"));
    dbs.push(db);
    assert.equal(db.closure(hello).length, 3);
    assert.ok(descriptorsUnder(mnt).length > 0, "a real read handle (the premise)");
    await until("the idle read handle is closed", 10_000, () => assert.deepEqual(descriptorsUnder(mnt), []));
    run("umount", [mnt]); // a plain umount: it fails when anything holds the filesystem
    // The next query opens the database mounted now.
    mountReadOnly(after2, 1_600_000_000);
    assert.equal(db.queryPathInfo(hello2)?.path, hello2);
    run("umount", [mnt]);
  });

  test("a change that keeps the file's inode, size and whole-second mtime is seen", () => {
    const now = Math.floor(Date.now() / 1000);
    const file = mountReadOnly(before1, now);
    const db = new NixDb(file);
    dbs.push(db);
    assert.equal(db.queryPathInfo(hello2), undefined);
    const ino = statSync(file).ino;
    // The admin writes in place within the same second, as Nix does; whole-second times show no change.
    run("mount", ["-o", "remount,rw", mnt]);
    writeFileSync(file, readFileSync(after2));
    utimesSync(file, now, now);
    run("mount", ["-o", "remount,ro", mnt]);
    assert.equal(statSync(file).ino, ino);
    assert.equal(db.queryPathInfo(hello2)?.path, hello2);
    run("umount", [mnt]);
  });
});
