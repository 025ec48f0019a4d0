// Issue 5's scenarios with the real containerd CRI plugin (NIXOCI_CONTAINERD) and nixoci's snapshotter over the fixtures' store
// (/nix/store), one stack (registry, snapshotter, containerd) shared by the tests of this file, which run in
// order and each leave no image behind (they remove theirs and wait for containerd's GC):
// - RemoveImage through CRI, then containerd's GC: the image's snapshots are removed from the snapshotter and its
//   GC root directory (/nix/var/nix/gcroots/nixoci/sn-.../manifest-<hex>) is gone;
// - bad layer annotations (a store path that does not exist, a path with `..`): ordinary Prepares, containerd
//   downloads those layers, nothing errors or hangs, the image runs;
// - a plain (non-Nix) image pulled through CRI runs through the snapshotter;
// - images imported from an oci-archive and a docker-archive written by `nixoci build` run through it.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readdirSync, readlinkSync } from "node:fs";
import { basename, join } from "node:path";
import { gcRootsDir } from "../../../src/servers/snapshotter/gcroots.js";
import { nixociOk } from "../../support/cli.js";
import {
  blobGets,
  chainIds,
  isChainSnapshot,
  layerClosureRoots,
  layerStorePaths,
  listSnapshots,
  logSize,
  NIX_STORE_PATH_ANNOTATION,
  pushBuilt,
  pushModifiedImage,
  pushNixociImage,
  registryLogLines,
  rpcLines,
  startCriStack,
  stopStackLeavingNoMounts,
  type CriStack,
  type PushedImage,
} from "../../support/cri.js";
import { until } from "../../support/poll.js";
import { mountsUnder } from "../../support/daemons.js";
import { buildFixtures, makeTempDir, type FixtureAttr } from "../../support/fixtures.js";
import { tail } from "../../support/snapshotter.js";
import { makeImage } from "../../support/make-image.js";
import { containerdUnderTest } from "../../support/containerd-release.js";

const HELLO = "Hello from nixoci!\n";

