// Shared pieces for tests that drive containerd's CRI plugin (the release under test: NIXOCI_CONTAINERD, see
// containerd-release.ts) with nixoci's proxy snapshotter.
//
// - criConfig: the CRI sections in the release's schema (criNodeConfig: plain-HTTP registry hosts, private CNI
//   dirs; criSnapshotterConfig: snapshotter = nixoci, snapshot annotations on).
// - startCriStack: a docker-registry, a `nixoci snapshotter` and containerd with the CRI plugin, all child
//   processes on loopback / unix sockets under one short temp dir, plus a CRI ImageService client; `stop()`
//   ends everything by pid and removes the dir (and the snapshotter's GC roots under /nix/var for /nix/store).
//   Several stacks (nodes) may share one registry the test starts (the `registry` option).
// - startSubstitutingStack / substituterArgs: a stack whose snapshotter substitutes from a signed file:// cache.
// - pushNixociImage: `nixoci build ... -o docker://REGISTRY/REPO:TAG -o oci:LAYOUT` and what the manifest says.
// - pushModifiedImage / pushReorderedImage / layoutImage: push a variant of a built image (e.g. with changed layer
//   annotations, or its layers in another order).
// - log readers (rpcLines for the snapshotter's rpc log, registryRequests / blobGets for the registry's access
//   log), listSnapshots (the snapshotter's own List), and chainIds / isChainSnapshot (the bounded poller
//   `until` is in poll.ts), untilSnapshotterEmpty and checkSnapshotsConsistent (after removals and restarts).
//
// Every wait here is bounded; nothing runs a server in the test process, so synchronous `ctr` calls are safe.
import { NIX_CLOSURE_ROOT_ANNOTATION, storePathsFromAnnotations } from "../../src/image/annotations.js";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { criImageClient, type CriImageClient } from "../../src/proto/cri.js";
import { BlobStore } from "../../src/oci/blob-store.js";
import { sha256Digest, type Digest } from "../../src/oci/digest.js";
import type { BuiltImage } from "../../src/oci/image.js";
import { pushImage } from "../../src/outputs/push.js";
import { snapshotsClient } from "../../src/proto/containerd.js";
import { nixociOk } from "./cli.js";
import { until } from "./poll.js";
import { containerdUnderTest, type ContainerdRelease } from "./containerd-release.js";
import { mountsUnder, startContainerd, startRegistry, type Containerd, type Registry } from "./daemons.js";
import { makeSignedNixCache } from "./fixtures.js";
import { removeSnapshotterDir, startSnapshotter, stopSnapshotter, type Snapshotter } from "./snapshotter.js";

/** The containerd namespace of CRI images and containers. */
export const CRI_NAMESPACE = "k8s.io";
/** The proxy plugin name the stack registers the snapshotter under. */
export const SNAPSHOTTER_NAME = "nixoci";

/**
 * The CRI sections for the containerd under test (appended by startContainerd, which then leaves the CRI plugin
 * enabled): criNodeConfig's node settings plus criSnapshotterConfig's snapshotter settings.
 */
export function criConfig(opts: {
  dir: string;
  registryHost: string;
  snapshotter: string;
  release?: ContainerdRelease;
  sandboxImage?: string;
}): string {
  return [criNodeConfig(opts), criSnapshotterConfig(opts)].join("\n");
}

/**
 * What a test node needs besides the snapshotter, in the release's schema (1.x: one `io.containerd.grpc.v1.cri`
 * table; 2.x: split into `io.containerd.grpc.v1.cri` for the server, `io.containerd.cri.v1.runtime` and
 * `io.containerd.cri.v1.images`). Found by trying: the plugin starts with no settings at all (a missing CNI config
 * is only logged as an error, and only matters for pod networking; the sandbox image is only used by
 * RunPodSandbox). What is set:
 * - the streaming server on 127.0.0.1, a random port (1.6's default; said so for every release);
 * - CNI directories in the temp dir (`DIR/cni-bin`, `DIR/cni-conf`, made here), so nothing system-wide is read;
 * - the registry as plain HTTP through a hosts directory (`registry.config_path` = DIR/certs.d, with
 *   `certs.d/HOST/hosts.toml` written here), the one registry setting all three releases read: 1.7 deprecates
 *   `registry.mirrors`, and 2.1 also takes it as a reason to leave the transfer service. (For 127.0.0.1 and
 *   localhost every release already defaults to http; other hosts need it.)
 */
