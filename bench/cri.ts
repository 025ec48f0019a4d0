// CRI benchmark: the time from a CRI PullImage to the container's first output, through containerd's CRI plugin
// (the release NIXOCI_CONTAINERD selects: 1.6.20 by default, 1.7 or 2.1; test/support/containerd-release.ts) with
// the nixoci snapshotter (store present: nix layers are committed from /nix/store, not downloaded) side by side
// with containerd's own overlayfs snapshotter (every layer pulled from the registry and unpacked).
//
// Daemons (all child processes on loopback / unix sockets with private temp dirs, stopped by pid at the end,
// also on error; test/support/daemons.ts and snapshotter.ts):
//   - docker-registry 2.8 holding the images, pushed by `node bin/nixoci.js build ... -o docker://HOST/NAME:v1`
//     (a private --cache-dir); its access log says which blobs each pull fetched;
//   - `nixoci snapshotter --store /nix/store --log-level warn --containerd-version RELEASE` (auto: target mode
//     with store views from 1.7 on, link mode under 1.6, where the store and temp dir share a filesystem);
//   - containerd A: CRI `snapshotter = "nixoci"` (the proxy plugin), `disable_snapshot_annotations = false`;
//   - from 1.7 on, a second snapshotter and its containerd A' (CRI `snapshotter = "nixoci"`) for comparison:
//     side "nixoci/binds" (`--nix-layers target --target-mounts binds`: a bind per store path, which views
//     replace), or with NIXOCI_BENCH_CRI_COMPARE=link side "nixoci/link" (`--nix-layers link`: per-file links);
//   - containerd B: CRI `snapshotter = "overlayfs"` (containerd's built-in one);
//   both reaching the registry over plain HTTP through a hosts directory (`registry.config_path`).
//
// One timed run, on either side: CRI PullImage (src/proto/cri.ts against containerd's socket), then
// `ctr -n k8s.io run --rm --snapshotter X REF ID` until its first output line ("Hello from nixoci!", checked;
// then it must exit 0). Then the image is removed through CRI RemoveImage (containerd deletes it synchronously
// and runs its GC) and the next run waits until containerd's k8s.io namespace holds no content and no snapshot,
// and the snapshotter's snapshot directory is empty: every run starts from a fresh state.
//
//   1. A closure of at least 200 MB of store paths (bench/fixtures/closure.nix `top`, the closure bench/build.ts
//      uses, plus the test fixtures' `hello` as the entrypoint): one untimed warm-up run per side, then RUNS
//      runs per side, interleaved (the order alternates); medians and the ratio nixoci / overlayfs (goal
//      <= 0.1x), with the registry's blob GETs per pull.
//   2. The extra cost per 1,000 store paths: two images of many small store paths
//      (bench/fixtures/many-paths.nix: ~100 and ~6,100 paths in the closure, `hello` again the entrypoint),
//      PATH_RUNS runs per image and side, interleaved; (t_large - t_small) / (Δpaths / 1000) of the medians.
//      The figure is a difference of two medians that each move by ±0.1 s from run to run: 6,000 paths apart,
//      that is ±20 ms per 1,000 paths (with 2,000 apart it was ±50 ms, as large as the goal).
//   3. The fallback: the image of 1. pushed again (same blobs, tag `bad-labels`) with every layer's
//      nix-store-path annotations naming a store path that does not exist, so the snapshotter cannot make any
//      layer from the store and containerd downloads and unpacks them all through it; RUNS runs on the nixoci
//      side, against the overlayfs medians of 1.
// Nothing about time is asserted; failures (a pull error, no output, a wrong line) throw.
// Knobs for looking into it: NIXOCI_BENCH_CRI_RUNS=N (runs per series), NIXOCI_BENCH_CRI_SECTIONS=2 (or "1 3":
// only those sections; the summary then shows what ran), NIXOCI_BENCH_CRI_LOG=info|debug (the
// snapshotter's log level; default warn), NIXOCI_BENCH_CRI_NIX_LAYERS=MODE (its --nix-layers; default: its own
// default, auto), NIXOCI_KEEP_TMP=1 (keep the temp dir with the daemons' logs).
import { execFileSync, spawn } from "node:child_process";
import * as fs from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { criImageClient, type CriImageClient } from "../src/proto/cri.js";
import { startContainerd, startRegistry, type Containerd, type Registry } from "../test/support/daemons.js";
import { buildFixtures } from "../test/support/fixtures.js";
import {
  removeSnapshotterDir,
  startSnapshotter,
  stopSnapshotter,
  type Snapshotter,
} from "../test/support/snapshotter.js";
import { cpuMs, median, nixBuild } from "./common.js";
import { criConfig, NIX_STORE_PATH_ANNOTATION } from "../test/support/cri.js";
import { until } from "../test/support/poll.js";
import {
  CONTAINERD_SERIES,
  containerdRelease,
  type ContainerdRelease,
} from "../test/support/containerd-release.js";