describe(`CRI scenarios through containerd ${containerdUnderTest().series} with the nixoci snapshotter over /nix/store`, () => {
  let fx: Record<FixtureAttr, string>;
  let stack: CriStack | undefined;
  let hello: PushedImage;
  let work: string;

  before(
    async () => {
      fx = buildFixtures();
      work = makeTempDir("cri-work");
      stack = await startCriStack({ prefix: "cris", snapshotterArgs: ["--store", "/nix/store"] });
      hello = pushNixociImage(stack.registry, {
        installables: [fx.hello],
        entrypoint: "/bin/hello",
        repo: "nixoci/hello",
        workDir: work,
      });
    },
    { timeout: 240_000 },
  );

  // Nothing may stay mounted under the snapshotter's or containerd's dirs (stop unmounts leftovers; check
  // before that would race with containerd's own shutdown, so only report here).
  after(() => stopStackLeavingNoMounts(stack));

  /** The root directory of the image's GC root under the snapshotter's gcroots. */
  const rootDir = (manifestDigest: string): string =>
    join(
      gcRootsDir(stack!.sn.root, { realDir: "/nix/store", storeDir: "/nix/store" }),
      `manifest-${manifestDigest.slice("sha256:".length)}`,
    );

  /**
   * Bounded: until the snapshotter holds no snapshot at all (each test removes its images, and containerd's GC
   * removes their snapshots in the background); first checks none of `diffIds`' chains is left.
   */
  async function waitSnapshotterEmpty(diffIds: string[]): Promise<void> {
    const s = stack!;
    const chains = chainIds(diffIds);
    await until(
      "containerd's GC removes every snapshot",
      60_000,
      async () => {
        const left = await listSnapshots(s.sn.socket);
        const ours = left.filter((i) => chains.some((c) => isChainSnapshot(i.name, c)));
        if (ours.length)
          throw new Error(`the image's are still there: ${ours.map((i) => i.name).join(", ")}`);
        if (left.length) throw new Error(`still there: ${left.map((i) => i.name).join(", ")}`);
      },
      250,
    );
  }

  /** CRI RemoveImage, then waitSnapshotterEmpty. */
  async function removeAndWaitGc(imageId: string, diffIds: string[]): Promise<void> {
    await stack!.cri.removeImage({ image: { image: imageId } }, { timeoutMs: 60_000 });
    await waitSnapshotterEmpty(diffIds);
  }

  test(
    "RemoveImage and containerd's GC remove the snapshots and drop the image's GC root",
    { timeout: 180_000 },
    async () => {
      const s = stack!;
      const storeLayers = hello.layers.filter((l) => layerStorePaths(l).length);
      assert.ok(storeLayers.length >= 1, "the image has nix layers");
      const pulled = await s.cri.pullImage({ image: { image: hello.ref } }, { timeoutMs: 120_000 });

      // The root: a directory of links to every store path of the image's nix layers.
      const dir = rootDir(hello.manifestDigest);
      assert.ok(existsSync(dir), `GC root ${dir} after the pull\n${tail(s.sn.logFile)}`);
      // One link: the image's root (nix-closure-root), whose closure holds every store layer's paths.
      const links = readdirSync(dir).sort();
      assert.deepEqual(links, [basename(fx.hello)]);
      assert.deepEqual(layerClosureRoots(storeLayers[0]), [fx.hello]);
      const closure = execFileSync("nix-store", ["-qR", fx.hello], { encoding: "utf8" }).split("\n");
      for (const p of storeLayers.flatMap(layerStorePaths))
        assert.ok(closure.includes(p), `${p} in hello's closure`);
      for (const l of links) assert.equal(readlinkSync(join(dir, l)), `/nix/store/${l}`);

      const chains = chainIds(hello.diffIds);
      const before = await listSnapshots(s.sn.socket);
      for (const c of chains)
        assert.ok(
          before.some((i) => isChainSnapshot(i.name, c)),
          `the snapshotter holds chain ${c}: ${before.map((i) => i.name).join(", ")}`,
        );

      assert.equal(s.run(hello.ref, "gc-run"), HELLO);

      await removeAndWaitGc(pulled.image_ref, hello.diffIds);
      await until(
        "the GC root goes with the last snapshot holding it",
        10_000,
        () => assert.equal(existsSync(dir), false, `${dir} is gone`),
        100,
      );
      assert.equal((await s.cri.imageStatus({ image: { image: hello.ref } })).image, null);
      // containerd's own view agrees: no snapshot of the image in k8s.io.
      const ctrList = s.ctr(["snapshots", "--snapshotter", "nixoci", "ls"]);
      for (const c of chains) assert.ok(!ctrList.includes(c), `containerd lists no ${c}:\n${ctrList}`);
      assert.deepEqual(mountsUnder(s.sn.root), []);
    },
  );

  test(
    "bad nix-store-path labels (missing path, `..`) fall back to ordinary Prepares; the image runs",
    { timeout: 180_000 },
    async () => {
      const s = stack!;
      const storeIdx = hello.layers.map((l, i) => (layerStorePaths(l).length ? i : -1)).filter((i) => i >= 0);
      assert.ok(storeIdx.length >= 2, "at least two nix layers to spoil");
      // Spoil the top two nix layers: once containerd 1.6's unpacker has to fetch one layer it fetches every
      // layer above it too (even those whose Prepare then answers ALREADY_EXISTS), so the good ones go below.
      const [dotdotIdx, missingIdx] = storeIdx.slice(-2);
      const goodIdx = storeIdx.slice(0, -2);
      const missing = `/nix/store/${"0".repeat(32)}-nixoci-not-there`;
      const dotdot = "/nix/store/../../etc";
      const spoilt = await pushModifiedImage(s.registry, hello, "nixoci/spoilt", (i, old) =>
        i === missingIdx
          ? { ...old, [`${NIX_STORE_PATH_ANNOTATION}0`]: missing }
          : i === dotdotIdx
            ? { [`${NIX_STORE_PATH_ANNOTATION}0`]: dotdot }
            : old,
      );
      const regFrom = registryLogLines(s.registry);
      const logFrom = logSize(s.sn);
      const pulled = await s.cri.pullImage({ image: { image: spoilt.ref } }, { timeoutMs: 120_000 });
      try {
        const fetched = blobGets(s.registry, regFrom);
        for (const i of [missingIdx, dotdotIdx])
          assert.ok(fetched.includes(hello.layers[i].digest), `layer ${i} (bad label) is downloaded`);
        for (const i of goodIdx)
          assert.ok(!fetched.includes(hello.layers[i].digest), `layer ${i} (good label) is not downloaded`);

        const rpcs = rpcLines(s.sn, logFrom);
        for (const [value, what] of [
          [missing, "missing path"],
          [dotdot, "`..`"],
        ]) {
          const p = rpcs.find(
            (r) =>
              r.method === "Prepare" &&
              Object.entries(r.labels ?? {}).some(
                ([k, v]) => k.startsWith(NIX_STORE_PATH_ANNOTATION) && v === value,
              ),
          );
          assert.ok(p, `a Prepare labelled with the ${what}`);
          assert.equal(p.code, undefined, `an ordinary Prepare for the ${what}: ${JSON.stringify(p)}`);
          assert.ok(
            rpcs.some((r) => r.method === "Commit" && r.key === p.key && r.code === undefined),
            `its layer is committed after unpacking`,
          );
        }
        // ALREADY_EXISTS answers are logged with the key, whose end is the chain ID asked for (not the labels).
        for (const i of goodIdx) {
          const chain = chainIds(hello.diffIds)[i];
          assert.ok(
            rpcs.some(
              (r) =>
                r.method === "Prepare" && r.code === "ALREADY_EXISTS" && (r.key ?? "").endsWith(` ${chain}`),
            ),
            `layer ${i} (good label) is committed from the store`,
          );
        }
        const errors = rpcs.filter((r) => r.level === "error");
        assert.deepEqual(errors, [], "no internal errors");

        assert.equal(s.run(spoilt.ref, "bad-labels-run"), HELLO);
      } finally {
        await removeAndWaitGc(pulled.image_ref, hello.diffIds);
      }
      assert.deepEqual(mountsUnder(s.sn.root), []);
    },
  );

  test(
    "a plain (non-Nix) image pulled through CRI runs through the snapshotter",
    { timeout: 180_000 },
    async () => {
      const s = stack!;
      const image = await makeImage({ hello: "plain image through nixoci\n" });
      const { ref } = await pushBuilt(s.registry, image, "plain/busybox");
      const regFrom = registryLogLines(s.registry);
      const logFrom = logSize(s.sn);
      const pulled = await s.cri.pullImage({ image: { image: ref } }, { timeoutMs: 120_000 });
      const fetched = blobGets(s.registry, regFrom);
      for (const l of image.layers) assert.ok(fetched.includes(l.digest), `layer ${l.digest} is downloaded`);
      const prepares = rpcLines(s.sn, logFrom).filter((r) => r.method === "Prepare");
      assert.equal(prepares.length, image.layers.length, "one Prepare per layer, through nixoci");
      assert.ok(
        prepares.every((p) => p.code === undefined),
        JSON.stringify(prepares),
      );

      assert.equal(s.run(ref, "plain-run"), "plain image through nixoci\n");
      assert.equal(s.run(ref, "plain-run-2", ["/bin/busybox", "echo", "args work"]), "args work\n");
      await removeAndWaitGc(pulled.image_ref, image.diffIds);
    },
  );

  for (const kind of ["oci-archive", "docker-archive"] as const)
    test(
      `an image imported from a ${kind} written by nixoci runs through the snapshotter`,
      { timeout: 180_000 },
      async () => {
        const s = stack!;
        const file = join(work, `hello.${kind}.tar`);
        const name = `import.test/nixoci/${kind}:v1`;
        nixociOk([
          "build",
          "--entrypoint",
          "/bin/hello",
          fx.hello,
          "-o",
          kind === "oci-archive"
            ? `oci-archive:${file}:v1`
            : `docker-archive:${file}:import.test/nixoci/${kind}:v1`,
          "-q",
        ]);
        const logFrom = logSize(s.sn);
        const regFrom = registryLogLines(s.registry);
        const args = ["images", "import", "--snapshotter", "nixoci"];
        // An OCI archive names its image by tag only: --base-name gives the repository.
        if (kind === "oci-archive") args.push("--base-name", `import.test/nixoci/${kind}`);
        const out = s.ctr([...args, file]);
        console.log(`ctr import (${kind}): ${out.trim()}`);
        const listed = s.ctr(["images", "ls", "-q"]).split("\n");
        assert.ok(listed.includes(name), `${name} in ${JSON.stringify(listed)}`);
        // ctr's unpack went through nixoci: a Prepare per layer (ordinary: ctr passes no annotations).
        const prepares = rpcLines(s.sn, logFrom).filter((r) => r.method === "Prepare");
        assert.ok(prepares.length >= 1, "layers unpacked through the snapshotter");
        assert.equal(s.run(name, `import-${kind}`), HELLO);
        assert.deepEqual(registryLogLines(s.registry), regFrom, "no registry traffic");
        const after = rpcLines(s.sn, logFrom).filter((r) => r.method === "Prepare");
        assert.ok(after.length > prepares.length, "the container's snapshot was prepared by nixoci too");
        // The CRI plugin sees the imported image too (it adds a `sha256:<id>` reference of its own, so
        // `ctr images rm NAME` would leave the image): remove it through CRI by id.
        const st = await s.cri.imageStatus({ image: { image: name } });
        assert.ok(st.image, `CRI ImageStatus finds ${name}`);
        assert.ok(st.image.repo_tags.includes(name), JSON.stringify(st.image.repo_tags));
        await s.cri.removeImage({ image: { image: st.image.id } }, { timeoutMs: 60_000 });
        await waitSnapshotterEmpty(hello.diffIds);
        assert.deepEqual(mountsUnder(s.sn.root), []);
      },
    );
});
