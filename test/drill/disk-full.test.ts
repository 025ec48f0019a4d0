// Disk full: a small tmpfs (8 MiB, mounted by the test; root only) as the destination or storage, filled up to
// leave too little room for what is written to it:
// - `nixoci build -o oci:` (a new layout and one holding an older image) and `-o oci-archive:` (replacing an
//   older archive): exit 1 with one line naming the destination and "no space left on device"; no partial file
//   under a final name, no temporary (nor its name in the message); the
//   older content intact.
// - a push (skopeo, and a raw monolithic blob PUT) to `nixoci serve --storage` on the tmpfs: the push fails, the
//   registry answers a 5xx with a distribution error code; the server stays up, still serves the image it had
//   whole, leaves no temporary; with room again the push completes.
// - `nixoci nar restore` into the tmpfs: exit 1 with one line naming DEST and "no space left on device"; nothing
//   at DEST or beside it.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { writeOciLayout } from "../../src/outputs/layout.js";
import { makeImage } from "../support/make-image.js";
import { mountsUnder } from "../support/daemons.js";
import { buildFixtures, makeTempDir, type FixtureAttr } from "../support/fixtures.js";
import { run } from "../support/run.js";
import {
  assertNoTemporaries,
  checkBlobDir,
  checkOciArchive,
  checkOciLayout,
  checkRegistryImage,
  entries,
  finish,
  httpRequest,
  runNixoci,
  runNixociOk,
  startServe,
  type Finished,
} from "../support/drill.js";

let fx: Record<FixtureAttr, string>;
let mnt: string;

