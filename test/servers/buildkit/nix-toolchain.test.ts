// Nix files built by nixoci's frontend with the Nix most users run: the toolchain image of Debian 13's nix-bin 2.26
// (scripts/nix-toolchain-image.mjs --nix 2.26, from the trixie root scripts/install-nix-toolchains.sh made) rather
// than this machine's 2.8 (frontend.test.ts). Nix 2.19 changed what the frontend reads back (`nix path-info --json`
// became an object keyed by store path) and 2.26 evaluates flakes differently from 2.8, so the Nix-file paths run
// again here end to end: a default.nix builds an image that runs (and says which Nix evaluated it), a rebuild runs
// nothing again, a changed package is the only layer copied again, a flake.nix builds packages.<system>.<attr>,
// and evaluation errors fail the build with nix's message.
// Also: switching to this machine's 2.8 toolchain on the same daemon reuses what 2.26 built (one /nix cache mount
// serves both). The suite picks its own Dockers, whatever NIXOCI_DOCKER says: 28.5 (Debian unstable's) with the
// containerd image store, the newest BuildKit of the Docker matrix, and bookworm's 20.10 (BuildKit v0.8), so it
// runs once and is not in run-tests.mjs's DOCKER_SUITES.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  dockerBuild,
  fetchedLayerNumbers,
  loadFrontendImage,
  loadNixToolchainImage,
  type BuildResult,
  nixFileFor,
} from "../../support/buildkit.js";
import { startDockerd, type Dockerd } from "../../support/daemons.js";
import { dockerRelease } from "../../support/docker-release.js";

const FRONTEND = "nixoci-frontend:test";
/** The toolchain image of a Nix version (2.26: Debian 13's; 2.8: this machine's). */
const toolchain = (nix: string): string => `nixoci-nix-toolchain:${nix}`;

/**
 * The daemons the suite runs with: 28.5 with the containerd image store (the newest BuildKit, with MergeOp) and
 * bookworm's 20.10 (BuildKit v0.8, the project's default Docker), whatever NIXOCI_DOCKER selects for other files.
 */
const DOCKERS = [
  { series: "28.5", containerdStore: true },
  { series: "20.10", containerdStore: false },
] as const;

const nixFile = (body: string): string => nixFileFor(FRONTEND, body);

/** A package `name` whose /bin/hello prints `greeting`, followed by the Nix version that evaluated the file. */
const helloPackage = (name: string, greeting: string): string =>
  `sh { name = "${name}"; script = "mkdir -p $out/bin && printf '#!\${busybox}/bin/sh\\necho ${greeting}, Nix \${builtins.nixVersion}\\n' > $out/bin/hello && chmod +x $out/bin/hello"; }`;

const helloNix = (greeting: string): string =>
  nixFile([`  hello = ${helloPackage("hello-nix", greeting)};`, "in { inherit hello busybox; }"].join("\n"));