const NIXOCI = fileURLToPath(new URL("../../bin/nixoci.js", import.meta.url));
const CLOSURE_NIX = fileURLToPath(new URL("../../bench/fixtures/closure.nix", import.meta.url));
const MANY_PATHS_NIX = fileURLToPath(new URL("../../bench/fixtures/many-paths.nix", import.meta.url));
const NS = "k8s.io";
const EXPECTED_LINE = "Hello from nixoci!";
const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";

const RUNS_OVERRIDE = Number(process.env.NIXOCI_BENCH_CRI_RUNS) || undefined;
/** The sections to run (NIXOCI_BENCH_CRI_SECTIONS, e.g. "2" or "1,3"; default all three). */
const SECTIONS = new Set((process.env.NIXOCI_BENCH_CRI_SECTIONS ?? "1 2 3").split(/[\s,]+/).map(Number));
const RUNS = RUNS_OVERRIDE ?? 5;
const PATH_RUNS = RUNS_OVERRIDE ?? 5;
/** Small store paths in the two many-paths images (their closures add `top`, and hello's 3 paths). */
const FEW_PATHS = 96;
const MANY_PATHS = 6096;

/** Goals from the issue (containerd 2.1). */
const GOAL_VS_OVERLAYFS = 0.1;
const GOAL_MS_PER_K_PATHS = 50;

const sec = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
const ratio = (x: number) => `${x.toFixed(2)}x`;
const mb = (bytes: number) => `${(bytes / 1e6).toFixed(0)} MB`;
const verdict = (ok: boolean) => (ok ? "ok" : "MISSED");

// ---- fixtures and images ----

function closureOf(paths: string[]): { paths: string[]; narSize: number } {
  const closure = execFileSync("nix-store", ["--query", "--requisites", ...paths], { maxBuffer: 64 << 20 })
    .toString()
    .split("\n")
    .filter(Boolean);
  const narSize = execFileSync("nix-store", ["--query", "--size", ...closure], { maxBuffer: 64 << 20 })
    .toString()
    .split("\n")
    .filter(Boolean)
    .reduce((n, s) => n + Number(s), 0);
  return { paths: closure, narSize };
}

interface Image {
  name: string;
  ref: string;
  paths: number;
  narSize: number;
  layers: { digest: string; size: number; paths: string[] }[];
  manifestDigest: string;
}

/** `nixoci build --json` of the packages with /bin/hello as entrypoint, pushed to the registry. */
function buildImage(registry: Registry, cacheDir: string, name: string, packages: string[]): Image {
  const ref = `${registry.host}/bench/${name}:v1`;
  const out = execFileSync(
    process.execPath,
    [
      NIXOCI,
      "build",
      "-q",
      "--json",
      "--cache-dir",
      cacheDir,
      "--entrypoint",
      "/bin/hello",
      ...packages,
      "-o",
      `docker://${ref}`,
    ],
    { stdio: ["ignore", "pipe", "inherit"], maxBuffer: 256 << 20 },
  ).toString();
  const summary = JSON.parse(out) as {
    manifestDigest: string;
    layers: { digest: string; size: number; paths: string[] }[];
  };
  const closure = closureOf(packages);
  return {
    name,
    ref,
    paths: closure.paths.length,
    narSize: closure.narSize,
    layers: summary.layers,
    manifestDigest: summary.manifestDigest,
  };
}

