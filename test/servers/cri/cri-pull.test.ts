// The lazy-pull path the snapshotter relies on, with the real containerd CRI plugin (NIXOCI_CONTAINERD): a nixoci image pushed to
// a docker-registry is pulled the way a kubelet pulls it (CRI PullImage over containerd's main gRPC socket) with
// the CRI plugin's snapshotter set to nixoci's proxy snapshotter and snapshot annotations enabled. The test checks
// that Prepare receives the layer descriptors' `containerd.io/snapshot/nix-store-path.<i>` annotations as labels
// (with `containerd.io/snapshot.ref`), that ImageStatus / ListImages / RemoveImage work, and that
// `ctr -n k8s.io run --snapshotter nixoci` runs the image; it prints which blobs the registry served.
//
// Every daemon (registry, snapshotter, containerd) is a child process, so the synchronous `ctr` calls cannot
// deadlock anything; every wait is bounded and `after` stops everything.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import type { CriImageClient } from "../../../src/proto/cri.js";
import type { Containerd, Registry } from "../../support/daemons.js";
import { buildFixtures } from "../../support/fixtures.js";
import {
  CRI_NAMESPACE,
  pushNixociImage,
  registryRequests,
  rpcLines,
  startCriStack,
  type CriStack,
} from "../../support/cri.js";
import type { Snapshotter } from "../../support/snapshotter.js";
import { containerdUnderTest } from "../../support/containerd-release.js";

const NS = CRI_NAMESPACE;

