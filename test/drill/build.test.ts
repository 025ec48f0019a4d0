// Fault drill: `nixoci build` SIGKILLed at random points (and fixed early ones) while it writes each kind of
// output — an OCI layout holding another image, an oci-archive and a docker-archive replacing older ones, a push
// to a real docker-registry 2.8 on loopback, an image description in the Nix store. After each kill: the
// destination shows nothing partial (the older content intact, the new image absent or complete and valid:
// every blob matching its digest, umoci and skopeo read it, the registry's manifest complete, the description
// valid in Nix's database with the measured NAR hash); the same build run again completes with the same
// digest; and then no temporary is left anywhere the build writes (destination, layer cache, the Nix store for
// the killed pids, its TMPDIR). One more test kills the registry in the middle of a push: a clear one-line
// error, non-zero exit, within the liveness bound.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { cpSync, existsSync, mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { buildFixtures, makeTempDir, type FixtureAttr } from "../support/fixtures.js";
import { startRegistry, type Registry } from "../support/daemons.js";
import { until } from "../support/poll.js";
import { runText } from "../support/run.js";
import {
  assertNoTemporaries,
  checkDockerArchive,
  checkOciArchive,
  checkOciLayout,
  checkRegistryImage,
  describeEnd,
  drillTimeout,
  entries,
  finish,
  killDaemon,
  killPoints,
  measure,
  pidTemporaries,
  privateTmpdir,
  runNixociKilledAt,
  runNixociOk,
  runTrials,
  spawnNixoci,
} from "../support/drill.js";

