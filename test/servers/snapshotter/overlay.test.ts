// `nixoci snapshotter` as containerd's overlay snapshotter would behave: the gRPC API directly (error codes,
// mounts, durability across SIGKILL, Cleanup), then through a real containerd (the release
// under test: NIXOCI_CONTAINERD) + runc as a proxy plugin.
// The snapshotter always runs as a child process: `ctr` calls are synchronous and containerd calls back into
// the snapshotter, so an in-process server would deadlock.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import type * as grpc from "@grpc/grpc-js";
import { snapshotsClient } from "../../../src/proto/containerd.js";
import { writeOciArchive } from "../../../src/outputs/archive.js";
import { freePort, mountsUnder, startContainerd, type Containerd } from "../../support/daemons.js";
import { makeTempDir } from "../../support/fixtures.js";
import { until } from "../../support/poll.js";
import { makeImage } from "../../support/make-image.js";
import {
  list,
  removeSnapshotterDir,
  rpc as rpcCall,
  runAsync,
  shortTempDir,
  startSnapshotter,
  stopSnapshotter,
  tail,
  type Client,
  type Reply,
  type Snapshotter,
} from "../../support/snapshotter.js";
import { containerdUnderTest } from "../../support/containerd-release.js";
import { nixoci } from "../../support/cli.js";

/** One unary call with a 10 s deadline; errors come back as {err: code, details}. */
const rpc = (client: Client, method: string, req: object): Promise<Reply> =>
  rpcCall(client, method, req, 10_000);

const startOverlaySnapshotter = (dir: string): Promise<Snapshotter> =>
  startSnapshotter(dir, ["--store", "/nix/store", "--substituter", "file:///nonexistent"]);

const run = runAsync;
const removeDir = removeSnapshotterDir;

describe("snapshotter --metrics-address", () => {
  test("/healthz answers ok and /metrics counts RPCs by method and code", async () => {
    const dir = shortTempDir("sn-metrics");
    const port = await freePort();
    const sn = await startSnapshotter(dir, ["--metrics-address", `127.0.0.1:${port}`]);
    const client = snapshotsClient(sn.socket);
    try {
      assert.equal((await rpc(client, "Prepare", { key: "m1" })).err, undefined);
      assert.equal((await rpc(client, "Prepare", { key: "m1" })).err, 6);
      const get = async (path: string) => {
        const r = await fetch(`http://127.0.0.1:${port}${path}`);
        return { status: r.status, body: await r.text() };
      };
      assert.deepEqual(await get("/healthz"), { status: 200, body: "ok\n" });
      const m = (await get("/metrics")).body;
      assert.match(m, /nixoci_snapshotter_rpcs_total\{method="Prepare",code="OK"\} 1\n/);
      assert.match(m, /nixoci_snapshotter_rpcs_total\{method="Prepare",code="ALREADY_EXISTS"\} 1\n/);
      assert.match(m, /nixoci_snapshotter_rpc_duration_seconds_count\{method="Prepare"\} 2\n/);
    } finally {
      client.close();
      await stopSnapshotter(sn);
      await removeDir(dir);
    }
  });
});

describe("one snapshotter per root and per socket", () => {
  test("a second one on the same --root or --address is refused in one line; the first keeps serving", async () => {
    const dir = shortTempDir("sn-twice");
    const first = await startSnapshotter(dir);
    let again: Snapshotter | undefined;
    try {
      const otherSocket = join(dir, "other.sock");
      const sameRoot = nixoci(["snapshotter", "--address", otherSocket, "--root", first.root], {
        timeoutMs: 30_000,
      });
      assert.equal(sameRoot.status, 1, sameRoot.stderr);
      assert.equal(
        sameRoot.stderr,
        `nixoci: ${first.root}: a nixoci snapshotter (pid ${first.child.pid}) is already using this directory; ` +
          "stop it first or give another --root\n",
      );
      assert.ok(!existsSync(otherSocket), "the refused one made no socket");
      const sameSocket = nixoci(["snapshotter", "--address", first.socket, "--root", join(dir, "root2")], {
        timeoutMs: 30_000,
      });
      assert.equal(sameSocket.status, 1, sameSocket.stderr);
      assert.equal(
        sameSocket.stderr,
        `nixoci: ${first.socket}: another process is serving on this socket; stop it first or give another --address\n`,
      );
      // The first still answers on its socket (the refused ones neither took it over nor removed it).
      const client = snapshotsClient(first.socket);
      try {
        assert.equal((await rpc(client, "Stat", { key: "absent" })).err, 5);
      } finally {
        client.close();
      }
      // Killed, it leaves a stale socket and no lock: a new one takes both.
      await stopSnapshotter(first, "SIGKILL");
      assert.ok(existsSync(first.socket), "a SIGKILLed snapshotter leaves its socket file");
      again = await startSnapshotter(dir);
    } finally {
      await stopSnapshotter(first, "SIGKILL");
      if (again) await stopSnapshotter(again);
      await removeDir(dir);
    }
  });
});