export function criNodeConfig(opts: {
  dir: string;
  registryHost: string;
  release?: ContainerdRelease;
  /**
   * The pod sandbox ("pause") image RunPodSandbox runs (1.x: sandbox_image; 2.x: pinned_images.sandbox). With it,
   * restrict_oom_score_adj = true: CRI gives sandboxes oom_score_adj -998, and these machines refuse lowering it
   * (runc's init then dies: "can't get final child's PID from pipe: EOF"); restricted, CRI keeps containerd's own.
   */
  sandboxImage?: string;
}): string {
  const release = opts.release ?? containerdUnderTest();
  const q = (s: string): string => JSON.stringify(s);
  const hostsDir = join(opts.dir, "certs.d");
  mkdirSync(join(hostsDir, opts.registryHost), { recursive: true });
  const url = `http://${opts.registryHost}`;
  writeFileSync(
    join(hostsDir, opts.registryHost, "hosts.toml"),
    [`server = ${q(url)}`, `[host.${q(url)}]`, `  capabilities = ["pull", "resolve", "push"]`, ""].join("\n"),
  );
  for (const d of ["cni-bin", "cni-conf"]) mkdirSync(join(opts.dir, d), { recursive: true });
  const server = [
    `[plugins."io.containerd.grpc.v1.cri"]`,
    `  stream_server_address = "127.0.0.1"`,
    `  stream_server_port = "0"`,
    ...(opts.sandboxImage && release.configVersion === 2
      ? [`  sandbox_image = ${q(opts.sandboxImage)}`, `  restrict_oom_score_adj = true`]
      : []),
  ];
  if (release.configVersion === 2)
    return [
      ...server,
      `  [plugins."io.containerd.grpc.v1.cri".cni]`,
      `    bin_dir = ${q(join(opts.dir, "cni-bin"))}`,
      `    conf_dir = ${q(join(opts.dir, "cni-conf"))}`,
      `  [plugins."io.containerd.grpc.v1.cri".registry]`,
      `    config_path = ${q(hostsDir)}`,
    ].join("\n");
  return [
    ...server,
    ...(opts.sandboxImage
      ? [`[plugins."io.containerd.cri.v1.runtime"]`, `  restrict_oom_score_adj = true`]
      : []),
    `[plugins."io.containerd.cri.v1.runtime".cni]`,
    `  bin_dirs = [${q(join(opts.dir, "cni-bin"))}]`,
    `  conf_dir = ${q(join(opts.dir, "cni-conf"))}`,
    `[plugins."io.containerd.cri.v1.images".registry]`,
    `  config_path = ${q(hostsDir)}`,
    ...(opts.sandboxImage
      ? [`[plugins."io.containerd.cri.v1.images".pinned_images]`, `  sandbox = ${q(opts.sandboxImage)}`]
      : []),
  ].join("\n");
}

/**
 * The CRI image settings that send pulls through `snapshotter`, in the release's schema:
 * - `snapshotter`: the proxy plugin's name (1.x: under `[plugins."io.containerd.grpc.v1.cri".containerd]`; 2.x:
 *   `[plugins."io.containerd.cri.v1.images"]`); CRI pulls unpack into it.
 * - `disable_snapshot_annotations = false` beside it (every release defaults to true): then the CRI plugin adds
 *   the `containerd.io/snapshot/cri.*` labels (layer digest, image ref, manifest digest, remaining layers). At the
 *   `[plugins."io.containerd.grpc.v1.cri"]` level of 1.x the key has no effect. On 2.1 the setting also makes CRI
 *   pull as 1.x and 2.0 do (client pull) instead of through the transfer service, which adds no such labels. The
 *   layer descriptors' own `containerd.io/snapshot/...` annotations (nix-store-path.<i>) reach Prepare either way.
 */
export function criSnapshotterConfig(opts: { snapshotter: string; release?: ContainerdRelease }): string {
  const release = opts.release ?? containerdUnderTest();
  const table =
    release.configVersion === 2
      ? `[plugins."io.containerd.grpc.v1.cri".containerd]`
      : `[plugins."io.containerd.cri.v1.images"]`;
  return [
    table,
    `  snapshotter = ${JSON.stringify(opts.snapshotter)}`,
    `  disable_snapshot_annotations = false`,
  ].join("\n");
}

