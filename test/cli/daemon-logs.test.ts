// `--log-format text` for the other daemons, as a user runs them: the snapshotter and the CRI image service write
// one human line a record (time, level, message, key=value), with what a client sent escaped, not passed to the
// terminal.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { criImageClient } from "../../src/proto/cri.js";
import { snapshotsClient } from "../../src/proto/containerd.js";
import { ROOT } from "../support/cli.js";
import { GiveUp, until } from "../support/poll.js";
import {
  exited,
  removeSnapshotterDir,
  rpc,
  shortTempDir,
  startSnapshotter,
  stopSnapshotter,
  waitExit,
} from "../support/snapshotter.js";

/** A text log's lines with the clock as "T" (checked) and durations as "ms=N". */
function textLines(file: string): string[] {
  return readFileSync(file, "utf8")
    .trimEnd()
    .split("\n")
    .map((line) => {
      assert.match(line, /^\d\d:\d\d:\d\d (DEBUG|INFO |WARN |ERROR) /);
      return `T${line.slice(8)}`.replace(/ ms=\d+/, " ms=N");
    });
}

test("snapshotter --log-format text: its calls as text lines, a key with control characters escaped", async () => {
  const dir = shortTempDir("logs-sn");
  // No nix layer: the node's containerd is never asked (its version is the first nix layer's question).
  const sn = await startSnapshotter(dir, ["--log-format", "text"]);
  const client = snapshotsClient(sn.socket);
  try {
    assert.deepEqual(await rpc(client, "Prepare", { key: "layer \u001b[31m1", parent: "" }), {
      mounts: [
        { type: "bind", source: join(sn.root, "snapshots/1/fs"), target: "", options: ["rw", "rbind"] },
      ],
    });
    assert.deepEqual(await rpc(client, "Remove", { key: "layer \u001b[31m1" }), {});
  } finally {
    client.close();
    await stopSnapshotter(sn);
  }
  const pid = sn.child.pid;
  // The start-up probe of startSnapshotter (a Stat of "\0probe", NOT_FOUND) comes first: at debug, as asked; the
  // error message quotes the key as JSON already, and its backslash is escaped once more as a quoted value.
  assert.deepEqual(textLines(sn.logFile), [
    `T INFO  listening address=${sn.socket} root=${sn.root} pid=${pid}`,
    'T DEBUG rpc method=Stat key="\\u0000probe" code=NOT_FOUND error="snapshot \\"\\\\u0000probe\\" does not exist" ms=N',
    'T INFO  rpc method=Prepare key="layer \\u001b[31m1" ms=N',
    'T INFO  rpc method=Remove key="layer \\u001b[31m1" ms=N',
    "T INFO  stopping signal=SIGTERM",
    "T INFO  stopped",
  ]);
  await removeSnapshotterDir(dir);
});

test("image-service --log-format text: a refused pull is a WARN line naming the image", async () => {
  const dir = shortTempDir("logs-cri");
  const socket = join(dir, "image.sock");
  const containerd = join(dir, "no-containerd.sock");
  const logFile = join(dir, "image-service.log");
  const fd = openSync(logFile, "a");
  const child = spawn(
    process.execPath,
    [
      join(ROOT, "bin/nixoci.js"),
      "image-service",
      "--address",
      socket,
      "--containerd",
      containerd,
      "--log-format",
      "text",
    ],
    { stdio: ["ignore", fd, fd] },
  );
  closeSync(fd);
  const client = criImageClient(socket);
  try {
    await until("the image service to listen", 20_000, () => {
      if (exited(child)) throw new GiveUp(`exited: ${readFileSync(logFile, "utf8")}`);
      assert.ok(existsSync(socket));
    });
    const err = await client.pullImage({ image: { image: "nix:0/etc/passwd" } }).then(
      () => assert.fail("the pull should be refused"),
      (e: { code: number; details: string }) => e,
    );
    assert.equal(err.code, 3, err.details); // INVALID_ARGUMENT
  } finally {
    client.close();
    child.kill("SIGTERM");
    assert.ok(await waitExit(child, 10_000), "the image service stops on SIGTERM");
  }
  assert.deepEqual(textLines(logFile), [
    `T INFO  listening address=${socket} containerd=${containerd} snapshotter=nixoci namespace=k8s.io pid=${child.pid}`,
    `T WARN  pull failed image=nix:0/etc/passwd code=INVALID_ARGUMENT error="nix:0/etc/passwd: \\"/etc/passwd\\" is not in \\"/nix/store\\""`,
    "T INFO  stopping signal=SIGTERM",
    "T INFO  stopped",
  ]);
});
