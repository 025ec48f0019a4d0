// The lazy-pull path the snapshotter relies on, with the real containerd 1.6 CRI plugin: a nixoci image pushed to
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
import { mkdirSync, mkdtempSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { criImageClient, type CriImageClient } from "../../src/cri/grpc.js";
import { startContainerd, startRegistry, type Containerd, type Registry } from "../support/daemons.js";
import { buildFixtures } from "../support/fixtures.js";
import { nixociOk } from "../support/cli.js";
import {
  removeSnapshotterDir,
  startSnapshotter,
  stopSnapshotter,
  type Snapshotter,
} from "../support/snapshotter.js";

const NS = "k8s.io";

/**
 * The CRI section for containerd 1.6.20 (appended by startContainerd, which then leaves the CRI plugin enabled).
 * Found by trying: the plugin starts with no settings at all (a missing CNI config is only logged as an error,
 * and only matters for pod networking; the streaming server defaults to 127.0.0.1 on a random port; the
 * sandbox image is only used by RunPodSandbox). What matters here:
 * - `.containerd` `snapshotter`: the proxy plugin's name; CRI pulls unpack into it.
 * - `.containerd` `disable_snapshot_annotations = false` (1.6's default is true): then the CRI plugin adds the
 *   `containerd.io/snapshot/cri.*` labels (layer digest, image ref, manifest digest, remaining layers). At the
 *   `[plugins."io.containerd.grpc.v1.cri"]` level the key has no effect. The layer descriptors' own
 *   `containerd.io/snapshot/...` annotations (nix-store-path.<i>) reach Prepare either way.
 * - A registry mirror with an `http://` endpoint: plain HTTP for the registry. (For 127.0.0.1 and localhost
 *   1.6's CRI already defaults to http, so loopback pulls work without it; other hosts need it.)
 * - CNI directories in the temp dir, so nothing system-wide is read.
 */
function criConfig(opts: { dir: string; registryHost: string; snapshotter: string }): string {
  const q = (s: string): string => JSON.stringify(s);
  return [
    `[plugins."io.containerd.grpc.v1.cri"]`,
    `  stream_server_address = "127.0.0.1"`,
    `  stream_server_port = "0"`,
    `  [plugins."io.containerd.grpc.v1.cri".containerd]`,
    `    snapshotter = ${q(opts.snapshotter)}`,
    `    disable_snapshot_annotations = false`,
    `  [plugins."io.containerd.grpc.v1.cri".cni]`,
    `    bin_dir = ${q(join(opts.dir, "cni-bin"))}`,
    `    conf_dir = ${q(join(opts.dir, "cni-conf"))}`,
    `  [plugins."io.containerd.grpc.v1.cri".registry.mirrors.${q(opts.registryHost)}]`,
    `    endpoint = [${q(`http://${opts.registryHost}`)}]`,
  ].join("\n");
}

/** The snapshotter at debug level (Prepare/Commit labels are logged) over the given store. */
const startStoreSnapshotter = (dir: string, store: string): Promise<Snapshotter> =>
  startSnapshotter(dir, ["--store", store]);

interface RpcLine {
  msg: string;
  method?: string;
  key?: string;
  parent?: string;
  name?: string;
  code?: string;
  labels?: Record<string, string>;
}

function rpcLines(sn: Snapshotter): RpcLine[] {
  const out: RpcLine[] = [];
  for (const line of readFileSync(sn.logFile, "utf8").split("\n")) {
    if (!line.startsWith("{")) continue;
    try {
      const r = JSON.parse(line) as RpcLine;
      if (r.msg === "rpc") out.push(r);
    } catch {
      // not ours
    }
  }
  return out;
}

/** "METHOD /v2/... STATUS" for each request docker-registry's access log recorded. */
function registryRequests(reg: Registry, fromLine = 0): string[] {
  const out: string[] = [];
  for (const line of reg.log().split("\n").slice(fromLine)) {
    const m = /"(GET|HEAD|PUT|POST|PATCH|DELETE) (\/v2\/\S*) HTTP\/[\d.]+" (\d{3})/.exec(line);
    if (m) out.push(`${m[1]} ${m[2]} ${m[3]}`);
  }
  return out;
}

/** Retries fn until it resolves, at most timeoutMs; the last error is thrown with `what`. */
async function until<T>(what: string, timeoutMs: number, fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (err) {
      if (Date.now() > deadline)
        throw new Error(`${what}: not ready after ${timeoutMs / 1000} s: ${String(err)}`, { cause: err });
      await sleep(200);
    }
  }
}

for (const withStore of [false, true])
  describe(`CRI PullImage through containerd 1.6 with the nixoci snapshotter (${withStore ? "store present" : "empty store"})`, () => {
    let dir: string;
    let registry: Registry | undefined;
    let sn: Snapshotter | undefined;
    let containerd: Containerd | undefined;
    let cri: CriImageClient | undefined;
    let ref: string;
    let manifestDigest: string;
    let layers: { digest: string; annotations?: Record<string, string> }[];

    before(
      async () => {
        // Unix socket paths are limited to 107 bytes: a short temp dir.
        dir = mkdtempSync(join("/tmp", "nixoci-cri-"));
        const fx = buildFixtures();
        registry = await startRegistry();
        ref = `${registry.host}/nixoci/hello:v1`;
        const layout = join(dir, "oci");
        manifestDigest = nixociOk([
          "build",
          "--entrypoint",
          "/bin/hello",
          fx.hello,
          "-o",
          `docker://${ref}`,
          "-o",
          `oci:${layout}:v1`,
          "-q",
        ])
          .text.trim()
          .split("\n")
          .pop()!;
        const manifest = JSON.parse(readBlob(layout, manifestDigest)) as {
          layers: { digest: string; annotations?: Record<string, string> }[];
        };
        layers = manifest.layers;
        // An empty store: no layer's paths are present, so every Prepare is an ordinary one (logged with its labels)
        // and every layer is downloaded. With the fixtures' store (/nix/store) the snapshotter answers the store
        // layers' Prepares with ALREADY_EXISTS instead, and containerd fetches neither their blobs nor unpacks them.
        const store = withStore ? "/nix/store" : join(dir, "empty-store");
        if (!withStore) mkdirSync(store, { recursive: true });
        sn = await startStoreSnapshotter(dir, store);
        mkdirSync(join(dir, "cni-bin"));
        mkdirSync(join(dir, "cni-conf"));
        containerd = await startContainerd({
          proxyPlugins: { nixoci: { type: "snapshot", address: sn.socket } },
          criConfig: criConfig({ dir, registryHost: registry.host, snapshotter: "nixoci" }),
        });
        cri = criImageClient(containerd.address);
        // The CRI plugin registers its services with containerd's gRPC server at start; ImageFsInfo answers once
        // the plugin's snapshot syncer has run.
        await until("CRI ImageFsInfo", 30_000, () => cri!.imageFsInfo({}, { timeoutMs: 5000 }));
      },
      { timeout: 240_000 },
    );

    after(async () => {
      cri?.close();
      await containerd?.stop();
      await stopSnapshotter(sn);
      await registry?.stop();
      if (dir) await removeSnapshotterDir(dir, Boolean(process.env.NIXOCI_KEEP_TMP));
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

/** A blob of an OCI layout by digest. */
function readBlob(layout: string, digest: string): string {
  const [alg, hex] = digest.split(":");
  return readFileSync(join(layout, "blobs", alg, hex), "utf8");
}
