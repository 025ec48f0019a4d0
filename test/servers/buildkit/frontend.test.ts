// nixoci's BuildKit frontend with the dockerd NIXOCI_DOCKER selects (Debian's 20.10 with BuildKit v0.8 by default;
// 26.1 and 28.5 in the Docker matrix, 28.5 with the containerd image store too), driven through the Engine API
// (`POST /build?version=2` with a tar context; the CLI has no buildx). The frontend image is built by nixoci from
// this machine's node + nixoci (scripts/frontend-image.mjs) and loaded into dockerd; a spec whose first line is
// `# syntax=nixoci-frontend:test` then builds an image whose store paths come from an HTTP binary cache
// (`nixoci serve` over /nix/store, signed) reached through the build's host network (`networkmode=host`).
// Checked: the image runs and prints what it should, it has one layer per planned layer plus the customisation
// layer, a rebuild with nothing changed is fully cached, and bad specs fail the build with a clear message.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  createReadStream,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { once } from "node:events";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  dockerBuild,
  fetchedLayerNumbers,
  fetchSteps,
  loadFrontendImage,
  loadNixToolchainImage,
  startBinaryCacheServer,
  type BinaryCacheServer,
  nixFileFor,
} from "../../support/buildkit.js";
import {
  buildFixtures,
  GC_ROOTS_DIR,
  generateCacheKey,
  makeNixCache,
  PACKAGES_NIX,
} from "../../support/fixtures.js";
import { nixociOk, ROOT } from "../../support/cli.js";
import { DOCKER_CLI, freePort, startDockerd, startRegistry, type Dockerd } from "../../support/daemons.js";
import { dockerUnderTest } from "../../support/docker-release.js";

const FRONTEND = "nixoci-frontend:test";

/** The fixtures' hello with another greeting (greeting and hello change, busybox does not), rooted as `link`. */
function helloGreeting(text: string, link: string): string {
  return execFileSync("nix-build", [
    PACKAGES_NIX,
    "-A",
    "hello",
    "--argstr",
    "greetingText",
    text,
    "--out-link",
    join(GC_ROOTS_DIR, link),
  ])
    .toString()
    .trim();
}

/**
 * What each layer of an image archive (`docker save`, or nixoci's docker-archive:) holds, whatever its tar
 * headers' style: its `tar -tv` listing with numeric owners and full times, and a hash of all its file contents
 * in order. The archive is unpacked into `work` (its manifest.json names the layers).
 */
function layerContents(file: string, work: string): Array<{ listing: string; contents: string }> {
  mkdirSync(work, { recursive: true });
  execFileSync("tar", ["-xf", file, "-C", work]);
  const manifest = JSON.parse(readFileSync(join(work, "manifest.json"), "utf8")) as Array<{
    Layers: string[];
  }>;
  return manifest[0].Layers.map((layer) => ({
    listing: execFileSync("tar", ["--full-time", "--numeric-owner", "-tvf", join(work, layer)]).toString(),
    contents: createHash("sha256")
      .update(execFileSync("tar", ["-xOf", join(work, layer)], { maxBuffer: 1 << 30 }))
      .digest("hex"),
  }));
}

/**
 * The stores each release's suite runs with: the classic image store always; the containerd image store on 28.5
 * too, where BuildKit offers MergeOp (26.1's containerd store cannot build from a tar context sent in the
 * request body, moby/moby#47717, which the Engine API path needs).
 */
const RELEASE = dockerUnderTest();
const STORES: Array<"classic" | "containerd"> =
  RELEASE.series === "28.5" ? ["classic", "containerd"] : ["classic"];