/**
 * `image` pushed again as REPO:TAG with its layers' nix-store-path annotations all naming a store path that does
 * not exist (the blobs are the same: only the manifest is new).
 */
async function pushWithBadLabels(registry: Registry, image: Image, tag: string): Promise<Image> {
  const repo = image.ref.slice(registry.host.length + 1, image.ref.lastIndexOf(":"));
  const url = (ref: string) => `http://${registry.host}/v2/${repo}/manifests/${ref}`;
  const got = await fetch(url(image.manifestDigest), {
    headers: { Accept: `${OCI_MANIFEST}, application/vnd.docker.distribution.manifest.v2+json` },
  });
  if (!got.ok) throw new Error(`GET ${url(image.manifestDigest)}: ${got.status}`);
  const manifest = (await got.json()) as {
    mediaType: string;
    layers: { annotations?: Record<string, string> }[];
  };
  const missing = `/nix/store/${"0".repeat(32)}-nixoci-bench-not-there`;
  let spoilt = 0;
  for (const layer of manifest.layers) {
    for (const key of Object.keys(layer.annotations ?? {})) {
      if (key.startsWith(NIX_STORE_PATH_ANNOTATION)) {
        layer.annotations![key] = missing;
        spoilt++;
      }
    }
  }
  if (!spoilt) throw new Error(`${image.ref}: no nix-store-path annotation to spoil`);
  const put = await fetch(url(tag), {
    method: "PUT",
    headers: { "Content-Type": manifest.mediaType ?? OCI_MANIFEST },
    body: JSON.stringify(manifest),
  });
  if (put.status !== 201) throw new Error(`PUT ${url(tag)}: ${put.status} ${await put.text()}`);
  const manifestDigest = put.headers.get("Docker-Content-Digest")!;
  return {
    ...image,
    name: `${image.name}-bad-labels`,
    ref: `${registry.host}/${repo}:${tag}`,
    manifestDigest,
  };
}

// ---- daemons ----

interface Side {
  name: string;
  snapshotter: string;
  containerd: Containerd;
  cri: CriImageClient;
  /** Directories that must be empty after an image is removed (the snapshotter's own snapshots). */
  snapshotDir: string;
  /** The proxy snapshotter's pid (none for containerd's own overlayfs). */
  snapshotterPid?: number;
}

async function startSide(
  release: ContainerdRelease,
  dir: string,
  name: string,
  snapshotter: string,
  registry: Registry,
  proxy?: Snapshotter,
): Promise<Side> {
  const cniDir = join(dir, `cni-${name}`);
  fs.mkdirSync(join(cniDir, "cni-bin"), { recursive: true });
  fs.mkdirSync(join(cniDir, "cni-conf"), { recursive: true });
  const containerd = await startContainerd({
    release,
    proxyPlugins: proxy ? { [snapshotter]: { type: "snapshot", address: proxy.socket } } : undefined,
    criConfig: criConfig({ dir: cniDir, registryHost: registry.host, snapshotter, release }),
  });
  const cri = criImageClient(containerd.address);
  try {
    await until("CRI ImageFsInfo", 30_000, () => cri.imageFsInfo({}, { timeoutMs: 5000 }), 100);
  } catch (err) {
    cri.close();
    await containerd.stop();
    throw err;
  }
  const snapshotDir = proxy
    ? join(proxy.root, "snapshots")
    : join(containerd.root, "io.containerd.snapshotter.v1.overlayfs", "snapshots");
  return { name, snapshotter, containerd, cri, snapshotDir, snapshotterPid: proxy?.child.pid };
}

// ---- one run ----

interface Sample {
  pullMs: number;
  runMs: number;
  totalMs: number;
  blobGets: number;
  layerGets: number;
  bytes: number;
  /** CPU time containerd and the proxy snapshotter used during the pull (where a pull's time goes). */
  pullCpuMs: { containerd: number; snapshotter: number };
}

