// `nixoci nar restore` interrupted: SIGTERM or SIGINT in the middle of a NAR removes the temporary tree and exits
// 128 + the signal's number; what a SIGKILLed restore left beside its destination goes with the next restore of
// that destination (only a dead writer's: a running restore's temporary stays).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import { constants as osConstants } from "node:os";
import { join } from "node:path";
import { nixociOk, ROOT } from "../support/cli.js";
import { makeTempDir } from "../support/fixtures.js";
import { until } from "../support/poll.js";
import { deadPid } from "../support/run.js";
import { dir, file, MAGIC, nar } from "../nix/nar-fixtures.js";

for (const signal of ["SIGTERM", "SIGINT"] as const) {
  test(`${signal} in the middle of a NAR: the temporary tree is removed, exit 128+${osConstants.signals[signal]}`, async () => {
    const parent = makeTempDir("nar-restore-signal");
    const big = nar(MAGIC, dir(["a", file("small")], ["big", file(Buffer.alloc(64 << 20, 7))]));
    const child = spawn(
      process.execPath,
      [join(ROOT, "bin/nixoci.js"), "nar", "restore", join(parent, "dest")],
      {
        stdio: ["pipe", "ignore", "pipe"],
      },
    );
    let stderr = "";
    child.stderr!.on("data", (d) => (stderr += d));
    child.stdin!.on("error", () => undefined); // it goes away with the pipe still open
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.once("exit", (code, sig) => resolve({ code, signal: sig })),
    );
    // A part of the NAR, then nothing more: the restore waits in the middle of the big file.
    child.stdin!.write(big.subarray(0, 8 << 20));
    const tmp = await until("the restore to write its temporary tree", 30_000, () => {
      if (child.exitCode !== null) throw new Error(`exited ${child.exitCode}: ${stderr}`);
      const t = fs.readdirSync(parent).find((n) => n.startsWith(".dest.tmp-"));
      assert.ok(t, "no temporary yet");
      assert.ok(fs.statSync(join(parent, t, "big")).size > 0, "nothing of the big file yet");
      return t;
    });
    assert.match(tmp, new RegExp(`^\\.dest\\.tmp-${child.pid}-[0-9a-f]{12}$`));
    child.kill(signal);
    const end = await exited;
    child.stdin!.destroy();
    assert.deepEqual(end, { code: 128 + osConstants.signals[signal], signal: null }, stderr);
    assert.deepEqual(fs.readdirSync(parent), []);
  });
}

test("the next restore of a destination removes what killed restores of it left, and nothing else", () => {
  const parent = makeTempDir("nar-restore-sweep");
  const dead = deadPid();
  const make = (name: string): string => {
    const p = join(parent, name);
    fs.mkdirSync(join(p, "sub"), { recursive: true });
    fs.writeFileSync(join(p, "sub", "f"), "x");
    fs.chmodSync(join(p, "sub"), 0o555); // as a restore with canonicalize leaves it
    return name;
  };
  const longName = "n".repeat(250);
  const shortened = `.${"n".repeat(255 - `..tmp-${dead}-000000000000`.length)}.tmp-${dead}-000000000000`;
  assert.equal(Buffer.byteLength(shortened), 255);
  const gone = [make(`.dest.tmp-${dead}-0123456789ab`), make(shortened)];
  fs.writeFileSync(join(parent, `.dest.tmp-${dead}-ba9876543210`), "a file too");
  gone.push(`.dest.tmp-${dead}-ba9876543210`);
  const kept = [
    make(`.dest.tmp-${process.pid}-0123456789ab`), // a live writer's
    make(`.other.tmp-${dead}-0123456789ab`), // another destination's
    make(`.dest.tmp-${dead}-xyz`), // not a temporary's name
    make(`.dest2.tmp-${dead}-0123456789ab`),
  ];
  const input = nar(MAGIC, dir(["f", file("hello")]));
  nixociOk(["nar", "restore", join(parent, "dest")], { input });
  nixociOk(["nar", "restore", join(parent, longName)], { input });
  assert.deepEqual(fs.readdirSync(parent).sort(), [...kept, "dest", longName].sort());
  assert.equal(fs.readFileSync(join(parent, "dest", "f"), "utf8"), "hello");
  for (const name of kept) fs.chmodSync(join(parent, name, "sub"), 0o755);
});
