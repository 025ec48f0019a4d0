// Fault drills for `nixoci serve` (a child process on loopback), SIGKILLed at random and early points:
// - during an on-demand build: a manifest GET of a name not built yet (the literal resolver: a store path's base
//   name, here the whole fixture closure), the server killed while it builds. Restarted on the same storage:
//   every blob under its final name matches its digest, image records parse, the same GET answers the same
//   digest and skopeo copies the whole image; the killed build's temporaries are swept at start.
// - during a push (skopeo copy of a 32 MiB image), the server killed mid-upload. Restarted: the image it had
//   before is still served whole, the pushed tag is absent or complete, the push run again completes; the killed
//   server's temporaries are swept at start and its upload sessions purged once idle past --upload-ttl.
import { test, describe, before } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { basename, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { writeOciLayout } from "../../src/outputs/layout.js";
import { makeImage } from "../support/make-image.js";
import { buildFixtures, makeTempDir, type FixtureAttr } from "../support/fixtures.js";
import { until } from "../support/poll.js";
import {
  checkBlobDir,
  checkRegistryImage,
  drillTimeout,
  entries,
  finish,
  type Finished,
  httpRequest,
  killPoints,
  MANIFEST_ACCEPT,
  pidTemporaries,
  runTrials,
  startServe,
} from "../support/drill.js";

// The sweep and the purge are issue 11's F4 fix (dde3899): before it, a killed server's temporaries (a build's
// `.upload.tmp-<pid>-...` blobs and the like) stayed forever, and so did killed pushes' upload sessions.

let fx: Record<FixtureAttr, string>;
before(
  () => {
    fx = buildFixtures();
  },
  { timeout: 240_000 },
);

/** The storage's blobs all match their names and its JSON records parse (nothing partial under a final name). */
function checkStorage(storage: string): void {
  checkBlobDir(join(storage, "blobs", "sha256"));
  for (const sub of ["nix-images", "layers", "images"])
    for (const n of entries(join(storage, sub)).filter((e) => e.endsWith(".json")))
      JSON.parse(readFileSync(join(storage, sub, n), "utf8"));
}

/** After a restart: the temporaries of the killed server (`pid`) are swept (polled: the upkeep runs at start). */
async function sweptOf(storage: string, pid: number): Promise<void> {
  await until(
    "the killed server's temporaries to be swept",
    30_000,
    () => assert.deepEqual(pidTemporaries(storage, { pids: new Set([pid]) }), []),
    100,
  );
}

/** Waits until `t0 + ms` (the kill point), then SIGKILLs the server. */
async function killAt(serve: { kill(): Promise<void> }, t0: number, ms: number): Promise<void> {
  await sleep(Math.max(0, t0 + ms - performance.now()));
  await serve.kill();
}

describe("drill: nixoci serve SIGKILLed during an on-demand build", () => {
  test(
    "restarted: nothing partial, the same GET builds the same image, temporaries swept",
    { timeout: drillTimeout(30_000) },
    async () => {
      const work = makeTempDir("drill-serve-build");
      const name = basename(fx.all);
      const path = `/v2/${name}/manifests/latest`;
      const get = (host: string) => httpRequest(host, "GET", path, { Accept: MANIFEST_ACCEPT });

      const first = await startServe(join(work, "storage-measured"));
      const t0 = performance.now();
      const r0 = await get(first.host);
      const measured = Math.round(performance.now() - t0);
      await first.stop();
      assert.equal(r0.status, 200, r0.body.toString());
      const digest = r0.headers["docker-content-digest"];
      console.log(`serve: one on-demand build takes ${measured} ms`);

      await runTrials(
        "serve on-demand build",
        killPoints("serve on-demand build", measured),
        async (p, i) => {
          const storage = join(work, `storage-${i}`);
          const s = await startServe(storage);
          const t = performance.now();
          const pending = get(s.host).then(
            (r) => `answered ${r.status}`,
            (err: Error) => `failed (${err.message})`,
          );
          await killAt(s, t, p.ms);
          const outcome = await pending;
          const left = pidTemporaries(storage, { pids: new Set([s.pid]) }).length;
          checkStorage(storage);
          const s2 = await startServe(storage, ["--upload-ttl", "1"]);
          try {
            await sweptOf(storage, s.pid);
            const again = await get(s2.host);
            assert.equal(again.status, 200, again.body.toString());
            assert.equal(again.headers["docker-content-digest"], digest, "the same image");
            assert.equal(checkRegistryImage(s2.host, name, "latest"), digest, "skopeo copies it whole");
            checkStorage(storage);
            assert.deepEqual(pidTemporaries(storage), [], "no temporaries after the rebuild");
          } finally {
            await s2.stop();
          }
          return `killed; the GET ${outcome} (${left} temporaries left)`;
        },
      );
    },
  );
});

/** skopeo copy (a child process, so the kill timer runs); resolves with how it ended. */
function skopeoCopy(from: string, to: string): Promise<Finished> {
  const started = performance.now();
  return finish(
    spawn("skopeo", ["copy", "--dest-tls-verify=false", "--retry-times", "0", from, to], {
      stdio: ["ignore", "pipe", "pipe"],
    }),
    started,
  );
}

describe("drill: nixoci serve SIGKILLed during a push (skopeo copy)", () => {
  test(
    "restarted: what it had is served whole, the tag absent or complete, the push completes",
    { timeout: drillTimeout(30_000) },
    async () => {
      const work = makeTempDir("drill-serve-push");
      // A new image for each push (its random layer differs in size, so in content): its blobs are uploaded, not
      // found in the storage already and mounted.
      const image = async (i: number): Promise<string> => {
        const layout = join(work, `layout-${i}`);
        await writeOciLayout(
          await makeImage({ hello: `drill push ${i}\n`, randomBytes: (32 << 20) + i * 512 }),
          layout,
          "v1",
        );
        return `oci:${layout}:v1`;
      };
      const storage = join(work, "storage");
      const args = ["--upload-ttl", "1"];
      let s = await startServe(storage, args);
      try {
        const base = await skopeoCopy(await image(-1), `docker://${s.host}/base/img:v1`);
        assert.equal(base.code, 0, base.stderr);
        const baseDigest = checkRegistryImage(s.host, "base/img", "v1");
        assert.ok(baseDigest);
        const m = await skopeoCopy(await image(0), `docker://${s.host}/drill/measured:v1`);
        assert.equal(m.code, 0, m.stderr);
        const measured = Math.round(m.ms);
        console.log(`serve: one push of the 32 MiB image takes ${measured} ms`);

        await runTrials("serve push", killPoints("serve push", measured), async (p, i) => {
          const repo = `drill/push-${i}`;
          const dest = `docker://${s.host}/${repo}:v1`;
          const src = await image(i + 1);
          const t = performance.now();
          const push = skopeoCopy(src, dest);
          await killAt(s, t, p.ms);
          const killedPid = s.pid;
          const r = await push; // the test's timeout is the liveness bound
          const left = `${pidTemporaries(storage, { pids: new Set([killedPid]) }).length} temporaries, ${entries(join(storage, "uploads")).length} upload sessions left`;
          s = await startServe(storage, args);
          checkStorage(storage);
          assert.equal(
            checkRegistryImage(s.host, "base/img", "v1"),
            baseDigest,
            "what it had is served whole",
          );
          const after = checkRegistryImage(s.host, repo, "v1");
          await sweptOf(storage, killedPid);
          const again = await skopeoCopy(src, `docker://${s.host}/${repo}:v1`);
          assert.equal(again.code, 0, again.stderr);
          assert.ok(checkRegistryImage(s.host, repo, "v1"), "the push run again completes");
          // Upload sessions the killed pushes left go once idle past the TTL (1 s here).
          await until("stale upload sessions to be purged", 30_000, () =>
            assert.deepEqual(entries(join(storage, "uploads")), []),
          );
          assert.deepEqual(pidTemporaries(storage), [], "no temporaries");
          return `${r.code === 0 ? "push finished before the kill" : "push failed"} (tag ${after ? "complete" : "absent"}; ${left})`;
        });
      } finally {
        await s.stop();
      }
    },
  );
});