/** Blob GETs in docker-registry's access log from byte `from` on: count, bytes, and how many were layers. */
function blobGets(
  registry: Registry,
  from: number,
  image: Image,
): { n: number; layers: number; bytes: number } {
  const log = fs.readFileSync(join(registry.dir, "registry.log")).subarray(from).toString();
  const layerDigests = new Set(image.layers.map((l) => l.digest));
  let n = 0;
  let layers = 0;
  let bytes = 0;
  for (const m of log.matchAll(/"GET \/v2\/\S+\/blobs\/(sha256:[0-9a-f]{64}) HTTP\/[\d.]+" (\d{3}) (\d+)/g)) {
    if (!m[2].startsWith("2")) continue;
    n++;
    bytes += Number(m[3]);
    if (layerDigests.has(m[1])) layers++;
  }
  return { n, layers, bytes };
}

/** Runs `ctr ... run --rm`; resolves at its first stdout line with the time, then checks line and exit. */
function runToFirstLine(
  side: Side,
  image: Image,
  id: string,
): Promise<{ firstLineAt: number; done: Promise<void> }> {
  return new Promise((resolveFirst, rejectFirst) => {
    const args = ["-a", side.containerd.address, "-n", NS, "run", "--rm"];
    args.push("--snapshotter", side.snapshotter, image.ref, id);
    const child = spawn(side.containerd.release.ctr, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    let first = false;
    const timer = setTimeout(() => child.kill("SIGKILL"), 120_000);
    let settle!: (e?: Error) => void;
    const done = new Promise<void>((res, rej) => (settle = (e) => (e ? rej(e) : res())));
    done.catch(() => undefined); // observed by the caller once the first line arrived
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
      if (!first && out.includes("\n")) {
        first = true;
        resolveFirst({ firstLineAt: performance.now(), done });
      }
    });
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("error", (e) => (first ? settle(e) : rejectFirst(e)));
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      const line = out.split("\n")[0];
      const problem =
        code !== 0
          ? `exited with ${code ?? signal}`
          : line !== EXPECTED_LINE
            ? `printed ${JSON.stringify(out)}, expected ${JSON.stringify(EXPECTED_LINE)}`
            : undefined;
      const e = problem ? new Error(`ctr ${args.join(" ")}: ${problem}: ${err.trim()}`) : undefined;
      if (!first) rejectFirst(e ?? new Error(`ctr ${args.join(" ")}: no output: ${err.trim()}`));
      else settle(e);
    });
  });
}

/** The k8s.io namespace holds no content and no snapshot, and the snapshotter's directory is empty. */
function assertClean(side: Side): void {
  const content = side.containerd.ctr(["-n", NS, "content", "ls", "-q"]).toString().trim();
  if (content) throw new Error(`content left: ${content.split("\n").length} blobs`);
  const snaps = side.containerd
    .ctr(["-n", NS, "snapshots", "--snapshotter", side.snapshotter, "ls"])
    .toString()
    .trim()
    .split("\n")
    .slice(1)
    .filter(Boolean);
  if (snaps.length) throw new Error(`snapshots left: ${snaps.length}`);
  const left = fs.existsSync(side.snapshotDir) ? fs.readdirSync(side.snapshotDir) : [];
  if (left.length) throw new Error(`${side.snapshotDir} still holds ${left.length} snapshots`);
}

let runId = 0;

async function pullAndRun(side: Side, registry: Registry, image: Image): Promise<Sample> {
  await until(
    `${side.name}: a clean state before pulling ${image.name}`,
    60_000,
    () => assertClean(side),
    100,
  );
  const logFrom = fs.statSync(join(registry.dir, "registry.log")).size;
  const cpu0 = { containerd: cpuMs(side.containerd.pid()), snapshotter: cpuMs(side.snapshotterPid) };
  const t0 = performance.now();
  const pulled = await side.cri.pullImage({ image: { image: image.ref } }, { timeoutMs: 300_000 });
  const t1 = performance.now();
  const pullCpuMs = {
    containerd: cpuMs(side.containerd.pid()) - cpu0.containerd,
    snapshotter: cpuMs(side.snapshotterPid) - cpu0.snapshotter,
  };
  const id = `nixoci-bench-${process.pid}-${runId++}`;
  const { firstLineAt, done } = await runToFirstLine(side, image, id);
  await done;
  const gets = blobGets(registry, logFrom, image);
  await side.cri.removeImage({ image: { image: pulled.image_ref } }, { timeoutMs: 120_000 });
  return {
    pullMs: t1 - t0,
    pullCpuMs,
    runMs: firstLineAt - t1,
    totalMs: firstLineAt - t0,
    blobGets: gets.n,
    layerGets: gets.layers,
    bytes: gets.bytes,
  };
}

