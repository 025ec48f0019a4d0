// nixoci's frontend driven the way users run BuildKit today: `docker buildx build` (the docker driver: the daemon's
// own BuildKit) of Docker 26.1 and 28.5 with the containerd image store (the docker driver exports OCI archives and
// registry caches only there), a spec whose first line is `# syntax=nixoci-frontend:test`:
//   --load (type=docker), --output type=oci,dest=FILE, --output type=image,push=true to `nixoci serve` and to
//   docker-registry 2.8, --cache-to/--cache-from type=registry through `nixoci serve` and docker-registry (after
//   the daemon's build cache is emptied, the plan and every fetch step come from the registry cache), a Nix file
//   (--load, and the registry cache round trip: neither nix nor a copy step runs again), --platform (the build's own is taken,
//   another refused in one line), and a plain Dockerfile whose FROM is the frontend's image.
// Dockerd 20.10 has no buildx: on that release this file defines no test (frontend.test.ts covers its Engine API
// and `DOCKER_BUILDKIT=1 docker build` paths).
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  fetchSteps,
  loadFrontendImage,
  loadNixToolchainImage,
  nixFileFor,
  startBinaryCacheServer,
  type BinaryCacheServer,
} from "../../support/buildkit.js";
import { buildFixtures } from "../../support/fixtures.js";
import { startDockerd, startRegistry, type Dockerd, type Registry } from "../../support/daemons.js";
import { dockerUnderTest } from "../../support/docker-release.js";
import { startNixociServe, type ServeProcess } from "../../support/serve.js";
import { nixociOk } from "../../support/cli.js";

const FRONTEND = "nixoci-frontend:test";
const release = dockerUnderTest();

/** The vertices of a `--progress=rawjson` build's output: the last state of each, by digest. */
function rawVertices(stderr: string): Array<{ name: string; cached: boolean }> {
  const byDigest = new Map<string, { name: string; cached: boolean }>();
  for (const line of stderr.split("\n")) {
    if (!line.startsWith("{")) continue;
    let j: { vertexes?: Array<{ digest: string; name?: string; cached?: boolean }> };
    try {
      j = JSON.parse(line) as typeof j;
    } catch {
      continue;
    }
    for (const v of j.vertexes ?? []) {
      const before = byDigest.get(v.digest);
      byDigest.set(v.digest, {
        name: v.name ?? before?.name ?? "",
        cached: v.cached ?? before?.cached ?? false,
      });
    }
  }
  return [...byDigest.values()];
}