for (const withStore of [false, true])
  describe(`CRI PullImage through containerd ${containerdUnderTest().series} with the nixoci snapshotter (${withStore ? "store present" : "empty store"})`, () => {
    let stack: CriStack | undefined;
    let registry: Registry | undefined;
    let sn: Snapshotter | undefined;
    let containerd: Containerd | undefined;
    let cri: CriImageClient | undefined;
    let ref: string;
    let manifestDigest: string;
    let layers: { digest: string; annotations?: Record<string, string> }[];

    before(
      async () => {
        const fx = buildFixtures();
        // An empty store: no layer's paths are present, so every Prepare is an ordinary one (logged with its labels)
        // and every layer is downloaded. With the fixtures' store (/nix/store) the snapshotter answers the store
        // layers' Prepares with ALREADY_EXISTS instead, and containerd fetches neither their blobs nor unpacks them.
        stack = await startCriStack({
          prefix: "cri",
          snapshotterArgs: (dir) => {
            if (withStore) return ["--store", "/nix/store"];
            mkdirSync(join(dir, "empty-store"));
            return ["--store", join(dir, "empty-store")];
          },
        });
        ({ registry, sn, containerd, cri } = stack);
        const image = pushNixociImage(stack.registry, {
          installables: [fx.hello],
          entrypoint: "/bin/hello",
          repo: "nixoci/hello",
          workDir: stack.dir,
        });
        ({ ref, manifestDigest, layers } = image);
      },
      { timeout: 240_000 },
    );

    after(async () => {
      await stack?.stop();
    });

    test(
      "PullImage hands the layer annotations to Prepare; status, list, run and remove",
      { timeout: 240_000 },
      async () => {
        const storeLayers = layers.filter((l) =>
          Object.keys(l.annotations ?? {}).some((k) =>
            k.startsWith("containerd.io/snapshot/nix-store-path."),
          ),
        );
        assert.ok(storeLayers.length >= 1, "the image has store layers annotated with their paths");

        const registryLogStart = registry!.log().split("\n").length - 1;
        const pulled = await cri!.pullImage({ image: { image: ref } }, { timeoutMs: 120_000 });
        assert.match(pulled.image_ref, /^sha256:[0-9a-f]{64}$/);

        // What the registry served (today every layer is downloaded; the snapshotter will avoid those downloads).
        const served = registryRequests(registry!, registryLogStart).filter((l) => /^(GET|HEAD) /.test(l));
        console.log(`registry requests during PullImage:\n${served.join("\n")}`);
        const blobGets = served.filter((l) => /^GET \/v2\/nixoci\/hello\/blobs\//.test(l));
        console.log(
          `layer blobs fetched: ${layers.filter((l) => blobGets.some((g) => g.includes(l.digest))).length}/${layers.length}`,
        );

        if (withStore) {
          // The store holds every path: the snapshotter commits those layers from the store and containerd never
          // asks the registry for their blobs; only the customisation layer (and config) are downloaded.
          for (const layer of storeLayers) {
            assert.ok(
              !blobGets.some((g) => g.includes(layer.digest)),
              `store layer ${layer.digest} was not fetched`,
            );
          }
          assert.ok(blobGets.length >= 1, "the customisation layer and config are fetched");
        }

        // Prepare of every store layer carried its annotations as labels, plus containerd.io/snapshot.ref.
        const rpcs = rpcLines(sn!);
        const prepares = rpcs.filter((r) => r.method === "Prepare");
        const commits = rpcs.filter((r) => r.method === "Commit");
        console.log("snapshotter Prepare/Commit during PullImage:");
        for (const r of [...prepares, ...commits])
          console.log(
            JSON.stringify({
              method: r.method,
              key: r.key,
              parent: r.parent,
              name: r.name,
              code: r.code,
              labels: r.labels,
            }),
          );
        for (const layer of withStore ? [] : storeLayers) {
          const want = Object.entries(layer.annotations!).filter(([k]) =>
            k.startsWith("containerd.io/snapshot/"),
          );
          const p = prepares.find((r) => want.every(([k, v]) => r.labels?.[k] === v));
          assert.ok(p, `a Prepare with the labels of layer ${layer.digest}: ${JSON.stringify(want)}`);
          assert.match(p.labels!["containerd.io/snapshot.ref"] ?? "", /^sha256:[0-9a-f]{64}$/);
          // With snapshot annotations enabled the CRI plugin also names the layer, the manifest and the image.
          assert.equal(p.labels!["containerd.io/snapshot/cri.layer-digest"], layer.digest);
          assert.equal(p.labels!["containerd.io/snapshot/cri.manifest-digest"], manifestDigest);
          assert.equal(p.labels!["containerd.io/snapshot/cri.image-ref"], ref);
          // Commit of the same key carries the same labels.
          const c = commits.find((r) => r.key === p.key);
          assert.ok(c, `a Commit of ${p.key}`);
          for (const [k, v] of want) assert.equal(c.labels?.[k], v, k);
          assert.match(
            p.key ?? "",
            new RegExp(`^${NS}/\\d+/extract-`),
            "containerd's metadata layer names the key",
          );
        }

        // ImageStatus and ListImages show it; ImageFsInfo answers.
        const st = await cri!.imageStatus({ image: { image: ref } });
        assert.ok(st.image, "ImageStatus finds the pulled image");
        assert.equal(st.image.id, pulled.image_ref);
        assert.ok(st.image.repo_tags.includes(ref), JSON.stringify(st.image.repo_tags));
        assert.ok(
          st.image.repo_digests.includes(`${registry!.host}/nixoci/hello@${manifestDigest}`),
          JSON.stringify(st.image.repo_digests),
        );
        assert.ok(st.image.size > 0);
        const listed = await cri!.listImages({});
        assert.ok(listed.images.some((i) => i.id === pulled.image_ref && i.repo_tags.includes(ref)));
        const fs = await cri!.imageFsInfo({});
        assert.ok(fs.image_filesystems.length >= 1);

        // The image runs through the snapshotter from containerd's k8s.io namespace.
        const out = containerd!
          .ctr(["-n", NS, "run", "--snapshotter", "nixoci", "--rm", ref, `nixoci-cri-${withStore ? 2 : 1}`])
          .toString();
        assert.equal(out, "Hello from nixoci!\n");

        // RemoveImage removes it (by id); ImageStatus then has no image; a second RemoveImage is not an error.
        await cri!.removeImage({ image: { image: pulled.image_ref } });
        assert.equal((await cri!.imageStatus({ image: { image: ref } })).image, null);
        assert.ok(!(await cri!.listImages({})).images.some((i) => i.id === pulled.image_ref));
        await cri!.removeImage({ image: { image: pulled.image_ref } });
      },
    );
  });