/** `runs` samples per side, interleaved (the order alternates from run to run). */
async function series(
  sides: Side[],
  registry: Registry,
  image: Image,
  runs: number,
): Promise<Map<Side, Sample[]>> {
  const out = new Map<Side, Sample[]>(sides.map((s) => [s, []]));
  for (let run = 0; run < runs; run++) {
    const order = run % 2 === 0 ? sides : [...sides].reverse();
    for (const side of order) out.get(side)!.push(await pullAndRun(side, registry, image));
  }
  return out;
}

// ---- report ----

function describeImage(image: Image): string {
  const nix = image.layers.filter((l) => l.paths.length > 0).length;
  const bytes = image.layers.reduce((n, l) => n + l.size, 0);
  return (
    `${image.paths} store paths, ${mb(image.narSize)} of NAR; ${image.layers.length} layers ` +
    `(${nix} of store paths + the customisation layer), ${mb(bytes)} gzip`
  );
}

/** Median CPU time containerd and the snapshotter used during the pulls of `xs` ("-": a side without one). */
function pullCpu(side: Side, xs: Sample[]): string {
  const snapshotter = side.snapshotterPid ? sec(median(xs.map((x) => x.pullCpuMs.snapshotter))) : "-";
  return `${sec(median(xs.map((x) => x.pullCpuMs.containerd)))} / ${snapshotter}`;
}

function printTable(image: Image, samples: Map<Side, Sample[]>, baseline: Side, goal = true): void {
  const b = median(samples.get(baseline)!.map((s) => s.totalMs));
  console.log(
    "snapshotter".padEnd(12) +
      "pull".padStart(9) +
      "run".padStart(9) +
      "total".padStart(9) +
      "vs overlayfs".padStart(14) +
      "  blobs GET (layers) / MB".padEnd(27) +
      "  totals of each run".padEnd(40) +
      "  pull CPU: containerd / snapshotter".padEnd(38) +
      "goal",
  );
  for (const [side, xs] of samples) {
    const total = median(xs.map((s) => s.totalMs));
    const gets = xs[xs.length - 1];
    const isBase = side === baseline;
    console.log(
      side.name.padEnd(12) +
        sec(median(xs.map((s) => s.pullMs))).padStart(9) +
        sec(median(xs.map((s) => s.runMs))).padStart(9) +
        sec(total).padStart(9) +
        ratio(total / b).padStart(14) +
        `  ${gets.blobGets} (${gets.layerGets}/${image.layers.length}) / ${(gets.bytes / 1e6).toFixed(1)}`.padEnd(
          27,
        ) +
        `  ${xs.map((s) => (s.totalMs / 1000).toFixed(2)).join(" ")}`.padEnd(40) +
        `  ${pullCpu(side, xs)}`.padEnd(38) +
        (isBase || !goal
          ? ""
          : `<= ${GOAL_VS_OVERLAYFS}x overlayfs: ${verdict(total / b <= GOAL_VS_OVERLAYFS)}`),
    );
  }
}

/** What one release's runs came to, for the summary. */
interface ReleaseResult {
  release: ContainerdRelease;
  /** The nixoci side's nix-layer mode. */
  mode: string;
  nixociMs: number;
  overlayMs: number;
  /** Extra ms per 1,000 store paths, nixoci side and overlayfs side. */
  perKNixoci: number;
  perKOverlay: number;
}