if (release.buildxPluginDir)
  describe(`docker buildx build with nixoci's frontend (dockerd ${release.series}, containerd image store)`, () => {
    const fx = buildFixtures();
    let d: Dockerd;
    let dir: string;
    let cache: BinaryCacheServer;
    let serve: ServeProcess;
    let registry: Registry;
    let ctx: string;

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), "nixoci-buildx-test-"));
      d = await startDockerd({ containerdStore: true });
      loadFrontendImage(d, FRONTEND, dir);
      cache = await startBinaryCacheServer(dir, "buildx-test");
      serve = await startNixociServe(join(dir, "serve-storage"));
      registry = await startRegistry();
      ctx = join(dir, "spec");
      mkdirSync(ctx);
      writeFileSync(
        join(ctx, "nixoci.yaml"),
        [
          `# syntax=${FRONTEND}`,
          `packages: [${JSON.stringify(fx.hello)}]`,
          `entrypoint: [${JSON.stringify(`${fx.hello}/bin/hello`)}]`,
          `substituters: [${JSON.stringify(cache.url)}]`,
          `trustedPublicKeys: [${JSON.stringify(cache.publicKey)}]`,
          "",
        ].join("\n"),
      );
    });

    after(async () => {
      cache?.stop();
      serve?.proc.kill("SIGTERM");
      await serve?.exited;
      await registry?.stop();
      await d?.stop();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    /** `docker buildx build --network host -f FILE ARGS CONTEXT` with raw progress. */
    const buildx = (file: string, context: string, args: string[]) =>
      d.buildx(["build", "--progress=rawjson", "--network", "host", "-f", file, ...args, context]);
    /** The spec's build. */
    const build = (args: string[]) => buildx(join(ctx, "nixoci.yaml"), ctx, args);
    const runImage = (ref: string): string => d.docker(["run", "--rm", "--network", "none", ref]).toString();
    /**
     * Empties the daemon's build cache (cache mounts too), then builds again `--cache-from` the registry cache
     * `cacheRef` into `tag`: the build's vertices, and a listing of them for messages.
     */
    const buildFromEmptiedBuilder = (
      run: (args: string[]) => { stderr: string },
      cacheRef: string,
      tag: string,
    ) => {
      d.docker(["builder", "prune", "-af"]);
      const r = run([
        "--cache-from",
        `type=registry,ref=${cacheRef},registry.insecure=true`,
        "--load",
        "-t",
        tag,
      ]);
      const vertices = rawVertices(r.stderr);
      return { vertices, listing: vertices.map((v) => `${v.name}${v.cached ? " (cached)" : ""}`).join(", ") };
    };

    test("--load (type=docker): the image runs", () => {
      build(["--load", "-t", "buildx:load"]);
      assert.match(runImage("buildx:load"), /Hello from nixoci!/);
    });

    test("docker load of `nixoci build --tag NAME:TAG -o oci-archive:` names the image by it (io.containerd.image.name)", () => {
      const archive = join(dir, "named.oci.tar");
      nixociOk([
        "build",
        "-q",
        "--entrypoint",
        "/bin/hello",
        "--tag",
        "nixoci/loaded-archive:v2",
        fx.hello,
        "-o",
        `oci-archive:${archive}`,
      ]);
      assert.match(d.docker(["load", "-i", archive]).toString(), /Loaded image: nixoci\/loaded-archive:v2/);
      assert.equal(runImage("nixoci/loaded-archive:v2").trim(), "Hello from nixoci!");
    });

    test("--output type=oci,dest=FILE: an OCI archive skopeo reads, with a layer per planned layer", () => {
      const file = join(dir, "image.oci.tar");
      build(["--output", `type=oci,dest=${file}`]);
      const inspect = JSON.parse(
        execFileSync("skopeo", ["inspect", "--raw", `oci-archive:${file}`]).toString(),
      ) as { manifests?: Array<{ digest: string }>; layers?: unknown[] };
      const manifest = inspect.manifests
        ? (JSON.parse(
            execFileSync("skopeo", [
              "inspect",
              "--raw",
              `oci-archive:${file}@${inspect.manifests[0].digest}`,
            ]).toString(),
          ) as { layers: unknown[] })
        : (inspect as { layers: unknown[] });
      const loaded = JSON.parse(d.docker(["image", "inspect", "buildx:load"]).toString()) as Array<{
        RootFS: { Layers: string[] };
      }>;
      assert.equal(manifest.layers.length, loaded[0].RootFS.Layers.length);
    });

    for (const target of ["nixoci serve", "docker-registry"] as const)
      test(`--output type=image,push=true to ${target}: pulled back, it runs`, () => {
        const host = target === "nixoci serve" ? serve.host : registry.host;
        const ref = `${host}/buildx/hello:pushed`;
        build(["--output", `type=image,name=${ref},push=true,registry.insecure=true`]);
        const raw = JSON.parse(
          execFileSync("skopeo", ["inspect", "--tls-verify=false", `docker://${ref}`]).toString(),
        ) as { Layers: string[] };
        assert.ok(raw.Layers.length >= 2, `${raw.Layers.length} layers`);
      });

    for (const target of ["nixoci serve", "docker-registry"] as const)
      test(`--cache-to/--cache-from type=registry through ${target}: an emptied builder plans nothing again, the same layers`, () => {
        const cacheRef = `${target === "nixoci serve" ? serve.host : registry.host}/buildx/cache:hello`;
        build([
          "--cache-to",
          `type=registry,ref=${cacheRef},mode=max,registry.insecure=true`,
          "--output",
          "type=cacheonly",
        ]);
        // The cache is an OCI image manifest whose config is BuildKit's cache configuration (BuildKit of Docker
        // 28), or an index listing that configuration and the layers as its "manifests" (older BuildKit, 26.1).
        const raw = JSON.parse(
          execFileSync("skopeo", [
            "inspect",
            "--raw",
            "--tls-verify=false",
            `docker://${cacheRef}`,
          ]).toString(),
        ) as {
          config?: { mediaType: string };
          layers?: Array<{ mediaType: string }>;
          manifests?: Array<{ mediaType: string }>;
        };
        const parts = raw.manifests ?? [...(raw.config ? [raw.config] : []), ...(raw.layers ?? [])];
        assert.ok(
          parts.some((p) => p.mediaType === "application/vnd.buildkit.cacheconfig.v0"),
          JSON.stringify(raw),
        );
        assert.ok(parts.length >= 4, `${parts.length} parts`);
        // The plan step, with its choice of fetch steps, and every fetch step come from the registry cache
        // (26.1's BuildKit finds the whole result there and lists no step at all; 28.5's lists them cached: its
        // steps run on the frontend image's lower layers, see stepImage in frontend.ts).
        const { vertices, listing } = buildFromEmptiedBuilder(build, cacheRef, "buildx:cached");
        const plan = vertices.filter((v) => v.name.startsWith("nixoci: plan"));
        assert.ok(
          plan.every((v) => v.cached),
          `the plan step ran again: ${listing}`,
        );
        assert.deepEqual(
          fetchSteps(vertices).filter((v) => !v.cached),
          [],
          `a fetch step ran again: ${listing}`,
        );
        const layers = (tag: string) =>
          (
            JSON.parse(d.docker(["image", "inspect", tag]).toString()) as Array<{
              RootFS: { Layers: string[] };
            }>
          )[0].RootFS.Layers;
        assert.deepEqual(
          layers("buildx:cached"),
          layers("buildx:load"),
          "the same layers as a build from scratch",
        );
        assert.match(runImage("buildx:cached"), /Hello from nixoci!/);
      });

    test("a Nix file: --load runs it; through a --cache-to/--cache-from registry cache an emptied builder runs neither nix nor a copy step", () => {
      const toolchain = "nixoci-nix:buildx";
      loadNixToolchainImage(d, toolchain);
      const nixCtx = join(dir, "nix");
      mkdirSync(nixCtx);
      writeFileSync(
        join(nixCtx, "default.nix"),
        nixFileFor(
          FRONTEND,
          [
            `  hello = sh { name = "hello-buildx"; script = "mkdir -p $out/bin && printf '#!\${busybox}/bin/sh\\necho Hello from buildx and Nix\\n' > $out/bin/hello && chmod +x $out/bin/hello"; };`,
            "in { inherit hello busybox; }",
          ].join("\n"),
        ),
      );
      const nixBuild = (args: string[]) =>
        buildx(join(nixCtx, "default.nix"), nixCtx, [
          "--build-arg",
          `toolchain=${toolchain}`,
          "--build-arg",
          "attr=hello",
          "--build-arg",
          'entrypoint=["/bin/hello"]',
          ...args,
        ]);
      const cacheRef = `${serve.host}/buildx/cache:nix`;
      nixBuild([
        "--cache-to",
        `type=registry,ref=${cacheRef},mode=max,registry.insecure=true`,
        "--load",
        "-t",
        "buildx:nix",
      ]);
      assert.match(runImage("buildx:nix"), /Hello from buildx and Nix/);
      const { vertices, listing } = buildFromEmptiedBuilder(nixBuild, cacheRef, "buildx:nix-cached");
      const steps = vertices.filter((v) => /^(nix-build|nixoci: (plan|fetch))/.test(v.name));
      // 26.1's BuildKit finds the whole result in the cache and lists no step; 28.5's lists each one cached.
      assert.deepEqual(
        steps.filter((v) => !v.cached).map((v) => v.name),
        [],
        `ran again: ${listing}`,
      );
      assert.match(runImage("buildx:nix-cached"), /Hello from buildx and Nix/);
    });

    test("--platform: the build's own is taken; another fails in one line naming what the build makes", () => {
      const arch = process.arch === "x64" ? "amd64" : process.arch;
      build(["--platform", `linux/${arch}`, "--load", "-t", "buildx:platform"]);
      const other = arch === "amd64" ? "arm64" : "amd64";
      assert.throws(
        () => build(["--platform", `linux/${other}`, "--load", "-t", "buildx:other"]),
        new RegExp(`--platform linux/${other}: this build makes linux/${arch} images only`),
      );
    });

    test("a Dockerfile FROM the frontend's image builds and runs (multi-stage use)", () => {
      build(["--load", "-t", "buildx:base"]);
      const c = join(dir, "dockerfile");
      mkdirSync(c);
      writeFileSync(join(c, "extra.txt"), "added on top\n");
      writeFileSync(
        join(c, "Dockerfile"),
        "FROM buildx:base AS base\nFROM base\nCOPY extra.txt /extra.txt\n",
      );
      d.buildx(["build", "--progress=plain", "--load", "-t", "buildx:derived", c]);
      assert.match(runImage("buildx:derived"), /Hello from nixoci!/);
      const layers = (tag: string) =>
        (
          JSON.parse(d.docker(["image", "inspect", tag]).toString()) as Array<{
            RootFS: { Layers: string[] };
          }>
        )[0].RootFS.Layers;
      assert.deepEqual(
        layers("buildx:derived").slice(0, -1),
        layers("buildx:base"),
        "the base's layers, one more",
      );
    });
  });
