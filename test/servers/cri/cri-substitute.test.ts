// A store path missing from the snapshotter's store is substituted from a signed binary cache during a CRI pull
// (real containerd CRI plugin of NIXOCI_CONTAINERD, registry and snapshotter as child processes). The snapshotter's --store is a
// chroot-style store (DIR/chroot/nix/store with its own Nix database, made by `nix copy --to local?root=...`)
// holding every path of the image but `hello`; the file:// cache (`nix copy --to file://...`, signed) has it.
// The pull then fetches no store layer's blob from the registry, `hello` is valid in the store afterwards (Nix
// itself says so), and the container runs.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync } from "node:fs";
import { basename, join } from "node:path";
import { gcRootsDir } from "../../../src/servers/snapshotter/gcroots.js";
import {
  blobGets,
  layerStorePaths,
  logSize,
  pushNixociImage,
  registryLogLines,
  rpcLines,
  startCriStack,
  type CriStack,
  type PushedImage,
  stopStackLeavingNoMounts,
  substituterArgs,
} from "../../support/cri.js";
import { buildFixtures, makeTempDir, type FixtureAttr } from "../../support/fixtures.js";
import { nixCmd } from "../../support/run.js";
import { runAsync, tail } from "../../support/snapshotter.js";
import { containerdUnderTest } from "../../support/containerd-release.js";

const NIX = ["--extra-experimental-features", "nix-command"];

describe(`CRI PullImage (containerd ${containerdUnderTest().series}) substitutes a path missing from the snapshotter's store`, () => {
  let fx: Record<FixtureAttr, string>;
  let stack: CriStack | undefined;
  let image: PushedImage;
  let chroot: string;

  before(
    async () => {
      fx = buildFixtures();
      stack = await startCriStack({
        prefix: "crisub",
        snapshotterArgs: (dir) => {
          chroot = join(dir, "chroot");
          // hello's closure is hello, busybox and greeting: the store gets the last two.
          nixCmd(["copy", "--no-check-sigs", "--to", `local?root=${chroot}`, fx.busybox, fx.greeting]);
          return [
            "--store",
            join(chroot, "nix/store"),
            ...substituterArgs(dir, "nixoci-cri-sub", [fx.hello]),
          ];
        },
      });
      image = pushNixociImage(stack.registry, {
        installables: [fx.hello],
        entrypoint: "/bin/hello",
        repo: "nixoci/hello-sub",
        workDir: makeTempDir("cri-sub-work"),
      });
    },
    { timeout: 240_000 },
  );

  after(() => stopStackLeavingNoMounts(stack));

  test(
    "no blob of a store layer is fetched; the missing path is now valid in the store; the image runs",
    { timeout: 180_000 },
    async () => {
      const s = stack!;
      const store = join(chroot, "nix/store");
      const storeLayers = image.layers.filter((l) => layerStorePaths(l).length);
      const paths = storeLayers.flatMap(layerStorePaths);
      assert.ok(paths.includes(fx.hello) && paths.includes(fx.busybox), JSON.stringify(paths));
      // Before: the store lacks hello (and Nix agrees), has the rest.
      assert.equal(existsSync(join(store, basename(fx.hello))), false);
      assert.ok(existsSync(join(store, basename(fx.busybox))));
      await assert.rejects(
        runAsync("nix", [...NIX, "path-info", "--store", `local?root=${chroot}`, fx.hello]),
      );

      const regFrom = registryLogLines(s.registry);
      const logFrom = logSize(s.sn);
      const pulled = await s.cri.pullImage({ image: { image: image.ref } }, { timeoutMs: 120_000 });

      const fetched = blobGets(s.registry, regFrom);
      console.log(`blobs fetched: ${fetched.join(" ")}`);
      for (const l of storeLayers)
        assert.ok(
          !fetched.includes(l.digest),
          `store layer ${l.digest} (${layerStorePaths(l).join(" ")}) is not fetched\n${tail(s.sn.logFile)}`,
        );
      const custom = image.layers.filter((l) => !layerStorePaths(l).length);
      for (const l of custom)
        assert.ok(fetched.includes(l.digest), `the ordinary layer ${l.digest} is fetched`);

      // Every store layer's Prepare answered ALREADY_EXISTS (committed from the store).
      const already = rpcLines(s.sn, logFrom).filter(
        (r) => r.method === "Prepare" && r.code === "ALREADY_EXISTS",
      );
      assert.equal(already.length, storeLayers.length, JSON.stringify(already));

      // hello is in the store now, with the same bytes' hash as the host's, and registered in its database.
      assert.ok(existsSync(join(store, basename(fx.hello))));
      const info = JSON.parse(
        await runAsync("nix", [...NIX, "path-info", "--json", "--store", `local?root=${chroot}`, fx.hello]),
      ) as Array<{ path: string; narHash: string; valid?: boolean }>;
      const host = JSON.parse(await runAsync("nix", [...NIX, "path-info", "--json", fx.hello])) as Array<{
        narHash: string;
      }>;
      assert.equal(info[0].path, fx.hello);
      assert.notEqual(info[0].valid, false);
      assert.equal(info[0].narHash, host[0].narHash);
      // A verified copy: `nix store verify` checks the NAR hash of the store's bytes.
      await runAsync("nix", [
        ...NIX,
        "store",
        "verify",
        "--no-trust",
        "--store",
        `local?root=${chroot}`,
        fx.hello,
      ]);
      // No temporary leftovers in the store.
      assert.deepEqual(
        readdirSync(store).filter((n) => n.startsWith(".") && n !== ".links"),
        [],
        "no temporary entries in the store",
      );

      // The image's GC root (for a store other than /nix/store: under ROOT/gcroots) names every store path.
      const root = join(
        gcRootsDir(s.sn.root, { realDir: store, storeDir: "/nix/store" }),
        `manifest-${image.manifestDigest.slice("sha256:".length)}`,
      );
      assert.deepEqual(readdirSync(root).sort(), paths.map((p) => basename(p)).sort());

      assert.equal(s.run(image.ref, "sub-run"), "Hello from nixoci!\n");
      await s.cri.removeImage({ image: { image: pulled.image_ref } });
    },
  );
});