/** The releases to run (NIXOCI_BENCH_CRI_RELEASES, space- or comma-separated; default every one installed). */
function releases(): ContainerdRelease[] {
  const names = (process.env.NIXOCI_BENCH_CRI_RELEASES ?? CONTAINERD_SERIES.join(" "))
    .split(/[\s,]+/)
    .filter(Boolean);
  return names.map((series) => containerdRelease({ ...process.env, NIXOCI_CONTAINERD: series }));
}

/** The version `containerd --version` prints for a release, e.g. "1.7.24". */
function versionOf(release: ContainerdRelease): string {
  const out = execFileSync(release.containerd, ["--version"]).toString();
  return /\bv?(\d+\.\d+\.\d+)/.exec(out)?.[1] ?? release.series;
}

export async function benchCri(): Promise<void> {
  const started = performance.now();
  const rootsDir = "/tmp/nixoci-bench-closure"; // shared with bench/build.ts
  fs.mkdirSync(rootsDir, { recursive: true });
  const fx = buildFixtures();
  const top = nixBuild(CLOSURE_NIX, "top", join(rootsDir, "top"));
  const few = nixBuild(MANY_PATHS_NIX, "top", join(rootsDir, `many-paths-${FEW_PATHS}`), [
    "--argstr",
    "count",
    String(FEW_PATHS),
  ]);
  const many = nixBuild(MANY_PATHS_NIX, "top", join(rootsDir, `many-paths-${MANY_PATHS}`), [
    "--argstr",
    "count",
    String(MANY_PATHS),
  ]);
  const wanted = releases();

  // Unix socket paths are limited to 107 bytes: a short temp dir.
  const dir = fs.mkdtempSync(join("/tmp", "nixoci-bench-cri-"));
  let registry: Registry | undefined;
  const results: ReleaseResult[] = [];
  try {
    registry = await startRegistry();
    const t0 = performance.now();
    const cache = join(dir, "cache");
    const big = buildImage(registry, cache, "big", [top, fx.hello]);
    const small = buildImage(registry, cache, "paths-few", [few, fx.hello]);
    const large = buildImage(registry, cache, "paths-many", [many, fx.hello]);
    const setupMs = performance.now() - t0;
    if (big.narSize < 200e6) throw new Error(`the big image has only ${mb(big.narSize)} of store paths`);
    console.log(
      `\nCRI benchmark images (building and pushing them took ${sec(setupMs)}): big: ${describeImage(big)} ` +
        `(bench/fixtures/closure.nix); paths-few / paths-many: ${small.paths} / ${large.paths} store paths ` +
        `(bench/fixtures/many-paths.nix)`,
    );
    for (const release of wanted) {
      const releaseDir = join(dir, release.series);
      fs.mkdirSync(releaseDir);
      results.push(await benchRelease(release, releaseDir, registry, { big, small, large }));
    }
    printSummary(results);
    console.log(`\nCRI benchmark: ${sec(performance.now() - started)} in all`);
  } finally {
    await registry?.stop();
    await removeSnapshotterDir(dir, Boolean(process.env.NIXOCI_KEEP_TMP));
    if (process.env.NIXOCI_KEEP_TMP) console.log(`kept ${dir}`);
  }
}