for (const { series, containerdStore } of DOCKERS)
  describe(`Nix files built with Debian 13's Nix 2.26 inside dockerd ${series}'s BuildKit (${containerdStore ? "containerd" : "classic"} image store)`, () => {
    let d: Dockerd;
    let dir: string;

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), "nixoci-nix-toolchain-test-"));
      d = await startDockerd({ release: dockerRelease({ NIXOCI_DOCKER: series }), containerdStore });
      loadFrontendImage(d, FRONTEND, dir);
      for (const nix of ["2.26", "2.8"]) loadNixToolchainImage(d, toolchain(nix), nix);
    });

    after(async () => {
      await d?.stop();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    /**
     * Builds the context `name` holding `files` (build file first) through the Engine API with the toolchain of
     * Nix `nix`, tagged nixfile:NAME.
     */
    const build = (
      name: string,
      files: Record<string, string>,
      args: Record<string, string>,
      nix = "2.26",
    ): Promise<BuildResult> => {
      const c = join(dir, name);
      mkdirSync(c, { recursive: true });
      for (const [file, text] of Object.entries(files)) writeFileSync(join(c, file), text);
      return dockerBuild(d, c, {
        dockerfile: Object.keys(files)[0],
        t: `nixfile:${name}`,
        networkmode: "host",
        buildargs: JSON.stringify({ toolchain: toolchain(nix), ...args }),
      });
    };
    const runImage = (ref: string): string => d.docker(["run", "--rm", "--network", "none", ref]).toString();
    const failure = (r: BuildResult): string => `${r.error}\n${r.log.slice(-3000)}`;

    test("the toolchain image's nix is 2.26 and it keeps nothing under /nix", () => {
      assert.match(
        d.docker(["run", "--rm", "--network", "none", toolchain("2.26"), "nix", "--version"]).toString(),
        /^nix \(Nix\) 2\.26\./,
      );
      // The frontend mounts its cache at /nix: anything the image had there would be hidden, or copied into it.
      assert.equal(
        d
          .docker([
            "run",
            "--rm",
            "--network",
            "none",
            toolchain("2.26"),
            "sh",
            "-c",
            "test -e /nix && echo present || echo absent",
          ])
          .toString()
          .trim(),
        "absent",
      );
    });

    test("a default.nix builds an image that runs; a rebuild runs nothing again", async () => {
      const files = { "default.nix": helloNix("Hello from a Nix file") };
      const args = { attr: "hello", entrypoint: '["/bin/hello"]' };
      const r = await build("hello", files, args);
      assert.equal(r.error, undefined, failure(r));
      assert.match(runImage("nixfile:hello"), /^Hello from a Nix file, Nix 2\.26\.\d+$/m);
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

      const again = await build("hello", files, args);
      assert.equal(again.error, undefined, failure(again));
      const steps = [...again.vertices.values()].filter((v) => /^(nix-build|nixoci: fetch)/.test(v.name));
      assert.ok(steps.length >= 2, steps.map((v) => v.name).join(", "));
      assert.deepEqual(
        steps.filter((v) => !v.cached).map((v) => v.name),
        [],
        "a rebuild with nothing changed re-ran these",
      );
    });

    test("after the Nix file changed one package, only that package's layer is copied again", async () => {
      const r = await build(
        "hello",
        { "default.nix": helloNix("Hello from a changed Nix file") },
        { attr: "hello", entrypoint: '["/bin/hello"]' },
      );
      assert.equal(r.error, undefined, failure(r));
      const fetches = [...r.vertices.values()].filter((v) => v.name.startsWith("nixoci: fetch layer"));
      const executed = fetches.filter((v) => !v.cached).map((v) => v.name);
      assert.ok(
        fetches.some((v) => v.cached && v.name.includes("busybox")),
        fetches.map((v) => `${v.name}${v.cached ? " (cached)" : ""}`).join(", "),
      );
      assert.equal(executed.length, 1, `executed: ${executed.join(", ")}`);
      assert.match(executed[0], /hello-nix/);
      assert.match(runImage("nixfile:hello"), /^Hello from a changed Nix file, Nix 2\.26\.\d+$/m);
    });

    test("a flake.nix builds its packages.<system>.<attr>", async () => {
      const flake = [
        `# syntax=${FRONTEND}`,
        "{",
        "  outputs = { self }: let",
        '    sh = args: derivation { name = args.name; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" args.script ]; };',
        '    busybox = sh { name = "busybox"; script = "mkdir -p $out/bin && cp /bin/busybox $out/bin/busybox && ln -s busybox $out/bin/sh"; };',
        "  in {",
        `    packages.x86_64-linux.hello = ${helloPackage("hello-flake", "Hello from a flake")};`,
        `    packages.x86_64-linux.default = ${helloPackage("default-flake", "The default package of a flake")};`,
        "  };",
        "}",
        "",
      ].join("\n");
      const r = await build("flake", { "flake.nix": flake }, { attr: "hello", entrypoint: "/bin/hello" });
      assert.equal(r.error, undefined, failure(r));
      assert.match(runImage("nixfile:flake"), /^Hello from a flake, Nix 2\.26\.\d+$/m);

      const byDefault = await build("flake-default", { "flake.nix": flake }, { entrypoint: "/bin/hello" });
      assert.equal(byDefault.error, undefined, failure(byDefault));
      assert.match(runImage("nixfile:flake-default"), /^The default package of a flake, Nix 2\.26\.\d+$/m);
    });

    test("an unknown attribute and an evaluation error fail the build with nix's message", async () => {
      const unknown = await build("unknown", { "default.nix": helloNix("Hello") }, { attr: "nope" });
      assert.ok(unknown.error, "the build failed");
      assert.match(unknown.error + unknown.log, /attribute 'nope'/);
      const broken = await build("broken", { "default.nix": nixFile("  x = ;\nin { }") }, {});
      assert.ok(broken.error, "the build failed");
      assert.match(broken.error + broken.log, /syntax error/);
      assert.match(broken.error + broken.log, /default\.nix:\d+/);
    });
    test("the 2.8 toolchain after 2.26 on the same daemon finds 2.26's outputs in the shared /nix cache", async () => {
      // No builtins.nixVersion in it: both Nix versions evaluate this file to the same derivations.
      const files = {
        "default.nix": nixFile(
          [
            `  hello = sh { name = "hello-shared"; script = "mkdir -p $out/bin && printf '#!\${busybox}/bin/sh\\necho Built once\\n' > $out/bin/hello && chmod +x $out/bin/hello"; };`,
            "in { inherit hello; }",
          ].join("\n"),
        ),
      };
      const args = { attr: "hello", entrypoint: '["/bin/hello"]' };
      const first = await build("shared", files, args, "2.26");
      assert.equal(first.error, undefined, failure(first));
      const second = await build("shared", files, args, "2.8");
      assert.equal(second.error, undefined, failure(second));
      // 2.26 built the package; 2.8's nix-build step ran (another toolchain image) but found it valid in the
      // cache mount's store, written by 2.26, and built nothing.
      assert.match(
        first.log,
        /building '\/nix\/store\/[a-z0-9]{32}-hello-shared\.drv'/,
        first.log.slice(-3000),
      );
      assert.ok(
        [...second.vertices.values()].some((v) => v.name.startsWith("nix-build") && !v.cached),
        "the 2.8 toolchain's nix-build step ran",
      );
      assert.doesNotMatch(
        second.log,
        /building '\/nix\/store\/[a-z0-9]{32}-hello-shared\.drv'/,
        second.log.slice(-3000),
      );
      // The same store paths, so the same copy steps: nothing was copied again.
      const fetches = [...second.vertices.values()].filter((v) => v.name.startsWith("nixoci: fetch layer"));
      assert.ok(fetches.length >= 2, fetches.map((v) => v.name).join(", "));
      assert.deepEqual(
        fetches.filter((v) => !v.cached).map((v) => v.name),
        [],
        "copied again after switching toolchains",
      );
      assert.match(runImage("nixfile:shared"), /^Built once$/m);
    });
  });