describe("drill: nixoci build SIGKILLed while writing each kind of output", () => {
  let fx: Record<FixtureAttr, string>;
  let registry: Registry;
  let tmp: string;
  const killed = new Set<number>();

  before(
    async () => {
      fx = buildFixtures();
      registry = await startRegistry();
      tmp = privateTmpdir("build");
    },
    { timeout: 240_000 },
  );
  after(async () => {
    await registry?.stop();
  });

  /** The build every trial runs: the whole fixture closure (14 paths, ~3.5 MB) into a fresh layer cache. */
  const buildArgs = (cache: string, output: string): string[] => [
    "build",
    "-q",
    "--entrypoint",
    `${fx.hello}/bin/hello`,
    "--cache-dir",
    cache,
    fx.all,
    "-o",
    output,
  ];
  const env = (): NodeJS.ProcessEnv => ({ TMPDIR: tmp });

  interface Destination {
    /** The -o argument. */
    output: string;
    /** The new image's manifest digest when it is there complete, else undefined (fails on anything partial). */
    check(): string | undefined;
    /** Directories the output writes to, checked for temporaries. */
    dirs: string[];
  }

  /**
   * Measures one build into `dest(0)`, then for each kill point: a fresh cache and destination, the build killed
   * there, the destination checked, the build run again, checked again, and no temporaries anywhere.
   */
  async function drill(label: string, dest: (trial: number) => Destination): Promise<void> {
    const work = makeTempDir("drill-build");
    const first = dest(0);
    const measured = await measure(buildArgs(join(work, "cache-0"), first.output), { env: env() });
    const expected = first.check();
    assert.ok(expected, `${label}: the uninterrupted build wrote its output`);
    console.log(`${label}: one uninterrupted build takes ${measured} ms`);
    await runTrials(label, killPoints(label, measured), async (p, i) => {
      const cache = join(work, `cache-${i + 1}`);
      const d = dest(i + 1);
      const args = buildArgs(cache, d.output);
      const r = await runNixociKilledAt(args, p.ms, { env: env() });
      killed.add(r.pid);
      const end = describeEnd(r);
      assert.ok(r.signal === "SIGKILL" || r.code === 0, end);
      const after = d.check();
      if (after !== undefined) assert.equal(after, expected, "the image at the destination");
      const again = await runNixociOk(args, { env: env() });
      assert.equal(again.stdout.split("\n")[0], expected, "the rerun's manifest digest");
      assert.equal(d.check(), expected, "after the rerun");
      assertNoTemporaries([...d.dirs, cache], "after the rerun");
      assert.deepEqual(entries(tmp), [], "nothing left in the builds' TMPDIR");
      return `${end}${after ? " (image already complete)" : ""}`;
    });
  }

  test(
    "-o oci:DIR:TAG: a new layout, or one holding another image",
    { timeout: drillTimeout(30_000) },
    async () => {
      const work = makeTempDir("drill-oci");
      const template = join(work, "template");
      await runNixociOk(
        ["build", "-q", "--cache-dir", join(work, "c"), fx.greeting, "-o", `oci:${template}:old`],
        { env: env() },
      );
      const old = checkOciLayout(template)!.get("old");
      assert.ok(old);
      await drill("build -o oci:", (i) => {
        // Odd trials write a new layout (it appears whole or not at all), even ones add to an existing layout.
        const fresh = i % 2 === 1;
        const dir = join(work, `layout-${i}`);
        if (!fresh) cpSync(template, dir, { recursive: true });
        return {
          output: `oci:${dir}:new`,
          dirs: [dir, work],
          check: () => {
            const tags = checkOciLayout(dir);
            if (fresh) assert.equal(tags === undefined, !existsSync(dir), "a new layout: absent or an index");
            else assert.equal(tags?.get("old"), old, "the layout's other image is intact");
            return tags?.get("new");
          },
        };
      });
    },
  );

  /** An archive destination that already holds an older archive (which stays until the new one replaces it). */
  function archiveDestination(
    work: string,
    template: string,
    i: number,
    output: (file: string) => string,
    read: (file: string) => string | undefined,
  ): Destination {
    const dir = join(work, `out-${i}`);
    mkdirSync(dir);
    const file = join(dir, "image.tar");
    cpSync(template, file);
    const old = read(template);
    return {
      output: output(file),
      dirs: [dir],
      check: () => {
        assert.ok(existsSync(file), "the older archive stays until the new one replaces it");
        assert.deepEqual(
          entries(dir).filter((n) => !n.startsWith(".")),
          ["image.tar"],
          "nothing else at the destination",
        );
        const got = read(file);
        return got === old ? undefined : got;
      },
    };
  }

  test("-o oci-archive:FILE:TAG replacing an older archive", { timeout: drillTimeout(30_000) }, async () => {
    const work = makeTempDir("drill-oci-archive");
    const template = join(work, "old.tar");
    await runNixociOk(
      ["build", "-q", "--cache-dir", join(work, "c"), fx.greeting, "-o", `oci-archive:${template}:img`],
      { env: env() },
    );
    await drill("build -o oci-archive:", (i) =>
      archiveDestination(
        work,
        template,
        i,
        (f) => `oci-archive:${f}:img`,
        (f) => checkOciArchive(f, "img"),
      ),
    );
  });

  test(
    "-o docker-archive:FILE:NAME:TAG replacing an older archive",
    { timeout: drillTimeout(30_000) },
    async () => {
      const work = makeTempDir("drill-docker-archive");
      const template = join(work, "old.tar");
      await runNixociOk(
        [
          "build",
          "-q",
          "--cache-dir",
          join(work, "c"),
          fx.greeting,
          "-o",
          `docker-archive:${template}:img:v1`,
        ],
        { env: env() },
      );
      // checkDockerArchive gives the config digest; the build prints the manifest digest: map one to the other
      // through the uninterrupted build's layout.
      const configs = new Map<string, string>();
      const read = (f: string): string | undefined => {
        const config = checkDockerArchive(f);
        return config === undefined ? undefined : (configs.get(config) ?? config);
      };
      const probe = join(work, "probe");
      const r = await runNixociOk(buildArgs(join(work, "c"), `oci:${probe}:x`), { env: env() });
      const manifest = r.stdout.split("\n")[0];
      const m = JSON.parse(readFileSync(join(probe, "blobs/sha256", manifest.slice(7)), "utf8")) as {
        config: { digest: string };
      };
      configs.set(m.config.digest, manifest);
      await drill("build -o docker-archive:", (i) =>
        archiveDestination(work, template, i, (f) => `docker-archive:${f}:img:v1`, read),
      );
    },
  );

  test(
    "-o docker://REGISTRY/REPO:TAG (docker-registry 2.8 on loopback)",
    { timeout: drillTimeout(30_000) },
    async () => {
      await drill("build -o docker://", (i) => {
        const repo = `drill/build-${i}`;
        return {
          output: `docker://${registry.host}/${repo}:v1`,
          dirs: [],
          check: () => checkRegistryImage(registry.host, repo, "v1"),
        };
      });
    },
  );

  test("-o nix:NAME (an image description in the Nix store)", { timeout: drillTimeout(30_000) }, async () => {
    const name = `nixoci-drill-${process.pid}`;
    let path: string | undefined;
    let narHash: string | undefined;
    const valid = (p: string): boolean => {
      try {
        runText("nix-store", ["--check-validity", p]);
        return true;
      } catch {
        return false;
      }
    };
    // The description is the same every time (a content-addressed path): delete it before each trial.
    const remove = (): void => {
      if (path && valid(path)) runText("nix-store", ["--delete", path]);
      if (path) assert.ok(!valid(path), `${path} deleted`);
    };
    await drill("build -o nix:", () => {
      remove();
      return {
        output: `nix:${name}`,
        dirs: [],
        check: () => {
          if (!path) {
            // The uninterrupted run: learn the path and its hash.
            path = runText("sh", ["-c", `ls -d /nix/store/*-${name}`]);
            narHash = runText("nix-store", ["-q", "--hash", path]);
          }
          if (!valid(path)) return undefined;
          runText("nix-store", ["--verify-path", path]);
          assert.equal(runText("nix-store", ["-q", "--hash", path]), narHash, "the description's NAR hash");
          const tags = checkOciLayout(path, { storeLayersOmitted: true });
          assert.equal(tags?.size, 1, "one tagged image in the description");
          return [...tags.values()][0];
        },
      };
    });
    // What the killed builds left in the store directory (restores of the description cut short) is gone.
    assert.deepEqual(
      pidTemporaries("/nix/store", { depth: 1, pids: killed }),
      [],
      "temporaries in /nix/store",
    );
    remove();
  });

  test(
    "the registry SIGKILLed in the middle of a push: a clear one-line error, non-zero exit",
    { timeout: 300_000 },
    async () => {
      const reg = await startRegistry();
      try {
        const work = makeTempDir("drill-push-dead");
        const child = spawnNixoci(buildArgs(join(work, "cache"), `docker://${reg.host}/drill/dead:v1`), {
          env: env(),
        });
        const done = finish(child, performance.now());
        let ended = false;
        void done.then(() => (ended = true));
        // Kill the registry once the push has started uploading (its access log shows an upload request).
        await until(
          "the push to start uploading",
          120_000,
          () => {
            assert.ok(!ended, "the build ended before its push started");
            assert.match(reg.log(), /"(POST|PUT|PATCH) \/v2\/drill\/dead\/blobs\/uploads\//);
          },
          10,
        );
        await killDaemon("docker-registry", (a) => a.some((x) => x === join(reg.dir, "config.yml")));
        const r = await done; // the test's timeout is the liveness bound
        console.log(`push to a killed registry: exit ${r.code}: ${r.stderr.trim()}`);
        assert.equal(r.code, 1, r.stderr);
        const lines = r.stderr.trim().split("\n");
        assert.equal(lines.length, 1, `one line: ${r.stderr}`);
        assert.match(lines[0], /^nixoci: /);
        assert.ok(lines[0].includes(reg.host), `names the registry: ${lines[0]}`);
        assert.match(lines[0], /ECONNREFUSED|ECONNRESET|socket|closed|terminated|refused|reset/i);
        assertNoTemporaries([join(work, "cache")], "after the failed push");
        assert.deepEqual(entries(tmp), []);
      } finally {
        await reg.stop();
      }
    },
  );
});