/** Sections 1-3 (see the top) through one containerd release; its daemons are stopped before it returns. */
async function benchRelease(
  release: ContainerdRelease,
  dir: string,
  registry: Registry,
  images: { big: Image; small: Image; large: Image },
): Promise<ReleaseResult> {
  const { big, small, large } = images;
  const version = versionOf(release);
  let sn: Snapshotter | undefined;
  let snCompare: Snapshotter | undefined;
  const sides: Side[] = [];
  try {
    const snapshotterArgs = (nixLayers: string | undefined, more: string[] = []): string[] => [
      "--store",
      "/nix/store",
      "--log-level",
      process.env.NIXOCI_BENCH_CRI_LOG ?? "warn",
      "--containerd-version",
      release.series,
      ...(nixLayers ? ["--nix-layers", nixLayers] : []),
      ...more,
    ];
    const nixLayers = process.env.NIXOCI_BENCH_CRI_NIX_LAYERS;
    sn = await startSnapshotter(dir, snapshotterArgs(nixLayers));
    const nixSide = await startSide(release, dir, "nixoci", "nixoci", registry, sn);
    sides.push(nixSide);
    if (release.series !== "1.6" && !nixLayers) {
      const compare = process.env.NIXOCI_BENCH_CRI_COMPARE === "link" ? "link" : "binds";
      const compareDir = join(dir, compare);
      fs.mkdirSync(compareDir);
      snCompare = await startSnapshotter(
        compareDir,
        compare === "link"
          ? snapshotterArgs("link")
          : snapshotterArgs("target", ["--target-mounts", "binds"]),
      );
      sides.push(await startSide(release, compareDir, `nixoci/${compare}`, "nixoci", registry, snCompare));
    }
    const overlaySide = await startSide(release, dir, "overlayfs", "overlayfs", registry);
    sides.push(overlaySide);
    const mode = nixLayers ?? (release.series === "1.6" ? "link" : "target, views");
    console.log(`\n==== containerd ${version} (the nixoci side: auto's mode, ${mode})`);

    // 1. the big image
    let bigSamples: Map<Side, Sample[]> | undefined;
    if (SECTIONS.has(1)) {
      // The warm-up: the image's first pull on the node, where the snapshotter reads each store layer's paths once
      // to check them against the layer's chain ID (kept afterwards: later pulls, of any image with those layers,
      // read nothing).
      const firsts = new Map<Side, Sample>();
      for (const side of sides) firsts.set(side, await pullAndRun(side, registry, big));
      bigSamples = await series(sides, registry, big, RUNS);
      console.log(
        `\n1. CRI PullImage -> first output line of \`ctr -n ${NS} run --rm --snapshotter X\`, containerd ${version}: ` +
          `the big image; fresh state per run, after one warm-up run each; median of ${RUNS}, interleaved`,
      );
      printTable(big, bigSamples, overlaySide);
      const firstOverlay = firsts.get(overlaySide)!.totalMs;
      console.log(
        "first pull on the node (the warm-up; nixoci checks each store layer against its chain ID, once): " +
          sides
            .map((side) => {
              const t = firsts.get(side)!.totalMs;
              return `${side.name} ${sec(t)}${side === overlaySide ? "" : ` (${(t / firstOverlay).toFixed(2)}x)`}`;
            })
            .join(", "),
      );
    }

    // 2. per 1,000 store paths
    const perK = new Map<Side, number>();
    if (SECTIONS.has(2)) {
      const smallSamples = new Map<Side, Sample[]>(sides.map((s) => [s, []]));
      const largeSamples = new Map<Side, Sample[]>(sides.map((s) => [s, []]));
      // Untimed first pulls: the snapshotter's one check of each store layer (section 1) is not a cost per pull.
      for (const side of sides) for (const image of [small, large]) await pullAndRun(side, registry, image);
      for (let run = 0; run < PATH_RUNS; run++) {
        const order = run % 2 === 0 ? sides : [...sides].reverse();
        for (const side of order) {
          smallSamples.get(side)!.push(await pullAndRun(side, registry, small));
          largeSamples.get(side)!.push(await pullAndRun(side, registry, large));
        }
      }
      const deltaK = (large.paths - small.paths) / 1000;
      console.log(
        `\n2. extra cost per 1,000 store paths, containerd ${version}: ${small.paths} vs ` +
          `${large.paths} store paths (${small.layers.length} and ${large.layers.length} layers; ` +
          `${mb(small.narSize)} and ${mb(large.narSize)} of NAR); pull -> first output, median of ${PATH_RUNS}`,
      );
      console.log(
        "snapshotter".padEnd(12) +
          `${small.paths} paths`.padStart(12) +
          `${large.paths} paths`.padStart(13) +
          "per 1,000 paths".padStart(17) +
          "  blobs GET (layers), few / many".padEnd(34) +
          "  pull CPU, containerd / snapshotter: few | many",
      );
      for (const side of sides) {
        const s = smallSamples.get(side)!;
        const l = largeSamples.get(side)!;
        const ts = median(s.map((x) => x.totalMs));
        const tl = median(l.map((x) => x.totalMs));
        perK.set(side, (tl - ts) / deltaK);
        const g = (xs: Sample[]) => `${xs[xs.length - 1].blobGets} (${xs[xs.length - 1].layerGets})`;
        console.log(
          side.name.padEnd(12) +
            sec(ts).padStart(12) +
            sec(tl).padStart(13) +
            sec((tl - ts) / deltaK).padStart(17) +
            `  ${g(s)} / ${g(l)}`.padEnd(34) +
            `  ${pullCpu(side, s)} | ${pullCpu(side, l)}`,
        );
      }
    }

    // 3. the fallback when the labels point nowhere
    if (SECTIONS.has(3)) {
      const bad = await pushWithBadLabels(registry, big, `bad-labels-${release.series}`);
      const badSide: Side = { ...nixSide, name: "nixoci/bad" };
      await pullAndRun(badSide, registry, bad); // warm-up, untimed
      const badSamples = await series([badSide], registry, bad, RUNS);
      console.log(
        `\n3. the image of 1. with every nix-store-path label naming a missing store path (nixoci/bad: the ` +
          `snapshotter falls back to containerd ${version} downloading every layer); median of ${RUNS}`,
      );
      // Against the overlayfs side's runs of 1. (this section's own when 1 did not run).
      const overlayRuns =
        bigSamples?.get(overlaySide) ?? (await series([overlaySide], registry, big, RUNS)).get(overlaySide)!;
      printTable(bad, new Map([...badSamples, [overlaySide, overlayRuns]]), overlaySide, false);
    }
    const medianOf = (side: Side) =>
      bigSamples ? median(bigSamples.get(side)!.map((x) => x.totalMs)) : Number.NaN;
    return {
      release,
      mode,
      nixociMs: medianOf(nixSide),
      overlayMs: medianOf(overlaySide),
      perKNixoci: perK.get(nixSide) ?? Number.NaN,
      perKOverlay: perK.get(overlaySide) ?? Number.NaN,
    };
  } finally {
    for (const side of sides) {
      side.cri.close();
      await side.containerd.stop();
    }
    await stopSnapshotter(sn);
    await stopSnapshotter(snCompare);
  }
}