before(
  () => {
    fx = buildFixtures();
    mnt = join(makeTempDir("drill-disk-full"), "tmpfs");
    mkdirSync(mnt);
    run("mount", ["-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt]);
  },
  { timeout: 240_000 },
);

after(() => {
  if (!mnt || !mountsUnder(mnt).length) return;
  try {
    run("umount", [mnt]);
  } catch {
    run("umount", ["-l", mnt]);
  }
});

/** Fills the tmpfs with a file `name` so that only `leave` bytes stay free; returns its path. */
function fill(name: string, leave: number): string {
  const st = statfsSync(mnt);
  const free = st.bavail * st.bsize;
  assert.ok(free > leave, `${free} bytes free, more than ${leave}`);
  const file = join(mnt, name);
  run("fallocate", ["-l", String(free - leave), file]);
  return file;
}

/** Exit 1 and one line: `expected` (the message, or its pattern), in words ("no space left on device"). */
function assertEnospc(r: Finished, what: string, expected: string | RegExp): void {
  console.log(`${what}: exit ${r.code}: ${r.stderr.trim()}`);
  assert.equal(r.code, 1, r.stderr);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line: ${r.stderr}`);
  if (typeof expected === "string") assert.equal(lines[0], expected);
  else assert.match(lines[0], expected);
}

describe("drill: disk full (an 8 MiB tmpfs)", () => {
  test("build -o oci: into a new layout and one holding an older image", { timeout: 300_000 }, async () => {
    const dir = join(mnt, "oci");
    mkdirSync(dir);
    const layout = join(dir, "layout");
    await runNixociOk(["build", "-q", fx.greeting, "-o", `oci:${layout}:old`]);
    const old = checkOciLayout(layout)?.get("old");
    assert.ok(old);
    const filler = fill("filler-oci", 256 << 10);
    try {
      const cache = makeTempDir("drill-full-cache");
      const args = ["build", "-q", "--cache-dir", cache, fx.all];
      assertEnospc(
        await runNixoci([...args, "-o", `oci:${layout}:new`]),
        "build -o oci: (existing layout)",
        `nixoci: ${layout}: cannot write the OCI layout: no space left on device`,
      );
      const tags = checkOciLayout(layout);
      assert.deepEqual([...(tags?.keys() ?? [])], ["old"], "only the older image");
      assert.equal(tags?.get("old"), old);
      assertEnospc(
        await runNixoci([...args, "-o", `oci:${join(dir, "new")}:new`]),
        "build -o oci: (new layout)",
        `nixoci: ${join(dir, "new")}: cannot write the OCI layout: no space left on device`,
      );
      assert.deepEqual(entries(dir), ["layout"], "no new layout, nothing beside it");
      assertNoTemporaries([dir, cache], "after ENOSPC");
    } finally {
      rmSync(filler);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test(
    "build with its layer cache on it: igzip's and zstd's outputs do not fit",
    { timeout: 300_000 },
    async () => {
      const cache = join(mnt, "cache");
      const out = makeTempDir("drill-full-cache-out");
      const filler = fill("filler-cache", 1536 << 10);
      try {
        // fx.big (3 MiB of NAR, 2.4 MB of gzip or zstd) goes through the igzip or zstd batch, which fails to write it.
        for (const [jobs, compression] of [
          ["1", "gzip"],
          ["2", "gzip"],
          ["1", "zstd"],
        ]) {
          const r = await runNixoci([
            "build",
            "-q",
            "-j",
            jobs,
            "--compression",
            compression,
            "--cache-dir",
            cache,
            fx.big,
            "-o",
            `oci:${out}/l${jobs}${compression}:t`,
          ]);
          assertEnospc(
            r,
            `build with a full cache (-j ${jobs}, ${compression})`,
            /^nixoci: .*\/cache: cannot write the layer cache \(no space left on device\); free space/,
          );
          assertNoTemporaries([cache, out], "after ENOSPC in the cache");
        }
      } finally {
        rmSync(filler);
        rmSync(cache, { recursive: true, force: true });
      }
    },
  );

  test("build -o oci-archive: replacing an older archive", { timeout: 300_000 }, async () => {
    const dir = join(mnt, "archive");
    mkdirSync(dir);
    const file = join(dir, "img.tar");
    await runNixociOk(["build", "-q", fx.greeting, "-o", `oci-archive:${file}:img`]);
    const old = checkOciArchive(file, "img");
    const filler = fill("filler-archive", 256 << 10);
    try {
      const r = await runNixoci(["build", "-q", fx.all, "-o", `oci-archive:${file}:img`]);
      assertEnospc(
        r,
        "build -o oci-archive:",
        `nixoci: ${file}: cannot write the archive: no space left on device`,
      );
      assert.deepEqual(entries(dir), ["img.tar"], "nothing beside the archive");
      assert.equal(checkOciArchive(file, "img"), old, "the older archive is intact");
    } finally {
      rmSync(filler);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("nar restore into it", { timeout: 300_000 }, async () => {
    const dir = join(mnt, "nar");
    mkdirSync(dir);
    const nar = join(makeTempDir("drill-full-nar"), "big.nar");
    writeFileSync(nar, run("nix-store", ["--dump", fx.big]));
    const filler = fill("filler-nar", 512 << 10);
    try {
      const r = await runNixoci(["nar", "restore", join(dir, "dest")], { stdinFile: nar });
      const dest = join(dir, "dest");
      assertEnospc(
        r,
        "nar restore",
        new RegExp(
          `^nixoci: ${dest}: cannot (create|write) (the root directory|file "[^"]+") \\(no space left on device\\)$`,
        ),
      );
      assert.deepEqual(entries(dir), [], "nothing at DEST or beside it");
    } finally {
      rmSync(filler);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a push to nixoci serve whose --storage is on it", { timeout: 300_000 }, async () => {
    const storage = join(mnt, "storage");
    const work = makeTempDir("drill-full-push");
    const layout = async (name: string, bytes: number): Promise<string> => {
      const dir = join(work, name);
      await writeOciLayout(await makeImage({ hello: `${name}\n`, randomBytes: bytes }), dir, "v1");
      return `oci:${dir}:v1`;
    };
    const skopeo = (from: string, to: string): Promise<Finished> =>
      finish(
        spawn("skopeo", ["copy", "--dest-tls-verify=false", "--retry-times", "0", from, to], {
          stdio: ["ignore", "pipe", "pipe"],
        }),
        performance.now(),
      );
    const s = await startServe(storage);
    let filler: string | undefined;
    try {
      const base = await skopeo(await layout("base", 0), `docker://${s.host}/base/img:v1`);
      assert.equal(base.code, 0, base.stderr);
      const baseDigest = checkRegistryImage(s.host, "base/img", "v1");
      const big = await layout("big", 4 << 20);
      filler = fill("filler-push", 1 << 20);

      // skopeo: the push fails.
      const r = await skopeo(big, `docker://${s.host}/drill/full:v1`);
      console.log(`skopeo push into a full storage: exit ${r.code}: ${r.stderr.trim().split("\n").pop()}`);
      assert.notEqual(r.code, 0, "the push fails");
      // A raw monolithic upload: the registry's own answer.
      const blob = Buffer.alloc(3 << 20, 7);
      const digest = `sha256:${createHash("sha256").update(blob).digest("hex")}`;
      const started = await httpRequest(s.host, "POST", "/v2/drill/raw/blobs/uploads/");
      assert.equal(started.status, 202, started.body.toString());
      const location = String(started.headers.location);
      const url = new URL(location, `http://${s.host}`);
      url.searchParams.set("digest", digest);
      const put = await httpRequest(
        s.host,
        "PUT",
        url.pathname + url.search,
        {
          "Content-Type": "application/octet-stream",
          "Content-Length": String(blob.length),
        },
        blob,
      ).catch((err: Error) => ({ status: 0, headers: {}, body: Buffer.from(err.message) }));
      console.log(`monolithic PUT into a full storage: ${put.status} ${put.body.toString().slice(0, 300)}`);
      // The registry's own answer: 507 with a distribution error body (it once reset the connection instead).
      assert.equal(put.status, 507, `507: ${put.status} ${put.body.toString()}`);
      const body = JSON.parse(put.body.toString()) as { errors?: Array<{ code?: string; message?: string }> };
      assert.equal(body.errors?.[0]?.code, "UNKNOWN", put.body.toString());
      assert.match(body.errors?.[0]?.message ?? "", /storage is full/);

      // The server stays up, serves what it had whole, and left nothing partial.
      assert.equal(s.proc.exitCode, null, "still running");
      assert.equal((await httpRequest(s.host, "GET", "/v2/")).status, 200);
      assert.equal(checkRegistryImage(s.host, "base/img", "v1"), baseDigest, "what it had, whole");
      assert.equal(checkRegistryImage(s.host, "drill/full", "v1"), undefined, "no partial image");
      checkBlobDir(join(storage, "blobs", "sha256"));
      assertNoTemporaries([storage], "after ENOSPC");

      // With room again, the push completes.
      rmSync(filler);
      filler = undefined;
      const again = await skopeo(big, `docker://${s.host}/drill/full:v1`);
      assert.equal(again.code, 0, again.stderr);
      assert.ok(checkRegistryImage(s.host, "drill/full", "v1"));
    } finally {
      await s.stop();
      if (filler) rmSync(filler);
      rmSync(storage, { recursive: true, force: true });
    }
  });
});