// ---- the stack ----

export interface CriStack {
  /** The short temp dir holding the snapshotter (sn.sock, root/, snapshotter.log) and the CNI dirs. */
  dir: string;
  registry: Registry;
  /** The running snapshotter (replaced by restartSnapshotter). */
  sn: Snapshotter;
  containerd: Containerd;
  /** runtime.v1.ImageService on containerd's main socket. */
  cri: CriImageClient;
  /** The snapshotter's arguments besides --address/--root/--log-level (given to every restart). */
  snapshotterArgs: string[];
  /**
   * Stops the snapshotter with `signal` (SIGKILL: no cleanup at all) and starts it again on the same --root,
   * socket and log file (appended).
   */
  restartSnapshotter(signal?: NodeJS.Signals): Promise<Snapshotter>;
  /** `ctr -n k8s.io run --snapshotter nixoci --rm REF ID [ARGS...]`; its stdout. */
  run(ref: string, id: string, args?: string[]): string;
  /** `ctr -n k8s.io ARGS...`; its stdout. */
  ctr(args: string[]): string;
  /** Stops everything (idempotent) and removes the dir unless NIXOCI_KEEP_TMP is set. */
  stop(): Promise<void>;
}

export interface CriStackOptions {
  /**
   * The snapshotter's extra arguments (e.g. `--store DIR`, `--substituter URL`), or a function of the stack's
   * dir that may also prepare files there (a store, a cache) before the snapshotter starts.
   */
  snapshotterArgs: string[] | ((dir: string) => string[] | Promise<string[]>);
  /** Temp dir name prefix (default "cri"): /tmp/nixoci-PREFIX-XXXXXX. */
  prefix?: string;
  /** Another containerd release than the one under test. */
  release?: ContainerdRelease;
  /**
   * containerd's config for the running snapshotter `sn` (its proxy plugin and CRI's snapshotter settings),
   * instead of the stack's own (a proxy plugin "nixoci" and criSnapshotterConfig).
   */
  snapshotterConfig?: (sn: Snapshotter) => string;
  /** The pod sandbox image as REPO:TAG in the stack's registry (pushed by the test before RunPodSandbox). */
  sandboxImage?: string;
  /**
   * A registry several stacks (nodes) share, started and stopped by the test; by default the stack starts its own
   * and stops it with the rest.
   */
  registry?: Registry;
}

/**
 * A registry, a snapshotter and containerd (CRI enabled, snapshotter = nixoci, snapshot annotations on), all
 * child processes, and a CRI client; resolves once CRI ImageFsInfo answers (bounded). On failure everything
 * already started is stopped.
 */
export async function startCriStack(opts: CriStackOptions): Promise<CriStack> {
  // Unix socket paths are limited to 107 bytes: a short temp dir.
  const dir = mkdtempSync(join("/tmp", `nixoci-${opts.prefix ?? "cri"}-`));
  let registry: Registry | undefined;
  let sn: Snapshotter | undefined;
  let containerd: Containerd | undefined;
  let cri: CriImageClient | undefined;
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      cri?.close();
      await containerd?.stop();
      await stopSnapshotter(sn);
      if (!opts.registry) await registry?.stop();
      await removeSnapshotterDir(dir, Boolean(process.env.NIXOCI_KEEP_TMP));
    })());
  try {
    const snapshotterArgs =
      typeof opts.snapshotterArgs === "function" ? await opts.snapshotterArgs(dir) : opts.snapshotterArgs;
    registry = opts.registry ?? (await startRegistry());
    sn = await startSnapshotter(dir, snapshotterArgs);
    const node = {
      dir,
      registryHost: registry.host,
      release: opts.release,
      sandboxImage: opts.sandboxImage && `${registry.host}/${opts.sandboxImage}`,
    };
    containerd = await startContainerd(
      opts.snapshotterConfig
        ? {
            release: opts.release,
            criConfig: [criNodeConfig(node), opts.snapshotterConfig(sn)].join("\n"),
          }
        : {
            release: opts.release,
            proxyPlugins: { [SNAPSHOTTER_NAME]: { type: "snapshot", address: sn.socket } },
            criConfig: criConfig({ ...node, snapshotter: SNAPSHOTTER_NAME }),
          },
    );
    cri = criImageClient(containerd.address);
    // The CRI plugin registers its services with containerd's gRPC server at start; ImageFsInfo answers once
    // the plugin's snapshot syncer has run.
    const c = cri;
    await until("CRI ImageFsInfo", 30_000, () => c.imageFsInfo({}, { timeoutMs: 5000 }));
    const stack: CriStack = {
      dir,
      registry,
      sn,
      containerd,
      cri,
      snapshotterArgs,
      async restartSnapshotter(signal: NodeJS.Signals = "SIGKILL") {
        await stopSnapshotter(stack.sn, signal);
        stack.sn = sn = await startSnapshotter(dir, snapshotterArgs);
        return stack.sn;
      },
      run: (ref, id, args = []) =>
        stack.containerd
          .ctr(["-n", CRI_NAMESPACE, "run", "--snapshotter", SNAPSHOTTER_NAME, "--rm", ref, id, ...args])
          .toString(),
      ctr: (args) => stack.containerd.ctr(["-n", CRI_NAMESPACE, ...args]).toString(),
      stop,
    };
    return stack;
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}