/** Every release side by side: the big image's pull -> first output, and the cost per 1,000 store paths. */
function printSummary(results: ReleaseResult[]): void {
  console.log(
    `\nCRI pull -> first output, every containerd release side by side (medians; goals: <= ${GOAL_VS_OVERLAYFS}x ` +
      `overlayfs on 2.1, <= ${GOAL_MS_PER_K_PATHS} ms per 1,000 extra store paths)`,
  );
  console.log(
    "containerd".padEnd(12) +
      "mode".padEnd(8) +
      "nixoci".padStart(9) +
      "overlayfs".padStart(11) +
      "ratio".padStart(8) +
      "  per 1,000 paths: nixoci / overlayfs".padEnd(40) +
      "goals",
  );
  for (const r of results) {
    const ratioNow = r.nixociMs / r.overlayMs;
    // NaN: the section did not run (NIXOCI_BENCH_CRI_SECTIONS).
    const judge = (x: number, ok: boolean) => (Number.isNaN(x) ? "not run" : verdict(ok));
    const goals =
      r.release.series === "2.1"
        ? `<= ${GOAL_VS_OVERLAYFS}x: ${judge(ratioNow, ratioNow <= GOAL_VS_OVERLAYFS)}; ` +
          `<= ${GOAL_MS_PER_K_PATHS} ms/1,000 paths: ${judge(r.perKNixoci, r.perKNixoci <= GOAL_MS_PER_K_PATHS)}`
        : "(reported)";
    console.log(
      versionOf(r.release).padEnd(12) +
        r.mode.padEnd(8) +
        sec(r.nixociMs).padStart(9) +
        sec(r.overlayMs).padStart(11) +
        ratio(ratioNow).padStart(8) +
        `  ${Math.round(r.perKNixoci)} ms / ${Math.round(r.perKOverlay)} ms`.padEnd(40) +
        goals,
    );
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await benchCri();
