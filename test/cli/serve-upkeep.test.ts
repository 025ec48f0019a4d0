// What killed builds and pushes leave in `nixoci serve`'s storage goes when the server starts again: the
// temporaries of writers that no longer run (a SIGKILLed on-demand build's half-written layer in blobs/sha256, and
// the like in every directory the registry writes), and upload sessions idle longer than --upload-ttl. A live
// writer's temporary stays, and so does a fresh session, which a client can still finish after the restart.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { join } from "node:path";
import { sha256Digest } from "../../src/oci/digest.js";
import { ROOT } from "../support/cli.js";
import { makeTempDir } from "../support/fixtures.js";
import { GiveUp, until } from "../support/poll.js";
import { request } from "../support/registry-server.js";
import { deadPid } from "../support/run.js";
import { startNixociServe, type ServeProcess } from "../support/serve.js";

const EXAMPLES = join(ROOT, "examples/packages.nix");

const running = new Set<ServeProcess>();
after(async () => {
  for (const s of running) await kill(s, "SIGKILL");
});

/** `nixoci serve` in a process group of its own (a SIGKILL then takes its nix children too). */
async function startServe(storage: string, args: string[] = []): Promise<ServeProcess> {
  const s = await startNixociServe(storage, ["--no-binary-cache", ...args], { detached: true });
  running.add(s);
  return s;
}

async function kill(s: ServeProcess, signal: NodeJS.Signals): Promise<void> {
  if (s.proc.exitCode === null && s.proc.signalCode === null) process.kill(-s.proc.pid!, signal);
  await s.exited;
  running.delete(s);
}

function tempName(base: string, pid: number): string {
  return `.${base}.tmp-${pid}-${randomBytes(6).toString("hex")}`;
}

test("a restart removes dead writers' temporaries everywhere and upload sessions idle longer than --upload-ttl", async () => {
  const storage = makeTempDir("serve-upkeep");
  // Two pushes whose server is killed: their sessions stay on disk.
  const first = await startServe(storage, ["--nix-file", EXAMPLES]);
  const sessions: string[] = [];
  const data = randomBytes(1000);
  for (let i = 0; i < 2; i++) {
    const start = await request(first.host, "POST", "/v2/pushed/app/blobs/uploads/");
    assert.equal(start.status, 202);
    const location = String(start.headers.location);
    const patch = await request(first.host, "PATCH", location, {
      body: data.subarray(0, 600),
      headers: { "Content-Type": "application/octet-stream" },
    });
    assert.equal(patch.status, 202);
    sessions.push(location);
  }
  await kill(first, "SIGKILL");
  const uuidOf = (location: string) => location.split("/").pop()!.split("?")[0];
  const [idle, fresh] = sessions.map(uuidOf);
  // One of them last touched two hours ago.
  const idleDir = join(storage, "uploads", idle);
  const twoHoursAgo = Date.now() - 2 * 3600_000;
  const info = JSON.parse(fs.readFileSync(join(idleDir, "info.json"), "utf8"));
  fs.writeFileSync(join(idleDir, "info.json"), JSON.stringify({ ...info, startedAt: twoHoursAgo }));
  fs.utimesSync(join(idleDir, "data"), twoHoursAgo / 1000, twoHoursAgo / 1000);

  // Temporaries of killed writers in every directory the registry writes to (a tree among them, read-only as a
  // restored store tree is), and a live process's (this test's) beside them.
  const dead = deadPid();
  const dirs = [
    "blobs/sha256",
    "repositories/pushed/app/_manifests/tags",
    "repositories/pushed/app/_manifests/revisions/sha256",
    `repositories/pushed/app/_referrers/sha256/${"a".repeat(64)}`,
    `uploads/${fresh}`,
    "nix-images",
    "layers",
    "images",
  ];
  const gone: string[] = [];
  for (const d of dirs) {
    fs.mkdirSync(join(storage, d), { recursive: true });
    const name = join(d, tempName("x", dead));
    fs.writeFileSync(join(storage, name), "half-written");
    gone.push(name);
  }
  const tree = join("blobs/sha256", tempName("tree", dead));
  fs.mkdirSync(join(storage, tree, "sub"), { recursive: true });
  fs.writeFileSync(join(storage, tree, "sub", "f"), "x");
  fs.chmodSync(join(storage, tree, "sub"), 0o555);
  gone.push(tree);
  const kept = [
    join("blobs/sha256", tempName("upload", process.pid)),
    join("nix-images", tempName("x", process.pid)),
  ];
  for (const name of kept) fs.writeFileSync(join(storage, name), "being written");

  const second = await startServe(storage, ["--nix-file", EXAMPLES, "--upload-ttl", "3600"]);
  await until("the dead writers' temporaries and the idle session to be removed", 30_000, () => {
    for (const name of gone) assert.ok(!fs.existsSync(join(storage, name)), `${name} is still there`);
    assert.ok(!fs.existsSync(idleDir), "the idle session is still there");
  });
  // What must stay is checked once the upkeep's first pass is over (it reports then).
  await until("the storage upkeep's first pass", 30_000, () => {
    assert.match(second.log(), /"msg":"storage upkeep"/);
  });
  for (const name of kept) assert.ok(fs.existsSync(join(storage, name)), `${name} was removed`);
  const idleStatus = await request(second.host, "GET", sessions[0]);
  assert.equal(idleStatus.status, 404);
  assert.equal(idleStatus.code, "BLOB_UPLOAD_UNKNOWN");
  // The fresh session survived the restart and can be finished.
  const status = await request(second.host, "GET", sessions[1]);
  assert.equal(status.status, 204);
  assert.equal(status.headers.range, "0-599");
  const digest = sha256Digest(data);
  const put = await request(
    second.host,
    "PUT",
    `${sessions[1]}${sessions[1].includes("?") ? "&" : "?"}digest=${digest}`,
    {
      body: data.subarray(600),
      headers: { "Content-Type": "application/octet-stream", "Content-Range": "600-999" },
    },
  );
  assert.equal(put.status, 201, put.body.toString());
  assert.equal((await request(second.host, "GET", `/v2/pushed/app/blobs/${digest}`)).status, 200);
  await kill(second, "SIGTERM");
});