/**
 * Signs `paths` into a file:// cache in DIR/cache (key `keyName` in DIR/keys): the snapshotter's arguments to
 * substitute from it, for the tests whose snapshotter substitutes during a pull.
 */
export function substituterArgs(dir: string, keyName: string, paths: string[]): string[] {
  const { url, key } = makeSignedNixCache(dir, keyName, paths);
  return ["--substituter", url, "--trusted-public-key", key.publicKey];
}

/**
 * A stack of its own whose snapshotter substitutes into an empty store (DIR/store) from a signed file:// cache
 * of `paths`: what the snapshotter-kill tests and drills kill and restart it in.
 */
export async function startSubstitutingStack(opts: {
  prefix: string;
  keyName: string;
  paths: string[];
}): Promise<{ stack: CriStack; store: string }> {
  let store = "";
  const stack = await startCriStack({
    prefix: opts.prefix,
    snapshotterArgs: (dir) => {
      store = join(dir, "store");
      // It must exist: auto mode compares its filesystem with --root's, and with no store directory yet it
      // silently downloads nix layers instead of substituting into it.
      mkdirSync(store);
      return ["--store", store, ...substituterArgs(dir, opts.keyName, opts.paths)];
    },
  });
  return { stack, store };
}

// ---- images ----

export interface LayerDescriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

export interface PushedImage {
  /** REGISTRY/REPO:TAG */
  ref: string;
  /** REGISTRY/REPO */
  repository: string;
  manifestDigest: string;
  /** The manifest's layers, bottom first. */
  layers: LayerDescriptor[];
  /** The config's rootfs.diff_ids, bottom first. */
  diffIds: string[];
  /** The OCI layout the image was also written to (tag "v1"... as given). */
  layout: string;
  tag: string;
}

/** The layer-descriptor annotation prefix naming a nix layer's store paths. */
export const NIX_STORE_PATH_ANNOTATION = "containerd.io/snapshot/nix-store-path.";

/** The store paths a layer's annotations name (empty for an ordinary layer). */
/** The image roots a layer descriptor names (its nix-closure-root.<i> annotations). */
export function layerClosureRoots(layer: LayerDescriptor): string[] {
  return storePathsFromAnnotations(layer.annotations ?? {}, NIX_CLOSURE_ROOT_ANNOTATION);
}

let gcKicks = 0;

/**
 * Makes containerd's garbage collector run soon: a lease made and deleted is a deletion, which schedules a
 * collection. Needed where a test waits for the GC to remove something: containerd's GC scheduler drops a
 * deletion that happened while a collection was running (its event is older than the collection's end), so
 * what it deleted stays until the next deletion.
 */
export function kickContainerdGc(stack: { ctr(args: string[]): string }): void {
  const id = `nixoci-gc-kick-${process.pid}-${gcKicks++}`;
  stack.ctr(["leases", "create", "--id", id]);
  stack.ctr(["leases", "delete", id]);
}

export function layerStorePaths(layer: LayerDescriptor): string[] {
  return Object.entries(layer.annotations ?? {})
    .filter(([k]) => k.startsWith(NIX_STORE_PATH_ANNOTATION))
    .map(([, v]) => v);
}