describe("snapshotter gRPC API", () => {
  let dir: string;
  let sn: Snapshotter | undefined;
  let client: grpc.Client & Record<string, unknown>;
  before(async () => {
    dir = shortTempDir("sn-api");
    sn = await startOverlaySnapshotter(dir);
    client = snapshotsClient(sn.socket);
  });
  after(async () => {
    client?.close();
    await stopSnapshotter(sn, "SIGKILL");
    if (dir) await removeDir(dir);
  });

  test(
    "a Commit racing a Remove of its snapshot: NOT_FOUND or done, never INTERNAL",
    { timeout: 120_000 },
    async () => {
      for (let i = 0; i < 20; i++) {
        const key = `race-${i}`;
        const p = await rpc(client, "Prepare", { key });
        assert.equal(p.err, undefined, p.details);
        // Enough files that measuring the tree takes a while.
        const fs = (p.mounts as Reply[])[0].source as string;
        for (let f = 0; f < 300; f++) writeFileSync(join(fs, `f${f}`), "x");
        const [c, r] = await Promise.all([
          rpc(client, "Commit", { key, name: `race-done-${i}` }),
          rpc(client, "Remove", { key }),
        ]);
        assert.ok(c.err === undefined || c.err === 5, `Commit: ${c.err} ${c.details}`);
        assert.ok(r.err === undefined || r.err === 5, `Remove: ${r.err} ${r.details}`);
        if (c.err === undefined)
          assert.equal((await rpc(client, "Remove", { key: `race-done-${i}` })).err, undefined);
      }
    },
  );

  test(
    "prepare, commit, view, mounts and the error codes containerd expects",
    { timeout: 60_000 },
    async () => {
      const p1 = await rpc(client, "Prepare", { key: "k1", labels: { a: "1" } });
      assert.equal(p1.err, undefined, p1.details);
      const m1 = (p1.mounts as Reply[])[0];
      assert.equal(m1.type, "bind");
      assert.deepEqual(m1.options, ["rw", "rbind"]);
      const fs1 = m1.source as string;
      assert.match(fs1, /\/root\/snapshots\/\d+\/fs$/);
      writeFileSync(join(fs1, "one.txt"), "layer one\n");
      // A name that is not UTF-8 (as unpacked layers may have): Usage counts it like any other.
      writeFileSync(Buffer.concat([Buffer.from(`${fs1}/caf`), Buffer.from([0xe9])]), "latin-1\n");

      assert.equal((await rpc(client, "Prepare", { key: "k1" })).err, 6, "ALREADY_EXISTS");
      assert.equal((await rpc(client, "Prepare", { key: "k2", parent: "nope" })).err, 5, "NOT_FOUND parent");
      assert.equal(
        (await rpc(client, "Prepare", { key: "k2", parent: "k1" })).err,
        3,
        "INVALID_ARGUMENT: active parent",
      );
      assert.equal((await rpc(client, "Mounts", { key: "nope" })).err, 5);
      assert.equal((await rpc(client, "Commit", { key: "nope", name: "x" })).err, 5);

      assert.equal(
        (await rpc(client, "Commit", { key: "k1", name: "L1", labels: { c: "2" } })).err,
        undefined,
      );
      assert.equal((await rpc(client, "Stat", { key: "k1" })).err, 5, "the active key is gone after commit");
      const st = (await rpc(client, "Stat", { key: "L1" })).info as Reply;
      assert.equal(st.kind, "COMMITTED");
      assert.deepEqual(st.labels, { c: "2" });
      assert.equal((await rpc(client, "Commit", { key: "L1", name: "L1b" })).err, 9, "FAILED_PRECONDITION");
      const u1 = await rpc(client, "Usage", { key: "L1" });
      assert.ok((u1.size as number) > 0 && (u1.inodes as number) === 3, JSON.stringify(u1));

      // A second layer on top; its active snapshot is an overlay with the parents nearest first.
      const p2 = await rpc(client, "Prepare", { key: "k2", parent: "L1" });
      const m2 = (p2.mounts as Reply[])[0];
      assert.equal(m2.type, "overlay");
      const opts2 = m2.options as string[];
      const upper2 = opts2.find((o) => o.startsWith("upperdir="))!.slice("upperdir=".length);
      assert.ok(opts2.includes(`lowerdir=${fs1}`), opts2.join(" "));
      assert.ok(opts2.some((o) => o.startsWith("workdir=")));
      writeFileSync(join(upper2, "two.txt"), "layer two\n");
      assert.equal((await rpc(client, "Commit", { key: "k2", name: "L2" })).err, undefined);

      // A container-like active snapshot on L2, mounted for real.
      const p3 = await rpc(client, "Prepare", { key: "ctr", parent: "L2" });
      const m3 = (p3.mounts as Reply[])[0];
      const lower3 = (m3.options as string[]).find((o) => o.startsWith("lowerdir="))!;
      assert.equal(lower3, `lowerdir=${upper2}:${fs1}`);
      const target = join(dir, "mnt");
      mkdirSync(target);
      await run("mount", [
        "-t",
        m3.type as string,
        m3.source as string,
        target,
        "-o",
        (m3.options as string[]).join(","),
      ]);
      try {
        assert.equal(readFileSync(join(target, "one.txt"), "utf8"), "layer one\n");
        assert.equal(readFileSync(join(target, "two.txt"), "utf8"), "layer two\n");
        writeFileSync(join(target, "three.txt"), "rw\n");
      } finally {
        await run("umount", [target]);
      }
      const u3 = await rpc(client, "Usage", { key: "ctr" });
      assert.ok((u3.inodes as number) >= 2, JSON.stringify(u3));

      // Views: one parent -> read-only bind of the parent's fs; two or more -> read-only overlay.
      const v1 = ((await rpc(client, "View", { key: "v1", parent: "L1" })).mounts as Reply[])[0];
      assert.deepEqual([v1.type, v1.source, v1.options], ["bind", fs1, ["ro", "rbind"]]);
      const v2 = ((await rpc(client, "View", { key: "v2", parent: "L2" })).mounts as Reply[])[0];
      assert.equal(v2.type, "overlay");
      assert.ok(!(v2.options as string[]).some((o) => o.startsWith("upperdir=")));
      assert.equal(
        (await rpc(client, "Commit", { key: "v2", name: "nope" })).err,
        9,
        "a view cannot be committed",
      );

      // Remove: FAILED_PRECONDITION with children, NOT_FOUND when missing.
      assert.equal((await rpc(client, "Remove", { key: "L1" })).err, 9);
      assert.equal((await rpc(client, "Remove", { key: "missing" })).err, 5);

      // Update: labels only.
      const up = await rpc(client, "Update", {
        info: { name: "L2", labels: { x: "1", "containerd.io/gc.root": "t" } },
        update_mask: { paths: ["labels.x"] },
      });
      assert.deepEqual((up.info as Reply).labels, { x: "1" });
      const up2 = await rpc(client, "Update", {
        info: { name: "L2", labels: { y: "2" } },
        update_mask: { paths: [] },
      });
      assert.deepEqual((up2.info as Reply).labels, { y: "2" });
      assert.equal(
        (await rpc(client, "Update", { info: { name: "L2" }, update_mask: { paths: ["parent"] } })).err,
        3,
      );
      assert.equal((await rpc(client, "Update", { info: { name: "gone" } })).err, 5);

      // List and its filters.
      const all = await list(client);
      assert.deepEqual(all.map((i) => `${i.name}:${i.kind}:${i.parent}`).sort(), [
        "L1:COMMITTED:",
        "L2:COMMITTED:L1",
        "ctr:ACTIVE:L2",
        "v1:VIEW:L1",
        "v2:VIEW:L2",
      ]);
      assert.deepEqual((await list(client, ["kind==view"])).map((i) => i.name).sort(), ["v1", "v2"]);
      assert.deepEqual(
        (await list(client, ["parent==L1,kind==committed", "name==ctr"])).map((i) => i.name).sort(),
        ["L2", "ctr"],
      );
      assert.deepEqual(
        (await list(client, ['labels."y"==2'])).map((i) => i.name),
        ["L2"],
      );
      assert.deepEqual((await list(client, ["name~=^v"])).map((i) => i.name).sort(), ["v1", "v2"]);
    },
  );

  test(
    "metadata survives SIGKILL; Cleanup removes orphan directories; Remove deletes",
    { timeout: 60_000 },
    async () => {
      const before = await list(client);
      assert.ok(before.length > 0);
      client.close();
      await stopSnapshotter(sn, "SIGKILL");
      const snaps = join(dir, "root", "snapshots");
      mkdirSync(join(snaps, "99999", "fs"), { recursive: true });
      mkdirSync(join(snaps, "new-crashed", "fs"), { recursive: true });
      sn = await startOverlaySnapshotter(dir);
      client = snapshotsClient(sn.socket);
      assert.deepEqual(await list(client), before);
      assert.equal((await rpc(client, "Cleanup", {})).err, undefined);
      assert.equal(existsSync(join(snaps, "99999")), false);
      assert.equal(existsSync(join(snaps, "new-crashed")), false);
      assert.equal(readdirSync(snaps).length, before.length);

      for (const key of ["ctr", "v1", "v2", "L2", "L1"]) {
        const r = await rpc(client, "Remove", { key });
        assert.equal(r.err, undefined, `${key}: ${r.details}`);
      }
      assert.deepEqual(await list(client), []);
      assert.deepEqual(readdirSync(snaps), []);

      // SIGTERM: a clean exit that removes the socket.
      client.close();
      const s = sn;
      await stopSnapshotter(s, "SIGTERM");
      assert.equal(s.child.exitCode, 0, tail(s.logFile));
      assert.equal(existsSync(s.socket), false);
      assert.match(readFileSync(s.logFile, "utf8"), /"msg":"stopped"/);
    },
  );
});

