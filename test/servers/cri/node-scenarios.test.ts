// A Kubernetes node's scenarios on the containerd release under test (NIXOCI_CONTAINERD), with one node stack for
// the whole file: a registry, nixoci's snapshotter over /nix/store (--nix-layers auto: target mode from 1.7 on,
// link mode under 1.6; a signed file:// substituter), containerd with the CRI plugin, and `nixoci image-service`
// in front of containerd's CRI, which every pull goes through; containers run in pods through CRI's
// RuntimeService, as a kubelet runs them. The tests run in order, and each removes everything it made (pods,
// images) and waits for containerd's GC to leave the snapshotter empty:
// 1. three kinds of image in the one namespace (k8s.io) at once: a `nix:0/nix/store/...` description, a nixoci
//    image from the registry and a plain (non-Nix) image, all three running in pods at the same time; then their
//    removal leaves no mount, no snapshot and no GC root;
// 2. two pods of one image at once: both read the store's files (the store's own inode: target mode binds the
//    store itself; link mode hard-links it), each has its own writable layer, one outlives the other's removal,
//    and the image's snapshots stay until the image itself is removed;
// 3. a layer whose store paths are partly missing from the store, with a substituter that lacks the missing one:
//    the pull downloads that layer (only that one) as an ordinary layer and the image runs; with that layer at the
//    bottom of the image, the snapshotter downloads it itself, so containerd downloads none of the store layers
//    above it; once the substituter
//    has the path, the same layer comes from the store plus the substituter, not from the registry.
import { test, describe, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { basename, dirname, join } from "node:path";
import { gcRootsDir } from "../../../src/servers/snapshotter/gcroots.js";
import { criImageName } from "../../../src/servers/cri/image-service.js";
import {
  blobGets,
  chainIds,
  isChainSnapshot,
  layerStorePaths,
  kickContainerdGc,
  listSnapshots,
  logSize,
  pushBuilt,
  pushNixociImage,
  pushReorderedImage,
  registryLogLines,
  rpcLines,
  startCriStack,
  stopStackLeavingNoMounts,
  type CriStack,
  type PushedImage,
  untilSnapshotterEmpty,
} from "../../support/cri.js";
import {
  criRuntimeClient,
  runInPod,
  startInPod,
  type CriRuntimeClient,
  type PodContainer,
} from "../../support/cri-runtime.js";
import { until } from "../../support/poll.js";
import { mountsUnder } from "../../support/daemons.js";
import {
  buildFixtures,
  generateCacheKey,
  makeNixCache,
  type CacheKey,
  type FixtureAttr,
} from "../../support/fixtures.js";
import { buildDescription, startImageService, type ImageService } from "../../support/image-service.js";
import { makeImage } from "../../support/make-image.js";
import { run, runText } from "../../support/run.js";
import { logRecords, tail } from "../../support/snapshotter.js";
import { containerdUnderTest } from "../../support/containerd-release.js";

const release = containerdUnderTest();
/** Whether this containerd mounts Mount.target (1.7 and later): auto mode then binds the store's own paths. */
const mountsTargets = release.series !== "1.6";
const HELLO = "Hello from nixoci!\n";
const SLEEP = "100000";

describe(`node scenarios through containerd ${release.series}: nixoci's image service and snapshotter, pods through CRI`, () => {
  let fx: Record<FixtureAttr, string>;
  let stack: CriStack | undefined;
  let svc: ImageService | undefined;
  let rt: CriRuntimeClient | undefined;
  /** containerd's own directory (root, state: where its shims mount rootfs). */
  let containerdDir: string;
  let logDir: string;
  /** The substituter the snapshotter reads, and the key it trusts. */
  let liveCache: string;
  let cacheKey: CacheKey;
  /** The pods' sandbox image (RunPodSandbox pulls it). */
  let pause: PushedImage;
  let pauseRef: string;
  /** Pods still running (a failed test's), removed by afterEach(). */
  const live = new Set<PodContainer>();

  before(
    async () => {
      fx = buildFixtures();
      stack = await startCriStack({
        prefix: "nodesc",
        snapshotterArgs: (dir) => {
          // A signed cache that lacks the path scenario 3 removes from the store (it is published there later):
          // the snapshotter opens it at its first substitution and must find a cache there.
          cacheKey = generateCacheKey("nixoci-node-scenarios", join(dir, "keys"));
          liveCache = join(dir, "cache");
          const url = makeNixCache({
            paths: [fx["empty-file"]],
            dir: liveCache,
            compression: "xz",
            secretKeyFile: cacheKey.secretKeyFile,
          });
          return [
            "--store",
            "/nix/store",
            "--nix-layers",
            "auto",
            "--containerd-version",
            release.series,
            "--substituter",
            url,
            "--trusted-public-key",
            cacheKey.publicKey,
          ];
        },
        sandboxImage: "nixoci/pause:v1",
      });
      containerdDir = dirname(stack.containerd.root);
      logDir = join(stack.dir, "pod-logs");
      mkdirSync(logDir);
      // The pods' sandbox image: a nix image too, whose process sleeps.
      pause = pushNixociImage(stack.registry, {
        installables: [fx.busybox],
        repo: "nixoci/pause",
        entrypoint: `${fx.busybox}/bin/busybox sleep ${SLEEP}`,
        workDir: stack.dir,
      });
      pauseRef = pause.ref;
      svc = await startImageService(stack.dir, "is", [
        "--containerd",
        stack.containerd.address,
        "--snapshotter",
        "nixoci",
      ]);
      rt = criRuntimeClient(stack.containerd.address);
    },
    { timeout: 240_000 },
  );

  // A failed test's pods and images would fail the tests after it: removed (whatever is left) after each.
  afterEach(async () => {
    for (const c of live) await c.remove(0).catch(() => undefined);
    live.clear();
    const left = await svc?.client.listImages({}).catch(() => undefined);
    for (const i of left?.images ?? [])
      await svc!.client.removeImage({ image: { image: i.id } }).catch(() => undefined);
  });

  after(async () => {
    rt?.close();
    await svc?.stop();
    await stopStackLeavingNoMounts(stack);
  });

  const bb = (): string => `${fx.busybox}/bin/busybox`;

  /** PullImage through the image service (which forwards ordinary references to containerd's CRI). */
  async function pull(ref: string): Promise<string> {
    const pulled = await svc!.client.pullImage({ image: { image: ref } }, { timeoutMs: 120_000 });
    assert.match(pulled.image_ref, /^sha256:[0-9a-f]{64}$/);
    return pulled.image_ref;
  }

  /** A container started in a pod of its own, running until removed. */
  async function startPod(name: string, image: string, command: string[]): Promise<PodContainer> {
    const c = await startInPod(rt!, { name, image, command, logDir });
    live.add(c);
    return c;
  }

  async function removePod(c: PodContainer): Promise<void> {
    await c.remove();
    live.delete(c);
  }

  /** Polls until the container runs and has printed exactly `stdout`. */
  function untilRunning(name: string, c: PodContainer, stdout: string): Promise<void> {
    return until(`${name} runs and printed its output`, 60_000, async () => {
      const s = await c.status();
      assert.equal(s.state, "CONTAINER_RUNNING", `${name}: ${JSON.stringify(s)}`);
      assert.equal(c.stdout(), stdout);
    });
  }

  /** The snapshotter's GC roots (directory names under its gcroots directory for /nix/store). */
  function gcRoots(): string[] {
    const dir = gcRootsDir(stack!.sn.root, { realDir: "/nix/store", storeDir: "/nix/store" });
    return existsSync(dir) ? readdirSync(dir).sort() : [];
  }

  const manifestRoot = (manifestDigest: string): string =>
    `manifest-${manifestDigest.slice("sha256:".length)}`;

  /** Nothing mounted under the snapshotter's directory or containerd's. */
  function assertNoMounts(): void {
    assert.deepEqual(mountsUnder(stack!.dir), [], "the snapshotter's directory has no mount");
    assert.deepEqual(mountsUnder(containerdDir), [], "containerd's root and state have no mount");
  }

  /**
   * CRI RemoveImage (through the image service) of each of `images` and of the pods' sandbox image, then: the
   * snapshotter holds no snapshot and no GC root (containerd's GC runs in the background), nothing is mounted.
   */
  async function removeAll(images: string[]): Promise<void> {
    for (const image of [...images, pauseRef])
      await svc!.client.removeImage({ image: { image } }, { timeoutMs: 60_000 });
    for (const image of [...images, pauseRef])
      assert.equal((await svc!.client.imageStatus({ image: { image } })).image, null, `${image} is gone`);
    await untilSnapshotterEmpty(stack!, () => assert.deepEqual(gcRoots(), [], "no GC root is left"));
    assertNoMounts();
  }

  test(
    "a nix:0 description, a nixoci registry image and a plain image run at once in k8s.io; removed, nothing is left",
    { timeout: 300_000 },
    async () => {
      const s = stack!;
      const description = buildDescription("nixoci-node-scenarios-hello", [
        "--entrypoint",
        `${fx.hello}/bin/hello`,
        fx.hello,
      ]);
      const nixRef = `nix:0${description}`;
      const nixName = criImageName(description);
      const registryImage = pushNixociImage(s.registry, {
        installables: [fx.busybox, fx["single-file"]],
        repo: "nixoci/single-file",
        entrypoint: `${bb()} cat ${fx["single-file"]}`,
        workDir: s.dir,
      });
      const plainText = "a plain image beside nix images\n";
      const plain = await pushBuilt(s.registry, await makeImage({ hello: plainText }), "plain/busybox");

      const nixId = await pull(nixRef);
      const registryId = await pull(registryImage.ref);
      const plainId = await pull(plain.ref);
      assert.equal(new Set([nixId, registryId, plainId]).size, 3);

      // Each prints from its own files, then keeps running, so that all three run at once.
      const pods: Array<[string, PodContainer, string]> = [];
      pods.push([
        "nix0",
        await startPod("nix0", nixRef, [
          `${fx.busybox}/bin/sh`,
          "-c",
          `${fx.hello}/bin/hello && exec ${bb()} sleep ${SLEEP}`,
        ]),
        HELLO,
      ]);
      pods.push([
        "registry",
        await startPod("registry", registryImage.ref, [
          bb(),
          "sh",
          "-c",
          `${bb()} cat ${fx["single-file"]} && exec ${bb()} sleep ${SLEEP}`,
        ]),
        readFileSync(fx["single-file"], "utf8"),
      ]);
      pods.push([
        "plain",
        await startPod("plain", plain.ref, [
          "/bin/busybox",
          "sh",
          "-c",
          `/bin/busybox cat /hello.txt && exec /bin/busybox sleep ${SLEEP}`,
        ]),
        plainText,
      ]);
      for (const [name, c, out] of pods) await untilRunning(name, c, out);
      // All three at the same time: none has exited meanwhile.
      for (const [name, c] of pods) assert.equal((await c.status()).state, "CONTAINER_RUNNING", name);
      // Each container sees its own image's files, not another's.
      const [nix0, reg, pl] = pods.map(([, c]) => c);
      assert.deepEqual(await nix0.exec([`${fx.hello}/bin/hello`]), {
        stdout: HELLO,
        stderr: "",
        exitCode: 0,
      });
      assert.deepEqual(await pl.exec(["/bin/busybox", "test", "-e", fx.hello]), {
        stdout: "",
        stderr: "",
        exitCode: 1,
      });
      assert.deepEqual(await reg.exec([bb(), "test", "-e", fx.hello]), {
        stdout: "",
        stderr: "",
        exitCode: 1,
      });
      assert.deepEqual(mountsUnder(s.dir), [], "the snapshotter mounts nothing itself");

      // ListImages (through the image service) lists all three, and the pods' sandbox image: nothing else.
      const list = await svc!.client.listImages({});
      const pauseId = (await svc!.client.imageStatus({ image: { image: pauseRef } })).image?.id;
      assert.ok(pauseId, "the sandbox image was pulled by RunPodSandbox");
      assert.deepEqual(list.images.map((i) => i.id).sort(), [nixId, registryId, plainId, pauseId].sort());
      const tags = (id: string): string[] => list.images.find((i) => i.id === id)!.repo_tags;
      assert.deepEqual(tags(nixId), [nixName]);
      assert.deepEqual(tags(registryId), [registryImage.ref]);
      assert.deepEqual(tags(plainId), [plain.ref]);
      // One namespace: containerd's k8s.io holds them all (besides CRI's digest and ID references).
      const named = s
        .ctr(["images", "ls", "-q"])
        .trim()
        .split("\n")
        .filter((n) => !n.includes("sha256:"))
        .sort();
      assert.deepEqual(named, [nixName, registryImage.ref, plain.ref, pauseRef].sort());
      // The nix images hold GC roots named after their manifests while they are there; the plain one none. The
      // sandbox image's one store layer (busybox) is the same snapshot as the nix:0 image's first layer, which
      // containerd shares without asking the snapshotter: that snapshot keeps holding the nix:0 image's root.
      const descriptionManifest = (
        JSON.parse(readFileSync(join(description, "index.json"), "utf8")) as {
          manifests: Array<{ digest: string }>;
        }
      ).manifests[0].digest;
      assert.deepEqual(
        gcRoots(),
        [descriptionManifest, registryImage.manifestDigest].map(manifestRoot).sort(),
      );

      for (const [, c] of pods) await removePod(c);
      assertNoMounts();
      await removeAll([nixId, registryId, plainId]);
    },
  );

  test(
    "two pods of one image: the store's files in both, separate writable layers, one outlives the other",
    { timeout: 300_000 },
    async () => {
      const s = stack!;
      const image = pushNixociImage(s.registry, {
        installables: [fx.hello, fx.busybox, fx["single-file"]],
        repo: "nixoci/shared",
        entrypoint: "/bin/hello",
        workDir: s.dir,
      });
      const id = await pull(image.ref);
      const a = await startPod("shared-a", image.ref, [bb(), "sleep", SLEEP]);
      const b = await startPod("shared-b", image.ref, [bb(), "sleep", SLEEP]);
      await untilRunning("shared-a", a, "");
      await untilRunning("shared-b", b, "");

      const hello = `${fx.hello}/bin/hello`;
      const st = statSync(hello);
      const single = readFileSync(fx["single-file"], "utf8");
      const ok = (stdout: string) => ({ stdout, stderr: "", exitCode: 0 });
      /**
       * What both pods read of the store: its own file (target: through the image's store view, an overlay,
       * which keeps the inode and shows its own device), or a hard link to it (link, 1.6).
       */
      const readsStore = async (c: PodContainer): Promise<void> => {
        const seen = await c.exec([bb(), "stat", "-L", "-c", "%d %i", hello]);
        assert.equal(seen.exitCode, 0, seen.stderr);
        assert.match(seen.stdout, new RegExp(`^\\d+ ${st.ino}\\n$`), "the store's file");
        assert.deepEqual(await c.exec([hello]), ok(HELLO));
        assert.deepEqual(await c.exec([bb(), "cat", fx["single-file"]]), ok(single));
      };
      await readsStore(a);
      await readsStore(b);

      // Each pod's writes go to its own writable layer.
      assert.deepEqual(
        await a.exec([bb(), "sh", "-c", `echo written-in-a > /written && ${bb()} cat /written`]),
        ok("written-in-a\n"),
      );
      assert.deepEqual(
        await b.exec([bb(), "sh", "-c", `echo written-in-b > /written && ${bb()} cat /written`]),
        ok("written-in-b\n"),
      );
      assert.deepEqual(await a.exec([bb(), "touch", "/only-in-a"]), ok(""));
      assert.deepEqual(await a.exec([bb(), "cat", "/written"]), ok("written-in-a\n"));
      assert.deepEqual(await b.exec([bb(), "cat", "/only-in-a"]), {
        stdout: "",
        stderr: "cat: can't open '/only-in-a': No such file or directory\n",
        exitCode: 1,
      });
      // A write to a store file (through the store view of target mode, or a hard link of link mode): copied up
      // into the writer's layer, and neither the other pod nor the store sees it.
      const append = await a.exec([bb(), "sh", "-c", `echo changed >> ${fx["single-file"]}`]);
      assert.deepEqual(append, ok(""));
      assert.deepEqual(await a.exec([bb(), "cat", fx["single-file"]]), ok(`${single}changed\n`));
      assert.deepEqual(await b.exec([bb(), "cat", fx["single-file"]]), ok(single));
      assert.equal(readFileSync(fx["single-file"], "utf8"), single, "the store's file is unchanged");

      // Removing one pod leaves the other running and reading.
      await removePod(a);
      assert.equal((await b.status()).state, "CONTAINER_RUNNING");
      await readsStore(b);
      assert.deepEqual(await b.exec([bb(), "cat", "/written"]), ok("written-in-b\n"));
      await removePod(b);
      assert.deepEqual(mountsUnder(s.sn.root), [], "nothing mounted under the snapshotter's root");
      assertNoMounts();

      // No container's snapshot is left, but the image's are, and its GC root, until the image is removed.
      // (containerd removes a container's snapshot from its own metadata at once, and from the snapshotter in
      // its background GC.)
      const chains = chainIds(image.diffIds);
      const left = await until(
        "containerd's GC removes the containers' snapshots",
        60_000,
        async () => {
          const now = await listSnapshots(s.sn.socket);
          const active = now.filter((i) => i.kind !== "COMMITTED").map((i) => `${i.kind} ${i.name}`);
          if (active.length) kickContainerdGc(s); // a deletion its GC scheduler dropped (see kickContainerdGc)
          assert.deepEqual(active, [], "no active snapshot or view is left");
          return now;
        },
        250,
      );
      for (const c of chains)
        assert.ok(
          left.some((i) => isChainSnapshot(i.name, c)),
          `the image's snapshot ${c} is still there: ${left.map((i) => i.name).join(", ")}`,
        );
      assert.ok(gcRoots().includes(manifestRoot(image.manifestDigest)), gcRoots().join(" "));

      // Removed, its snapshots go (but those the sandbox image shares: the same busybox layer), and its root.
      await svc!.client.removeImage({ image: { image: id } }, { timeoutMs: 60_000 });
      const pauseChains = chainIds(pause.diffIds);
      const own = chains.filter((c) => !pauseChains.includes(c));
      await until(
        "containerd's GC removes the image's snapshots and its GC root",
        60_000,
        async () => {
          const now = await listSnapshots(s.sn.socket);
          const ours = now.filter((i) => own.some((c) => isChainSnapshot(i.name, c)));
          if (ours.length) kickContainerdGc(s);
          assert.deepEqual(
            ours.map((i) => i.name),
            [],
            "the image's snapshots are gone",
          );
          assert.ok(!gcRoots().includes(manifestRoot(image.manifestDigest)), gcRoots().join(" "));
        },
        250,
      );
      await removeAll([]);
    },
  );

  test(
    "a layer whose store paths are partly missing is downloaded when no substituter has them, else completed from the substituter",
    { timeout: 300_000 },
    async () => {
      const s = stack!;
      // A store path no other test or run has (the runs of every release share /nix/store), and an image
      // whose top store layer groups it with hello: --max-layers 4 gives busybox and greeting (the popular
      // ones) a layer each and groups the rest.
      const text = `nixoci node scenarios: a path missing from the store (${release.series}, ${process.pid}, ${Date.now()})\n`;
      const file = join(s.dir, "partly-missing.txt");
      writeFileSync(file, text);
      const absent = runText("nix-store", ["--add", file]).trim();
      try {
        const image = pushNixociImage(s.registry, {
          installables: [fx.hello, absent],
          repo: "nixoci/partly-missing",
          entrypoint: JSON.stringify([
            `${fx.busybox}/bin/sh`,
            "-c",
            `${fx.hello}/bin/hello && ${fx.busybox}/bin/cat ${absent}`,
          ]),
          workDir: s.dir,
          buildArgs: ["--max-layers", "4"],
        });
        const paths = image.layers.map((l) => layerStorePaths(l).sort());
        assert.deepEqual(paths, [[fx.busybox], [fx.greeting], [fx.hello, absent].sort(), []]);
        const partial = image.layers[2];
        const custom = image.layers[3];
        const partialChain = chainIds(image.diffIds)[2];
        const expected = { stdout: `${HELLO}${text}`, exitCode: 0 };

        // A cache of the path (signed with the key the snapshotter trusts), kept aside for now; then the path
        // leaves the store.
        const staging = join(s.dir, "staging-cache");
        makeNixCache({
          paths: [absent],
          dir: staging,
          compression: "xz",
          secretKeyFile: cacheKey.secretKeyFile,
        });
        run("nix-store", ["--delete", absent]);
        assert.equal(existsSync(absent), false);

        // 1. No substituter has it: the pull succeeds, downloading exactly that layer (and the customisation
        //    layer, which is never in the store); the other store layers come from the store.
        const layerDigests = new Set(image.layers.map((l) => l.digest));
        let regFrom = registryLogLines(s.registry);
        let logFrom = logSize(s.sn);
        const id = await pull(image.ref);
        const fetched = (from: number): string[] =>
          [...new Set(blobGets(s.registry, from).filter((d) => layerDigests.has(d)))].sort();
        assert.deepEqual(fetched(regFrom), [partial.digest, custom.digest].sort(), tail(s.sn.logFile));
        const failed = logRecords(s.sn, "nix layer: substitution failed; unpacking the layer").filter(
          (r) => r.ref === partialChain,
        );
        assert.equal(failed.length, 1, tail(s.sn.logFile));
        assert.match(
          String(failed[0].error),
          new RegExp(`${absent}.*not found in any of: file://${liveCache}`),
        );
        // The unpacker's Prepares (keyed "NS/N/extract-... CHAIN"; an ALREADY_EXISTS is logged without its
        // labels): the first two store layers answered ALREADY_EXISTS (from the store), the partial one is an
        // ordinary Prepare, committed once unpacked.
        const rpcs = rpcLines(s.sn, logFrom);
        const answers = (chain: string): string[] => [
          ...new Set(
            rpcs
              .filter((r) => r.method === "Prepare" && (r.key ?? "").endsWith(` ${chain}`))
              .map((r) => r.code ?? "OK"),
          ),
        ];
        const chains = chainIds(image.diffIds);
        assert.deepEqual(
          chains.slice(0, 3).map(answers),
          [["ALREADY_EXISTS"], ["ALREADY_EXISTS"], ["OK"]],
          JSON.stringify(rpcs.filter((r) => r.method === "Prepare")),
        );
        const partialKey = rpcs.find(
          (r) => r.method === "Prepare" && (r.key ?? "").endsWith(` ${partialChain}`),
        )!.key;
        assert.ok(
          rpcs.some((r) => r.method === "Commit" && r.key === partialKey && r.code === undefined),
          `the partial layer's snapshot ${partialKey} is committed`,
        );
        assert.equal(existsSync(absent), false, "the layer was unpacked, not the store completed");
        assert.deepEqual(
          await runInPod(rt!, { name: "partly-missing-1", image: image.ref, logDir }),
          expected,
        );
        await removeAll([id]);

        // 1b. The same layers with the partial one at the bottom: containerd's unpacker would download every layer
        //     from the first one it has to unpack on, the store layers above it too. The snapshotter sees in the
        //     image's manifest that the layers above are in the store, downloads the partial layer itself (from
        //     the registry CRI's labels name) and answers ALREADY_EXISTS: containerd downloads only the
        //     customisation layer, the store layers above come from the store.
        const low = await pushReorderedImage(s.registry, image, "nixoci/partly-missing-low", [2, 0, 1, 3]);
        const lowChains = chainIds(low.diffIds);
        regFrom = registryLogLines(s.registry);
        logFrom = logSize(s.sn);
        const lowId = await pull(low.ref);
        assert.deepEqual(
          blobGets(s.registry, regFrom)
            .filter((d) => layerDigests.has(d))
            .sort(),
          [partial.digest, custom.digest].sort(),
          tail(s.sn.logFile),
        );
        const lowRpcs = rpcLines(s.sn, logFrom);
        assert.deepEqual(
          lowChains
            .slice(0, 3)
            .map((chain) => [
              ...new Set(
                lowRpcs
                  .filter((r) => r.method === "Prepare" && (r.key ?? "").endsWith(` ${chain}`))
                  .map((r) => r.code ?? "OK"),
              ),
            ]),
          [["ALREADY_EXISTS"], ["ALREADY_EXISTS"], ["ALREADY_EXISTS"]],
          JSON.stringify(lowRpcs.filter((r) => r.method === "Prepare")),
        );
        assert.deepEqual(
          logRecords(s.sn, "nix layer: paths missing from the store; fetched the layer from the registry")
            .filter((r) => r.ref === lowChains[0])
            .map((r) => [r.digest, r.missing, r.first]),
          [[partial.digest, 1, absent]],
          tail(s.sn.logFile),
        );
        assert.equal(existsSync(absent), false, "the layer was unpacked, not the store completed");
        assert.deepEqual(
          await runInPod(rt!, { name: "partly-missing-low", image: low.ref, logDir }),
          expected,
        );
        await removeAll([lowId]);

        // 2. Once the substituter has the path (published from the staging cache), the same layer is completed
        //    from the store plus the substituter: only the customisation layer is downloaded.
        const narinfo = `${basename(absent).slice(0, 32)}.narinfo`;
        const narUrl = /^URL: (\S+)$/m.exec(readFileSync(join(staging, narinfo), "utf8"))![1];
        mkdirSync(dirname(join(liveCache, narUrl)), { recursive: true });
        copyFileSync(join(staging, narUrl), join(liveCache, narUrl));
        copyFileSync(join(staging, narinfo), join(liveCache, narinfo));
        regFrom = registryLogLines(s.registry);
        logFrom = logSize(s.sn);
        const again = await pull(image.ref);
        assert.equal(again, id);
        assert.deepEqual(fetched(regFrom), [custom.digest], tail(s.sn.logFile));
        const substituted = logRecords(s.sn, "nix layer: substituted").filter((r) => r.ref === partialChain);
        assert.deepEqual(
          substituted.map((r) => r.paths),
          [1],
        );
        const committed = logRecords(s.sn, "nix layer: committed from the store").filter(
          (r) => r.ref === partialChain,
        );
        assert.deepEqual(
          committed.map((r) => [r.paths, r.mode]),
          [[2, mountsTargets ? "target" : "link"]],
        );
        runText("nix-store", ["--check-validity", absent]);
        assert.equal(readFileSync(absent, "utf8"), text);
        // The image's GC root holds every store path, the substituted one too.
        const rootDir = join(
          gcRootsDir(s.sn.root, { realDir: "/nix/store", storeDir: "/nix/store" }),
          manifestRoot(image.manifestDigest),
        );
        assert.deepEqual(
          readdirSync(rootDir).sort(),
          [fx.busybox, fx.greeting, fx.hello, absent].map((p) => basename(p)).sort(),
        );
        assert.deepEqual(
          await runInPod(rt!, { name: "partly-missing-2", image: image.ref, logDir }),
          expected,
        );
        await removeAll([id]);
      } finally {
        // Garbage now (no root holds it): not left in the shared store.
        if (existsSync(absent)) run("nix-store", ["--delete", absent]);
      }
    },
  );
});