/** A blob of an OCI layout by digest, as text. */
export function readBlob(layout: string, digest: string): string {
  const [alg, hex] = digest.split(":");
  return readFileSync(join(layout, "blobs", alg, hex), "utf8");
}

function describeLayout(
  layout: string,
  manifestDigest: string,
): { layers: LayerDescriptor[]; diffIds: string[] } {
  const manifest = JSON.parse(readBlob(layout, manifestDigest)) as {
    config: { digest: string };
    layers: LayerDescriptor[];
  };
  const config = JSON.parse(readBlob(layout, manifest.config.digest)) as { rootfs: { diff_ids: string[] } };
  return { layers: manifest.layers, diffIds: config.rootfs.diff_ids };
}

/**
 * `nixoci build [--entrypoint E] [BUILDARGS...] INSTALLABLES... -o docker://REGISTRY/REPO:TAG
 * -o oci:WORKDIR/oci-REPO:TAG` (a separate process), then what the manifest and config say.
 */
export function pushNixociImage(
  registry: Registry,
  opts: {
    installables: string[];
    repo: string;
    tag?: string;
    entrypoint?: string;
    workDir: string;
    /** More `nixoci build` options (e.g. layering: `--max-layers N`). */
    buildArgs?: string[];
  },
): PushedImage {
  const tag = opts.tag ?? "v1";
  const repository = `${registry.host}/${opts.repo}`;
  const ref = `${repository}:${tag}`;
  const layout = join(opts.workDir, `oci-${opts.repo.replace(/\//g, "_")}`);
  const manifestDigest = nixociOk([
    "build",
    ...(opts.entrypoint ? ["--entrypoint", opts.entrypoint] : []),
    ...(opts.buildArgs ?? []),
    ...opts.installables,
    "-o",
    `docker://${ref}`,
    "-o",
    `oci:${layout}:${tag}`,
    "-q",
  ])
    .text.trim()
    .split("\n")
    .pop()!;
  return { ref, repository, manifestDigest, layout, tag, ...describeLayout(layout, manifestDigest) };
}

/** A pushed image's layout as a BuiltImage (blobs read from the layout), e.g. to push a variant of it. */
export function layoutImage(image: PushedImage): BuiltImage {
  const manifestBytes = Buffer.from(readBlob(image.layout, image.manifestDigest));
  const manifest = JSON.parse(manifestBytes.toString()) as {
    mediaType: string;
    config: { mediaType: string; digest: Digest; size: number };
    layers: BuiltImage["layers"];
  };
  const configBytes = Buffer.from(readBlob(image.layout, manifest.config.digest));
  const config = JSON.parse(configBytes.toString()) as {
    architecture: string;
    os: string;
    rootfs: { diff_ids: Digest[] };
  };
  return {
    blobs: new BlobStore(image.layout),
    manifest: {
      digest: image.manifestDigest as Digest,
      size: manifestBytes.length,
      bytes: manifestBytes,
      mediaType: manifest.mediaType,
    },
    config: { ...manifest.config, bytes: configBytes, mediaType: manifest.config.mediaType },
    layers: manifest.layers,
    diffIds: config.rootfs.diff_ids,
    platform: { architecture: config.architecture, os: config.os },
  };
}

/** Pushes a BuiltImage to REGISTRY/REPO:TAG (in-process HTTP client; no push record). */
export async function pushBuilt(
  registry: Registry,
  image: BuiltImage,
  repo: string,
  tag = "v1",
): Promise<{ ref: string; manifestDigest: string }> {
  await pushImage(image, { registry: registry.host, repository: repo, tag }, { pushRecord: false });
  return { ref: `${registry.host}/${repo}:${tag}`, manifestDigest: image.manifest.digest };
}

/**
 * Pushes a variant of `image` with the same blobs: its manifest's layers as `layers` makes them and, with `diffIds`,
 * its config's diff_ids so (the config then differs too). Returns the new ref and digest, layers and diff_ids.
 */