describe(`snapshotter under containerd ${containerdUnderTest().series}`, () => {
  let dir: string;
  let sn: Snapshotter | undefined;
  let containerd: Containerd | undefined;
  let archive: string;
  const ref = "docker.io/nixoci/sn:v1";

  before(async () => {
    dir = shortTempDir("sn-ctrd");
    const image = await makeImage();
    archive = join(makeTempDir("sn-archive"), "image.tar");
    await writeOciArchive(image, archive, "v1");
    sn = await startOverlaySnapshotter(dir);
    containerd = await startContainerd({
      proxyPlugins: { nixoci: { type: "snapshot", address: sn.socket } },
    });
  });
  after(async () => {
    await containerd?.stop();
    await stopSnapshotter(sn);
    if (dir) {
      if (process.env.NIXOCI_SN_LOG && sn) writeFileSync(process.env.NIXOCI_SN_LOG, readFileSync(sn.logFile));
      assert.deepEqual(mountsUnder(dir), [], "no mount left under the snapshotter's root");
      await removeDir(dir);
    }
  });

  const ctr = (args: string[]): string => containerd!.ctr(args).toString();

  /** Snapshot lines of `ctr snapshots ls` (KEY PARENT KIND), sorted. */
  const ctrSnapshots = (): string[] =>
    ctr(["snapshots", "--snapshotter", "nixoci", "ls"])
      .trim()
      .split("\n")
      .slice(1)
      .map((l) => l.trim().split(/\s+/).join(" "))
      .filter(Boolean)
      .sort();

  test(
    "imports, runs, survives a SIGKILL of the snapshotter, and removes",
    { timeout: 240_000 },
    async () => {
      ctr(["images", "import", "--snapshotter", "nixoci", "--base-name", "docker.io/nixoci/sn", archive]);
      assert.equal(
        ctr(["run", "--snapshotter", "nixoci", "--rm", ref, "nixoci-sn-1"]),
        "hello from nixoci\n",
      );

      const snaps = ctrSnapshots();
      assert.equal(snaps.length, 2, snaps.join("\n"));
      assert.ok(
        snaps.every((l) => / Committed$/.test(l)),
        snaps.join("\n"),
      );
      let client = snapshotsClient(sn!.socket);
      // `ctr run --rm` removes the container's snapshot from containerd's metadata at once, but from the
      // backend only when containerd's GC runs, a moment later: wait for that, or the SIGKILL below races it.
      const backend = await until(
        "containerd's GC to remove the container's backend snapshot",
        30_000,
        async () => {
          const listed = await list(client);
          assert.deepEqual(
            listed.map((i) => i.kind),
            ["COMMITTED", "COMMITTED"],
          );
          return listed;
        },
        100,
      );
      client.close();
      // containerd's metadata layer names backend snapshots NAMESPACE/ID/NAME.
      assert.ok(
        backend.every((i) => (i.name as string).startsWith("default/")),
        JSON.stringify(backend),
      );

      await stopSnapshotter(sn, "SIGKILL");
      sn = await startOverlaySnapshotter(dir);
      client = snapshotsClient(sn.socket);
      assert.deepEqual((await list(client)).map((i) => i.name).sort(), backend.map((i) => i.name).sort());
      client.close();

      // containerd's connection to the proxy is in reconnect backoff (calls fail fast with UNAVAILABLE, even
      // `ctr snapshots ls`) until it redials, within a few seconds: wait for that, bounded.
      const top = snaps.find((l) => l.split(" ").length === 3)!.split(" ")[0];
      const again = await until(
        "containerd to reach the restarted snapshotter",
        30_000,
        () => {
          const listed = ctrSnapshots();
          ctr(["snapshots", "--snapshotter", "nixoci", "usage", top]);
          return listed;
        },
        250,
      );
      assert.deepEqual(again, snaps);
      assert.equal(
        ctr(["run", "--snapshotter", "nixoci", "--rm", ref, "nixoci-sn-2"]),
        "hello from nixoci\n",
      );
      assert.deepEqual(ctrSnapshots(), snaps, "the container's snapshot went with --rm");

      // A snapshot of our own through ctr, then removal of it, the top layer and the image.
      ctr(["snapshots", "--snapshotter", "nixoci", "prepare", "scratch", top]);
      ctr(["snapshots", "--snapshotter", "nixoci", "rm", "scratch"]);
      ctr(["snapshots", "--snapshotter", "nixoci", "rm", top]);
      ctr(["images", "rm", "--sync", ref]);
      // containerd's garbage collector removes the backend snapshots (Remove, children first, then Cleanup).
      const gcClient = snapshotsClient(sn.socket);
      try {
        await until(
          "containerd's GC to remove every backend snapshot",
          30_000,
          async () => assert.deepEqual(await list(gcClient), []),
          250,
        );
      } finally {
        gcClient.close();
      }
      assert.deepEqual(ctrSnapshots(), []);
      assert.deepEqual(readdirSync(join(sn.root, "snapshots")), []);
      assert.deepEqual(mountsUnder(dir), []);
      assert.deepEqual(mountsUnder(dirname(containerd!.root)), [], "no container rootfs left mounted");

      // SIGTERM while containerd still holds its connection: a clean exit. stopSnapshotter's 10 s before a
      // SIGKILL is the liveness bound (a SIGKILL leaves no exit code); bench/limits.ts measures how soon.
      const s = sn;
      await stopSnapshotter(s, "SIGTERM");
      assert.equal(s.child.exitCode, 0, tail(s.logFile));
    },
  );
});
