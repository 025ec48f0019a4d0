// What a stop signal's handler removes (util/temporaries.ts): every noted temporary, after killing the process groups
// that write into them (a compressor lane's shell and tool create files in its directory until they die).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync } from "node:fs";
import { join } from "node:path";
import {
  noteTemporary,
  noteTemporaryWriter,
  removeTemporariesSync,
  trackTemporaries,
} from "../../src/util/temporaries.js";
import { pidAlive } from "../support/drill.js";
import { makeTempDir } from "../support/fixtures.js";
import { until } from "../support/poll.js";

test(
  "a temporary directory that a process group keeps writing into is removed whole: the group is killed first",
  { timeout: 30_000 },
  async () => {
    const parent = makeTempDir("temporaries");
    trackTemporaries();
    const dir = noteTemporary(join(parent, ".work.tmp-1-000000000001"));
    mkdirSync(dir);
    // A shell whose child keeps creating files in the directory (its cwd), as a lane's mkfifo does.
    const writer = spawn("sh", ["-c", 'i=0; while :; do : > "f$i"; i=$((i+1)); done & wait'], {
      cwd: dir,
      detached: true,
      stdio: "ignore",
    });
    const pgid = writer.pid!;
    writer.unref();
    try {
      noteTemporaryWriter(pgid);
      await until("the writer to create files", 10_000, () => assert.ok(readdirSync(dir).length > 10), 5);

      const removed = removeTemporariesSync();
      assert.deepEqual(removed, [dir]);
      assert.equal(existsSync(dir), false);
      assert.deepEqual(readdirSync(parent), [], "nothing left beside it (the renamed tree included)");
      await until("the writer's group to be gone", 10_000, () => assert.ok(!pidAlive(pgid)), 5);
    } finally {
      try {
        process.kill(-pgid, "SIGKILL"); // a failed run leaves no writer behind
      } catch {
        // gone
      }
    }
  },
);