async function pushVariant(
  registry: Registry,
  image: PushedImage,
  repo: string,
  layers: (old: LayerDescriptor[]) => LayerDescriptor[],
  diffIds?: (old: Digest[]) => Digest[],
): Promise<{ ref: string; manifestDigest: string; layers: LayerDescriptor[]; diffIds: string[] }> {
  const built = layoutImage(image);
  const manifest = JSON.parse(built.manifest.bytes.toString()) as {
    config: { digest: string; size: number };
    layers: LayerDescriptor[];
  };
  let { config } = built;
  if (diffIds) {
    const doc = JSON.parse(config.bytes.toString()) as { rootfs: { diff_ids: Digest[] } };
    doc.rootfs.diff_ids = diffIds(built.diffIds);
    const bytes = Buffer.from(JSON.stringify(doc));
    config = { ...config, bytes, size: bytes.length, digest: sha256Digest(bytes) };
    manifest.config = { ...manifest.config, digest: config.digest, size: config.size };
  }
  manifest.layers = layers(manifest.layers);
  const bytes = Buffer.from(JSON.stringify(manifest));
  const variant: BuiltImage = {
    ...built,
    manifest: { ...built.manifest, bytes, size: bytes.length, digest: sha256Digest(bytes) },
    config,
    layers: manifest.layers as BuiltImage["layers"],
    diffIds: diffIds ? diffIds(built.diffIds) : built.diffIds,
  };
  const r = await pushBuilt(registry, variant, repo);
  return { ...r, layers: manifest.layers, diffIds: variant.diffIds };
}

/**
 * Pushes a variant of `image` whose layer i's annotations are replaced by `annotations(i, old)` (undefined keeps
 * them); the blobs are the same, so only the manifest (and its digest) differ. Returns the new ref and digest.
 */
export function pushModifiedImage(
  registry: Registry,
  image: PushedImage,
  repo: string,
  annotations: (index: number, old: Record<string, string> | undefined) => Record<string, string> | undefined,
): Promise<{ ref: string; manifestDigest: string; layers: LayerDescriptor[] }> {
  return pushVariant(registry, image, repo, (layers) =>
    layers.map((l, i) => {
      const a = annotations(i, l.annotations);
      const { annotations: _old, ...rest } = l;
      return a && Object.keys(a).length ? { ...rest, annotations: a } : { ...rest };
    }),
  );
}

/**
 * Pushes a variant of `image` whose layers come in the order `order` (indexes into its layers, bottom first; the
 * config's diff_ids follow). The blobs are the same: each of nixoci's layers holds its own paths with their parent
 * directories, so any order unpacks to the same tree.
 */
export function pushReorderedImage(
  registry: Registry,
  image: PushedImage,
  repo: string,
  order: number[],
): Promise<{ ref: string; manifestDigest: string; layers: LayerDescriptor[]; diffIds: string[] }> {
  return pushVariant(
    registry,
    image,
    repo,
    (layers) => order.map((i) => layers[i]),
    (ids) => order.map((i) => ids[i]),
  );
}

/**
 * Whether a snapshotter-side snapshot name is the committed snapshot of chain ID `chain`: containerd names the
 * snapshots it commits NAMESPACE/N/CHAIN; the nix layers the snapshotter commits itself (Prepare answered
 * ALREADY_EXISTS) are named after the `containerd.io/snapshot.ref` label, i.e. CHAIN.
 */
export function isChainSnapshot(name: string, chain: string): boolean {
  return name === chain || name.endsWith(`/${chain}`);
}

/** The chain IDs of a stack of diff IDs (what containerd names committed snapshots after), bottom first. */
export { chainIds } from "../../src/servers/cri/nix-import.js";

// ---- logs ----

export interface RpcLine {
  msg: string;
  method?: string;
  key?: string;
  parent?: string;
  name?: string;
  code?: string;
  error?: string;
  level?: string;
  labels?: Record<string, string>;
}

