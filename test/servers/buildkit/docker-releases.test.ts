// The Docker release under test (NIXOCI_DOCKER: 20.10, 26.1 or 28.5; scripts/run-tests.mjs runs this file once per
// release of its Docker matrix) is the one that runs, and its BuildKit builds: a daemon started by startDockerd
// reports the release (and, from 26.1 on, the release's containerd as its managed containerd, and a buildx whose
// default builder is the daemon's own BuildKit); `docker buildx build --load` of a tiny Dockerfile gives an image
// with the context's file in it, with the classic image store and with the containerd image store, and only the
// containerd store's BuildKit merges (COPY --link becomes a MergeOp: its "LINK COPY" step); the Engine API build
// (dockerBuild, what the frontend suite drives) works on every release. Cold build times are printed as
// diagnostics, not asserted.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { dockerBuild } from "../../support/buildkit.js";
import { startDockerd, type Dockerd } from "../../support/daemons.js";
import { dockerUnderTest } from "../../support/docker-release.js";

const release = dockerUnderTest();

/**
 * A build context: a Dockerfile copying two files from it onto scratch, the second with --link when `link` (which
 * 20.10's Dockerfile frontend, BuildKit v0.8's, does not know).
 */
function tinyContext(parent: string, name: string, text: string, link: boolean): string {
  const c = join(parent, name);
  mkdirSync(c, { recursive: true });
  writeFileSync(
    join(c, "Dockerfile"),
    [
      "FROM scratch",
      "COPY hello.txt /hello.txt",
      `COPY ${link ? "--link " : ""}linked.txt /linked.txt`,
      "",
    ].join("\n"),
  );
  writeFileSync(join(c, "hello.txt"), text);
  writeFileSync(join(c, "linked.txt"), `linked: ${text}`);
  return c;
}

/** The content of `path` in `image`'s filesystem (a created, never started, container; `docker cp` out as tar). */
function fileInImage(d: Dockerd, image: string, path: string): string {
  const id = d.docker(["create", image, "/none"]).toString().trim();
  try {
    const tar = d.docker(["cp", `${id}:${path}`, "-"]);
    return execFileSync("tar", ["-xOf", "-"], { input: tar }).toString();
  } finally {
    d.docker(["rm", id]);
  }
}

interface ServerVersion {
  Server: { Version: string; Components: Array<{ Name: string; Version: string }> };
}

describe(`Docker ${release.series}`, () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "nixoci-docker-releases-"));
  });
  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const stores = release.containerdStore ? [false, true] : [false];
  for (const containerdStore of stores) {
    const store = containerdStore ? "containerd image store" : "classic image store";
    describe(store, () => {
      let d: Dockerd;
      before(async () => {
        d = await startDockerd({ containerdStore });
      });
      after(async () => {
        await d?.stop();
      });

      test("the daemon is the release selected, with its own containerd and the store asked for", (t) => {
        const v = JSON.parse(d.docker(["version", "--format", "{{json .}}"]).toString()) as ServerVersion;
        assert.ok(v.Server.Version.startsWith(`${release.series}.`), `server ${v.Server.Version}`);
        const containerd = v.Server.Components.find((c) => c.Name === "containerd");
        assert.ok(containerd, JSON.stringify(v.Server.Components));
        if (release.containerd)
          assert.ok(
            containerd.Version.replace(/^v/, "").startsWith(`${release.containerd.series}.`),
            `containerd ${containerd.Version}, expected ${release.containerd.series}`,
          );
        t.diagnostic(`dockerd ${v.Server.Version} with containerd ${containerd.Version}`);
        // The classic store names its graph driver (overlay2); the containerd store its snapshotter, whose
        // driver-type says it is containerd's.
        const info = JSON.parse(d.docker(["info", "--format", "{{json .}}"]).toString()) as {
          Driver: string;
          DriverStatus: string[][] | null;
        };
        const snapshotter = (info.DriverStatus ?? []).some(
          ([k, val]) => k === "driver-type" && val === "io.containerd.snapshotter.v1",
        );
        assert.equal(snapshotter, containerdStore, `${info.Driver} ${JSON.stringify(info.DriverStatus)}`);
      });

      // 26.1's containerd store cannot read a context sent as the request's tar body (moby/moby#47717: its
      // containerd worker does not serve the "http://build-context-..." source and looks the name up in DNS),
      // which 28.5 can: with 26.1 the frontend suite and the Engine API path stay on the classic store.
      if (!(containerdStore && release.series === "26.1"))
        test("the Engine API build (POST /build?version=2) of a Dockerfile gives the image", async () => {
          const text = `engine api ${release.series} ${store} ${randomUUID()}\n`;
          const ctx = tinyContext(dir, `api-${containerdStore}`, text, false);
          const r = await dockerBuild(d, ctx, { t: "tiny:api" });
          assert.equal(r.error, undefined, `${r.error}\n${r.log.slice(-3000)}\n${d.log().slice(-3000)}`);
          assert.equal(fileInImage(d, "tiny:api", "/hello.txt"), text);
          assert.equal(fileInImage(d, "tiny:api", "/linked.txt"), `linked: ${text}`);
        });

      if (!release.buildxPluginDir) return;

      test("buildx reports its version and the daemon's BuildKit as its default builder", (t) => {
        const version = d.buildx(["version"]).stdout.toString().trim();
        assert.match(version, /buildx v?\d+\.\d+\.\d+/);
        const inspect = d.buildx(["inspect"]).stdout.toString();
        assert.match(inspect, /^Driver:\s+docker$/m, inspect);
        assert.match(inspect, /^Status:\s+running$/m, inspect);
        // Debian builds dockerd without stamping the BuildKit it vendors: this line may say v0.0.0+unknown.
        const buildkit = /^BuildKit version:\s+(\S+)$/m.exec(inspect);
        assert.ok(buildkit, inspect);
        t.diagnostic(`${version}; BuildKit version ${buildkit[1]}`);
      });

      test("`docker buildx build --load` gives the image; only the containerd store merges (COPY --link)", (t) => {
        const text = `buildx ${release.series} ${store} ${randomUUID()}\n`;
        const ctx = tinyContext(dir, `buildx-${containerdStore}`, text, true);
        const t0 = performance.now();
        // rawjson: every vertex of the solve, also those never run on their own (a merge is lazy, and plain
        // progress leaves it out). buildx 0.13 accepts it too, though its help does not list it.
        const r = d.buildx(["build", "--progress=rawjson", "--load", "-t", "tiny:buildx", ctx]);
        t.diagnostic(`cold buildx build --load: ${Math.round(performance.now() - t0)} ms`);
        assert.equal(fileInImage(d, "tiny:buildx", "/hello.txt"), text);
        assert.equal(fileInImage(d, "tiny:buildx", "/linked.txt"), `linked: ${text}`);
        // The Dockerfile frontend turns COPY --link into a MergeOp (a "LINK COPY" vertex) when the worker
        // supports merges; the classic store's worker does not, and the copy stays a plain one.
        const names = [...r.stderr.matchAll(/"name":\s*"([^"]*)"/g)].map((m) => m[1]);
        assert.ok(
          names.some((n) => n.includes("COPY --link linked.txt")),
          [...new Set(names)].join("\n"),
        );
        assert.equal(
          names.some((n) => n.includes("LINK COPY --link")),
          containerdStore,
          [...new Set(names)].join("\n"),
        );
        t.diagnostic(`MergeOp: ${containerdStore ? "yes" : "no"}`);
      });
    });
  }
});