for (const store of STORES)
  describe(`nixoci frontend through dockerd ${RELEASE.series}'s BuildKit (${store} image store)`, () => {
    let d: Dockerd;
    let dir: string;
    let cache: BinaryCacheServer | undefined;
    let cacheUrl: string;
    let publicKey: string;
    let fx: ReturnType<typeof buildFixtures>;

    before(async () => {
      fx = buildFixtures();
      dir = mkdtempSync(join(tmpdir(), "nixoci-frontend-test-"));
      d = await startDockerd({ containerdStore: store === "containerd" });
      // The frontend image, built by nixoci, loaded into dockerd; a signed HTTP binary cache of this store.
      loadFrontendImage(d, FRONTEND, dir);
      cache = await startBinaryCacheServer(dir, "frontend-test");
      cacheUrl = cache.url;
      publicKey = cache.publicKey;
    });

    after(async () => {
      cache?.stop();
      await d?.stop();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    /** `DOCKER_BUILDKIT=1 docker build --network host ARGS` with the docker 20.10 CLI against this dockerd. */
    const cliBuild = (args: string[]) =>
      spawnSync(DOCKER_CLI, ["-H", `unix://${d.host}`, "build", "--network", "host", ...args], {
        env: { ...process.env, DOCKER_BUILDKIT: "1", DOCKER_CONFIG: join(dir, "docker-cli") },
        timeout: 300_000,
      });

    function context(name: string, spec: string): string {
      const c = join(dir, name);
      mkdirSync(c, { recursive: true });
      writeFileSync(join(c, "nixoci.yaml"), `# syntax=${FRONTEND}\n${spec}`);
      return c;
    }

    const helloSpec = (): string =>
      [
        `packages: [${JSON.stringify(fx.hello)}]`,
        `entrypoint: [${JSON.stringify(`${fx.hello}/bin/hello`)}]`,
        `substituters: [${JSON.stringify(cacheUrl)}]`,
        `trustedPublicKeys: [${JSON.stringify(publicKey)}]`,
        "",
      ].join("\n");

    test("a spec builds an image that runs; one layer per planned layer; a rebuild is cached", async () => {
      const ctx = context("hello", helloSpec());
      const r = await dockerBuild(d, ctx, { dockerfile: "nixoci.yaml", t: "nixtest:1", networkmode: "host" });
      assert.equal(r.error, undefined, `${r.error}\n${r.log.slice(-3000)}\n${d.log().slice(-4000)}`);
      assert.ok(r.imageId, r.log);
      const out = d.docker(["run", "--rm", "--network", "none", "nixtest:1"]).toString();
      assert.match(out, /Hello from nixoci!/);
      const inspect = JSON.parse(d.docker(["image", "inspect", "nixtest:1"]).toString()) as Array<{
        RootFS: { Layers: string[] };
      }>;
      const closure = execFileSync("nix-store", ["-qR", fx.hello]).toString().trim().split("\n");
      const layers = inspect[0].RootFS.Layers.length;
      assert.ok(layers >= 2 && layers <= closure.length + 1, `${layers} layers for ${closure.length} paths`);
      // The cache has NAR listings: the plan step made the customisation layer, no step waited for the fetches.
      assert.ok(
        ![...r.vertices.values()].some((v) => v.name === "nixoci: customisation layer"),
        "no customisation step",
      );
      // Every planned layer is made by exactly one fetch step (a few layers to a step).
      const numbers = Array.from({ length: layers - 1 }, (_, i) => i + 1);
      assert.deepEqual(fetchedLayerNumbers(r.vertices.values()), numbers);
      assert.ok(fetchSteps(r.vertices.values()).length <= layers - 1);
      // Merged where BuildKit can (the containerd image store), stacked by copies elsewhere.
      assert.match(
        d.log(),
        store === "containerd"
          ? /nixoci frontend: \d+ store layers in \d+ fetch steps, merged/
          : /nixoci frontend: \d+ store layers in \d+ fetch steps, each copied onto the one below/,
      );
      // `nixoci build` of the same spec makes the same layers: the same entries (names, types, permissions,
      // owners, sizes, times, link targets) and contents, in the same order, byte for byte (the same diff_ids).
      // Docker 23+ writes every layer as containerd does, with permission bits only and no owner names, on both
      // image stores: nixoci's default. dockerd 20.10's BuildKit v0.8 writes Go 1.8-style headers (file-type
      // bits in the mode, owner names root): `--tar-format docker20`.
      const archive = join(dir, "nixoci-archive.tar");
      const summary = JSON.parse(
        nixociOk([
          "build",
          "--spec",
          join(ctx, "nixoci.yaml"),
          ...(RELEASE.series === "20.10" ? ["--tar-format", "docker20"] : []),
          "-q",
          "--json",
          "-o",
          `docker-archive:${archive}:x`,
        ]).text,
      ) as { layers: Array<{ diffId: string }> };
      d.docker(["save", "-o", join(dir, "frontend-archive.tar"), "nixtest:1"]);
      assert.deepEqual(
        layerContents(join(dir, "frontend-archive.tar"), join(dir, "unpacked-frontend")),
        layerContents(archive, join(dir, "unpacked-nixoci")),
      );
      assert.deepEqual(
        inspect[0].RootFS.Layers,
        summary.layers.map((l) => l.diffId),
      );

      const again = await dockerBuild(d, ctx, {
        dockerfile: "nixoci.yaml",
        t: "nixtest:2",
        networkmode: "host",
      });
      assert.equal(again.error, undefined, again.error);
      const steps = [...again.vertices.values()].filter((v) => v.name.startsWith("nixoci: fetch"));
      assert.ok(steps.length >= 1);
      assert.ok(
        steps.every((v) => v.cached),
        `fetch steps re-ran: ${steps.filter((v) => !v.cached).map((v) => v.name)}`,
      );
    });

    test("a cache without NAR listings: the customisation layer is made by a step over the fetched layers, the same bytes", async () => {
      // A cache as `nix copy --to file://` writes it (no .ls files), served as static files: how many caches are.
      const key = generateCacheKey("frontend-static", join(dir, "static-keys"));
      const closure = execFileSync("nix-store", ["-qR", fx.hello]).toString().trim().split("\n");
      const cacheDir = join(dir, "static-cache");
      makeNixCache({ paths: closure, dir: cacheDir, compression: "xz", secretKeyFile: key.secretKeyFile });
      assert.ok(!readdirSync(cacheDir).some((n) => n.endsWith(".ls")), "Nix wrote no listings");
      const server = createServer((req, res) => {
        const name = (req.url ?? "/").slice(1);
        const file = join(cacheDir, name);
        if (!/^[A-Za-z0-9._/-]+$/.test(name) || name.includes("..") || !existsSync(file)) {
          res.writeHead(404).end();
          return;
        }
        res.writeHead(200, { "Content-Length": statSync(file).size });
        createReadStream(file).pipe(res);
      });
      server.listen(0, "127.0.0.1");
      await once(server, "listening");
      try {
        const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
        const spec = helloSpec().replace(cacheUrl, url).replace(publicKey, key.publicKey);
        const ctx = context("no-listings", spec);
        const r = await dockerBuild(d, ctx, {
          dockerfile: "nixoci.yaml",
          t: "nixtest:nols",
          networkmode: "host",
        });
        assert.equal(r.error, undefined, `${r.error}\n${r.log.slice(-3000)}`);
        const custom = [...r.vertices.values()].filter((v) => v.name === "nixoci: customisation layer");
        assert.equal(custom.length, 1, "the customisation step ran");
        assert.match(
          d.docker(["run", "--rm", "--network", "none", "nixtest:nols"]).toString(),
          /Hello from nixoci!/,
        );
        // Its layers are the listing-made image's (the first test's), byte for byte.
        const layersOf = (tag: string) =>
          (
            JSON.parse(d.docker(["image", "inspect", tag]).toString()) as Array<{
              RootFS: { Layers: string[] };
            }>
          )[0].RootFS.Layers;
        assert.deepEqual(layersOf("nixtest:nols"), layersOf("nixtest:1"));
      } finally {
        server.close();
        server.closeAllConnections();
      }
    });

    test("`DOCKER_BUILDKIT=1 docker build` (the CLI's session: local context and build file) builds a spec", () => {
      const ctx = context("cli", helloSpec());
      const r = cliBuild(["-f", join(ctx, "nixoci.yaml"), "-t", "nixtest:cli", ctx]);
      assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
      assert.match(
        d.docker(["run", "--rm", "--network", "none", "nixtest:cli"]).toString(),
        /Hello from nixoci!/,
      );
    });

    test("after one package changed, only the fetch steps of the changed layers run again", async () => {
      // The same packages with another greeting: greeting and hello change, busybox does not.
      const changed = helloGreeting("Changed by the frontend test", "frontend-changed-hello");
      const ctx = context("changed", helloSpec().split(fx.hello).join(changed));
      const r = await dockerBuild(d, ctx, {
        dockerfile: "nixoci.yaml",
        t: "nixtest:changed",
        networkmode: "host",
      });
      assert.equal(r.error, undefined, `${r.error}\n${r.log.slice(-3000)}`);
      const fetches = [...r.vertices.values()].filter((v) => v.name.startsWith("nixoci: fetch layer"));
      const executed = fetches.filter((v) => !v.cached).map((v) => v.name);
      const cached = fetches.filter((v) => v.cached).map((v) => v.name);
      // busybox's layer is cached; the layers of the two changed paths are fetched again.
      assert.ok(
        cached.some((n) => n.includes("busybox")),
        `cached: ${cached.join(", ")}`,
      );
      assert.ok(executed.length >= 1 && executed.length <= 2, `executed: ${executed.join(", ")}`);
      assert.ok(
        executed.every((n) => /greeting|hello/.test(n)),
        `executed: ${executed.join(", ")}`,
      );
      // The plan step remembered the closure's narinfos and listings from earlier builds: it asked the cache for
      // the changed paths' only (a narinfo and a listing each).
      const asked = /narinfos and listings: (\d+) remembered, (\d+) asked for/.exec(r.log);
      assert.ok(asked, r.log.slice(-3000));
      assert.ok(Number(asked[1]) >= 2 && Number(asked[2]) <= 4, asked[0]);
      const out = d.docker(["run", "--rm", "--network", "none", "nixtest:changed"]).toString();
      assert.match(out, /Changed by the frontend test/);
    });

    test("fetch-batches=1: a cold build makes every layer in one step; after a change that step is repeated from the cache and one new step makes exactly the changed layers", async () => {
      const imageLayers = (tag: string): string[] =>
        (
          JSON.parse(d.docker(["image", "inspect", tag]).toString()) as Array<{
            RootFS: { Layers: string[] };
          }>
        )[0].RootFS.Layers;
      // An emptied builder: no fetch step, and no ledger of them, from the tests above.
      d.docker(["builder", "prune", "-af"]);
      const ctx = context("batched", helloSpec());
      const params = {
        dockerfile: "nixoci.yaml",
        networkmode: "host",
        buildargs: JSON.stringify({ "fetch-batches": "1" }),
      };
      const r = await dockerBuild(d, ctx, { ...params, t: "nixtest:batched" });
      assert.equal(r.error, undefined, `${r.error}\n${r.log.slice(-3000)}`);
      const fetches = fetchSteps(r.vertices.values());
      assert.equal(fetches.length, 1, fetches.map((v) => v.name).join(", "));
      assert.ok(!fetches[0].cached);
      const layers = imageLayers("nixtest:batched");
      assert.ok(layers.length >= 3, `${layers.length} layers`);
      assert.deepEqual(layers, imageLayers("nixtest:1"), "the same layers as with other batches");
      assert.match(
        d.docker(["run", "--rm", "--network", "none", "nixtest:batched"]).toString(),
        /Hello from nixoci!/,
      );

      // Another greeting: greeting and hello change, busybox does not. The plan repeats the recorded step
      // (BuildKit has it: a cache hit, though it also made the old greeting and hello) for busybox's layer, and
      // one new step makes the changed layers and nothing else.
      const changed = helloGreeting("Changed in a batch", "frontend-batched-hello");
      const ctx2 = context("batched-changed", helloSpec().split(fx.hello).join(changed));
      const again = await dockerBuild(d, ctx2, { ...params, t: "nixtest:batched-changed" });
      assert.equal(again.error, undefined, `${again.error}\n${again.log.slice(-3000)}`);
      const steps = fetchSteps(again.vertices.values());
      const executed = steps.filter((v) => !v.cached).map((v) => v.name);
      const cached = steps.filter((v) => v.cached).map((v) => v.name);
      assert.equal(executed.length, 1, `executed: ${executed.join(", ")}`);
      assert.match(executed[0], /greeting|hello/);
      assert.doesNotMatch(executed[0], /busybox/);
      assert.equal(cached.length, 1, `cached: ${cached.join(", ")}`);
      assert.match(cached[0], /busybox.*\(a step of an earlier build, with \d+ more\)/);
      const after = imageLayers("nixtest:batched-changed");
      assert.equal(after.length, layers.length);
      assert.equal(after.filter((l) => layers.includes(l)).length, 1, "busybox's layer is the same");
      assert.match(
        d.docker(["run", "--rm", "--network", "none", "nixtest:batched-changed"]).toString(),
        /Changed in a batch/,
      );
    });

    describe("Nix files, built with nix inside BuildKit", () => {
      const TOOLCHAIN = "nixoci-nix:test";
      const nixFile = (body: string): string => nixFileFor(FRONTEND, body);
      const helloNix = nixFile(
        [
          `  hello = sh { name = "hello-nix"; script = "mkdir -p $out/bin && printf '#!\${busybox}/bin/sh\\necho Hello from a Nix file\\n' > $out/bin/hello && chmod +x $out/bin/hello"; };`,
          "in { inherit hello busybox; }",
        ].join("\n"),
      );
      const nixBuild = (name: string, text: string, args: Record<string, string>) => {
        const c = join(dir, name);
        mkdirSync(c, { recursive: true });
        writeFileSync(join(c, "default.nix"), text);
        return dockerBuild(d, c, {
          dockerfile: "default.nix",
          t: `nixfile:${name}`,
          networkmode: "host",
          buildargs: JSON.stringify({ toolchain: TOOLCHAIN, ...args }),
        });
      };

      before(() => {
        loadNixToolchainImage(d, TOOLCHAIN);
      });

      test("a Nix file builds an image that runs; a rebuild runs nothing again", async () => {
        const r = await nixBuild("hello", helloNix, { attr: "hello", entrypoint: '["/bin/hello"]' });
        assert.equal(r.error, undefined, `${r.error}\n${r.log.slice(-3000)}`);
        const out = d.docker(["run", "--rm", "--network", "none", "nixfile:hello"]).toString();
        assert.match(out, /Hello from a Nix file/);
        const layers = (
          JSON.parse(d.docker(["image", "inspect", "nixfile:hello"]).toString()) as Array<{
            RootFS: { Layers: string[] };
          }>
        )[0].RootFS.Layers;
        assert.deepEqual(
          fetchedLayerNumbers(r.vertices.values()),
          Array.from({ length: layers.length - 1 }, (_, i) => i + 1),
          "every store layer made by one copy step (the customisation layer on top)",
        );

        const again = await nixBuild("hello", helloNix, { attr: "hello", entrypoint: '["/bin/hello"]' });
        assert.equal(again.error, undefined, again.error);
        const steps = [...again.vertices.values()].filter((v) => /^(nix-build|nixoci: fetch)/.test(v.name));
        assert.ok(steps.length >= 2, steps.map((v) => v.name).join(", "));
        assert.ok(
          steps.every((v) => v.cached),
          `re-ran: ${steps
            .filter((v) => !v.cached)
            .map((v) => v.name)
            .join(", ")}`,
        );
      });

      test("after the Nix file changed one package, only that package's layer is copied again", async () => {
        const changed = helloNix.replace("Hello from a Nix file", "Hello from a changed Nix file");
        const r = await nixBuild("hello", changed, { attr: "hello", entrypoint: '["/bin/hello"]' });
        assert.equal(r.error, undefined, `${r.error}\n${r.log.slice(-3000)}`);
        const fetches = [...r.vertices.values()].filter((v) => v.name.startsWith("nixoci: fetch layer"));
        const executed = fetches.filter((v) => !v.cached).map((v) => v.name);
        assert.ok(
          fetches.some((v) => v.cached && v.name.includes("busybox")),
          fetches.map((v) => v.name).join(", "),
        );
        assert.deepEqual(executed.length, 1, `executed: ${executed.join(", ")}`);
        assert.match(executed[0], /hello-nix/);
        assert.match(
          d.docker(["run", "--rm", "--network", "none", "nixfile:hello"]).toString(),
          /Hello from a changed Nix file/,
        );
      });

      test("`DOCKER_BUILDKIT=1 docker build -f default.nix --build-arg ...` builds a Nix file", () => {
        const c = join(dir, "cli-nix");
        mkdirSync(c, { recursive: true });
        writeFileSync(join(c, "default.nix"), helloNix);
        const args = ["toolchain=" + TOOLCHAIN, "attr=hello", "entrypoint=/bin/hello"].flatMap((a) => [
          "--build-arg",
          a,
        ]);
        const r = cliBuild(["-f", join(c, "default.nix"), ...args, "-t", "nixfile:cli", c]);
        assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
        assert.match(
          d.docker(["run", "--rm", "--network", "none", "nixfile:cli"]).toString(),
          /Hello from a Nix file/,
        );
      });

      test("a flake.nix builds its packages.<system>.<attr>", async () => {
        const c = join(dir, "flake");
        mkdirSync(c, { recursive: true });
        writeFileSync(
          join(c, "flake.nix"),
          [
            `# syntax=${FRONTEND}`,
            "{",
            "  outputs = { self }: let",
            '    sh = args: derivation { name = args.name; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" args.script ]; };',
            '    busybox = sh { name = "busybox"; script = "mkdir -p $out/bin && cp /bin/busybox $out/bin/busybox && ln -s busybox $out/bin/sh"; };',
            `    hello = sh { name = "hello-flake"; script = "mkdir -p $out/bin && printf '#!\${busybox}/bin/sh\\necho Hello from a flake\\n' > $out/bin/hello && chmod +x $out/bin/hello"; };`,
            "  in { packages.x86_64-linux.default = hello; };",
            "}",
            "",
          ].join("\n"),
        );
        const r = await dockerBuild(d, c, {
          dockerfile: "flake.nix",
          t: "nixfile:flake",
          networkmode: "host",
          buildargs: JSON.stringify({ toolchain: TOOLCHAIN, entrypoint: "/bin/hello" }),
        });
        assert.equal(r.error, undefined, `${r.error}\n${r.log.slice(-3000)}`);
        const out = d.docker(["run", "--rm", "--network", "none", "nixfile:flake"]).toString();
        assert.match(out, /Hello from a flake/);
      });

      test("build args substituters and trusted-public-keys: nix takes a path from the cache instead of building it", async () => {
        // A derivation only this machine can build (its builder needs a file the toolchain image lacks; busybox
        // as the builder, as on this machine's Nix, which gives builds no PATH): built here, the binary cache (of
        // this store) has it; in BuildKit, nix gets it only by substituting.
        // Where Nix's build users (nixbld*, not root) can see it.
        const markerDir = mkdtempSync(join(tmpdir(), "nixoci-built-here-"));
        chmodSync(markerDir, 0o755);
        const marker = join(markerDir, "built-here-only");
        writeFileSync(marker, "");
        const text = nixFile(
          [
            `  cached = derivation { name = "cached-only"; system = "x86_64-linux"; builder = "/bin/busybox"; args = [ "sh" "-c" "test -e ${marker} && /bin/busybox mkdir -p $out/bin && /bin/busybox cp /bin/busybox $out/bin/busybox" ]; };`,
            "in { inherit cached; }",
          ].join("\n"),
        );
        const file = join(dir, "substituted.nix");
        writeFileSync(file, text);
        execFileSync(
          "nix-build",
          [file, "-A", "cached", "--out-link", join(GC_ROOTS_DIR, "frontend-substituted")],
          {
            stdio: ["ignore", "ignore", "inherit"],
          },
        );
        const built = await nixBuild("substituted", text, { attr: "cached" });
        assert.ok(built.error, "without a substituter the toolchain's nix builds it, and its builder fails");
        const r = await nixBuild("substituted", text, {
          attr: "cached",
          entrypoint: '["/bin/busybox", "echo", "Hello from the cache"]',
          substituters: cacheUrl,
          "trusted-public-keys": publicKey,
        });
        assert.equal(r.error, undefined, `${r.error}\n${r.log.slice(-3000)}`);
        assert.match(r.log, /copying path '\/nix\/store\/[0-9a-z]{32}-cached-only' from 'http:/);
        const out = d.docker(["run", "--rm", "--network", "none", "nixfile:substituted"]).toString();
        assert.match(out, /Hello from the cache/);
        const smuggled = await nixBuild("substituted", text, {
          attr: "cached",
          substituters: `${cacheUrl}\nsandbox = false`,
        });
        assert.match(
          smuggled.error ?? "",
          /build arg substituters: control characters \(a line break\?\) are not allowed/,
        );
        rmSync(markerDir, { recursive: true, force: true });
      });

      test("an unknown attribute and an evaluation error fail the build with nix's message", async () => {
        const unknown = await nixBuild("unknown", helloNix, { attr: "nope" });
        assert.ok(unknown.error, "the build failed");
        assert.match(unknown.error + unknown.log, /attribute 'nope'/);
        assert.match(unknown.error, /the nix-build step failed with exit code 1; its output above says why$/);
        const broken = await nixBuild("broken", nixFile("  x = ;\nin { }"), {});
        assert.ok(broken.error, "the build failed");
        assert.match(broken.error + broken.log, /default\.nix:\d+/);
      });
    });

    test("the frontend image also runs from a registry (# syntax=HOST/NAME:TAG)", async () => {
      const registry = await startRegistry();
      try {
        const ref = `${registry.host}/nixoci-frontend:pushed`;
        execFileSync(process.execPath, [join(ROOT, "scripts/frontend-image.mjs"), "-o", `docker://${ref}`], {
          stdio: ["ignore", "ignore", "inherit"],
        });
        const c = join(dir, "from-registry");
        mkdirSync(c, { recursive: true });
        writeFileSync(join(c, "nixoci.yaml"), `# syntax=${ref}\n${helloSpec()}`);
        const r = await dockerBuild(d, c, {
          dockerfile: "nixoci.yaml",
          t: "nixtest:registry",
          networkmode: "host",
        });
        assert.equal(r.error, undefined, `${r.error}\n${r.log.slice(-3000)}`);
        assert.match(
          d.docker(["run", "--rm", "--network", "none", "nixtest:registry"]).toString(),
          /Hello from nixoci!/,
        );
        assert.match(
          registry.log(),
          /(GET|HEAD) \/v2\/nixoci-frontend\/manifests\/pushed/,
          registry
            .log()
            .split("\n")
            .filter((l) => l.includes("/v2/"))
            .join("\n"),
        );
      } finally {
        await registry.stop();
      }
    });

    test("a store path the caches do not have fails the build naming it", async () => {
      const missing = `/nix/store/${"0".repeat(32)}-not-in-any-cache`;
      const ctx = context(
        "missing",
        helloSpec().replace(`packages: [${JSON.stringify(fx.hello)}]`, `packages: ["${missing}"]`),
      );
      const r = await dockerBuild(d, ctx, {
        dockerfile: "nixoci.yaml",
        t: "nixtest:missing",
        networkmode: "host",
      });
      assert.ok(r.error, "the build failed");
      assert.match(
        r.log,
        new RegExp(missing.replace(/[/.]/g, "\\$&")),
        "the plan step's output names the path",
      );
      // The build's last line names the step, not its command line of every path and cache option.
      assert.match(
        r.error,
        /the plan step \(nixoci frontend plan\) failed with exit code 1; its output above says why$/,
      );
      assert.doesNotMatch(r.error, /did not complete successfully|executor failed running|LLBBridge/);
    });

    test("a malformed spec fails the build with the file named", async () => {
      const ctx = context("bad", "packages: [1, 2\n");
      const r = await dockerBuild(d, ctx, {
        dockerfile: "nixoci.yaml",
        t: "nixtest:bad",
        networkmode: "host",
      });
      assert.ok(r.error, "the build failed");
      assert.match(r.error, /nixoci\.yaml/);
    });

    test("an unreachable cache fails the build with the cache named", async () => {
      const port = await freePort();
      const ctx = context("unreachable", helloSpec().replace(cacheUrl, `http://127.0.0.1:${port}`));
      const r = await dockerBuild(d, ctx, {
        dockerfile: "nixoci.yaml",
        t: "nixtest:unreach",
        networkmode: "host",
      });
      assert.ok(r.error, "the build failed");
      assert.match(r.error + r.log, new RegExp(`127\\.0\\.0\\.1:${port}`));
    });
  });