/** The snapshotter's "rpc" log lines (JSON), from byte offset `fromByte` of its log file. */
export function rpcLines(sn: Snapshotter, fromByte = 0): RpcLine[] {
  const out: RpcLine[] = [];
  for (const line of readFileSync(sn.logFile).subarray(fromByte).toString("utf8").split("\n")) {
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

/** The current size of the snapshotter's log (an offset for rpcLines). */
export function logSize(sn: Snapshotter): number {
  return readFileSync(sn.logFile).length;
}

/** How many lines the registry's log has now (an offset for registryRequests). */
export function registryLogLines(reg: Registry): number {
  return reg.log().split("\n").length - 1;
}

/** "METHOD /v2/... STATUS" for each request docker-registry's access log recorded from line `fromLine`. */
export function registryRequests(reg: Registry, fromLine = 0): string[] {
  const out: string[] = [];
  for (const line of reg.log().split("\n").slice(fromLine)) {
    const m = /"(GET|HEAD|PUT|POST|PATCH|DELETE) (\/v2\/\S*) HTTP\/[\d.]+" (\d{3})/.exec(line);
    if (m) out.push(`${m[1]} ${m[2]} ${m[3]}`);
  }
  return out;
}

/** The blob digests the registry served with GET (any repository) from line `fromLine`. */
export function blobGets(reg: Registry, fromLine = 0): string[] {
  return registryRequests(reg, fromLine)
    .map((l) => /^GET \/v2\/\S+\/blobs\/(sha256:[0-9a-f]{64}) 2\d\d$/.exec(l)?.[1])
    .filter((d): d is string => d !== undefined);
}

// ---- the snapshotter's own view ----

export interface SnapshotInfo {
  name: string;
  parent: string;
  /** "VIEW" | "ACTIVE" | "COMMITTED" (or the enum number, depending on the loader). */
  kind: string;
  labels: Record<string, string>;
}

/** Every snapshot the snapshotter itself lists (its List stream), with a deadline. */
export function listSnapshots(socket: string, timeoutMs = 15_000): Promise<SnapshotInfo[]> {
  const client = snapshotsClient(socket);
  const list = client.List as (req: object, opts: object) => NodeJS.ReadableStream;
  return new Promise<SnapshotInfo[]>((resolve, reject) => {
    const out: SnapshotInfo[] = [];
    const stream = list.call(client, {}, { deadline: Date.now() + timeoutMs });
    stream.on("data", (msg: { info?: Array<Partial<SnapshotInfo> & { kind?: unknown }> }) => {
      for (const i of msg.info ?? [])
        out.push({
          name: i.name ?? "",
          parent: i.parent ?? "",
          kind: String(i.kind ?? ""),
          labels: i.labels ?? {},
        });
    });
    stream.on("error", reject);
    stream.on("end", () => resolve(out));
  }).finally(() => client.close());
}

/**
 * Polls (60 s) until the snapshotter lists no snapshot and `also` passes: after an image's removal containerd's
 * GC, and the snapshotter's Cleanup after it, run in the background. While snapshots are left, the GC is kicked
 * every 2 s (a deletion its scheduler dropped would otherwise wait for the next one: see kickContainerdGc).
 */
export function untilSnapshotterEmpty(
  stack: { sn: Snapshotter; ctr(args: string[]): string },
  also?: () => void,
): Promise<void> {
  let lastKick = Date.now();
  return until(
    "the snapshotter holds no snapshot",
    60_000,
    async () => {
      const left = await listSnapshots(stack.sn.socket);
      if (left.length) {
        if (Date.now() - lastKick >= 2_000) {
          kickContainerdGc(stack);
          lastKick = Date.now();
        }
        throw new Error(left.map((i) => `${i.kind} ${i.name}`).join(", "));
      }
      also?.();
    },
    250,
  );
}

/**
 * After a killed and restarted snapshotter: containerd's snapshots all exist in the snapshotter (`ctr snapshots
 * usage` asks it for each), and the snapshotter's parents all exist. Returns the usage table.
 */
export async function checkSnapshotsConsistent(s: CriStack): Promise<string> {
  const usage = s.ctr(["snapshots", "--snapshotter", SNAPSHOTTER_NAME, "usage"]);
  const mine = await listSnapshots(s.sn.socket);
  const names = new Set(mine.map((i) => i.name));
  for (const i of mine)
    if (i.parent) assert.ok(names.has(i.parent), `parent ${i.parent} of ${i.name} exists`);
  return usage;
}

/** Stops the stack (when there is one) and checks nothing stays mounted under its dir or containerd's root. */
export async function stopStackLeavingNoMounts(stack: CriStack | undefined): Promise<void> {
  if (!stack) return;
  const dirs = [stack.dir, stack.containerd.root];
  await stack.stop();
  for (const d of dirs) assert.deepEqual(mountsUnder(d), [], `no mount left under ${d}`);
}