test("kill -9 in the middle of an on-demand build: the next start removes its half-written layer", async () => {
  const work = makeTempDir("serve-upkeep-build");
  const storage = join(work, "storage");
  // One package big and incompressible enough that gzipping its layer takes a while.
  const nixFile = join(work, "packages.nix");
  fs.writeFileSync(
    nixFile,
    `{ system ? builtins.currentSystem }: {
  noise = builtins.derivation {
    name = "nixoci-test-noise";
    inherit system;
    builder = "/bin/sh";
    args = [ "-c" "export PATH=/bin:/usr/bin; mkdir -p $out/share; head -c 48000000 /dev/urandom > $out/share/noise" ];
  };
}
`,
  );
  const first = await startServe(storage, ["--nix-file", nixFile, "--compression", "gzip"]);
  const pid = first.proc.pid!;
  const pull = request(first.host, "GET", "/v2/noise/manifests/latest").catch((err: unknown) => err);
  const blobDir = join(storage, "blobs/sha256");
  // A layer being written (a temporary that has grown past 1 MB: the big layer, not a small one about to be renamed):
  // a blob written by this process, or the directory where igzip writes the layers of a compressor batch.
  const written = (path: string): number => {
    const st = fs.statSync(path, { throwIfNoEntry: false });
    if (!st?.isDirectory()) return st?.size ?? 0;
    const names = fs.readdirSync(path);
    return names.reduce(
      (n, name) => n + (fs.statSync(join(path, name), { throwIfNoEntry: false })?.size ?? 0),
      0,
    );
  };
  const tmp = await until(
    "the build to write its big layer",
    300_000,
    () => {
      if (first.proc.exitCode !== null) throw new GiveUp(`serve exited: ${first.log()}`);
      const names = fs.existsSync(blobDir) ? fs.readdirSync(blobDir) : [];
      const t = names.find(
        (n) =>
          (n.startsWith(`.upload.tmp-${pid}-`) || n.startsWith(`.gzip-batch.tmp-${pid}-`)) &&
          written(join(blobDir, n)) > 1 << 20,
      );
      assert.ok(t, "no big layer being written yet");
      return t;
    },
    5,
  );
  await kill(first, "SIGKILL");
  await pull;
  assert.ok(fs.existsSync(join(blobDir, tmp)), "the killed build's temporary is not on disk");

  const second = await startServe(storage, ["--nix-file", nixFile, "--compression", "gzip"]);
  await until("the killed build's temporaries to be removed", 30_000, () => {
    const left = fs.readdirSync(blobDir).filter((n) => n.includes(`.tmp-${pid}-`));
    assert.deepEqual(left, []);
  });
  // And the image builds.
  const res = await request(second.host, "GET", "/v2/noise/manifests/latest", {
    headers: { Accept: "application/vnd.oci.image.manifest.v1+json" },
  });
  assert.equal(res.status, 200, res.body.toString());
  await kill(second, "SIGTERM");
});
