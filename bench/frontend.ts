// BuildKit frontend benchmark: the same closure made into an image in one private dockerd three ways, side by
// side, cold and after one package changed, for each Docker of NIXOCI_BENCH_FRONTEND_DOCKER (default
// "20.10 28.5 28.5/containerd": bookworm's 20.10 with BuildKit v0.8, and 28.5 with its classic and its containerd
// image store, where layers are merged):
//
//   frontend    POST /v1.41/build?version=2 of a tar context holding nixoci.yaml (`# syntax=nixoci-frontend:bench`,
//               packages = the closure's top, substituters = a signed `nixoci serve` binary cache on loopback,
//               reached through `networkmode=host`); time to the image id in the progress stream. The frontend
//               image is built by scripts/frontend-image.mjs and `docker load`ed (untimed).
//   nixoci      `nixoci build --spec nixoci.yaml -o docker-archive:FILE` (store paths read from the local
//               /nix/store; a fresh --cache-dir for the cold run, the same one after the change) followed by
//               `docker load -i FILE`; time of both (each printed too).
//   Dockerfile  `FROM scratch` + `COPY nix /nix` with the closure staged into the context as nix/store/...
//               (`cp -a` of `nix-store -qR`, untimed, re-staged for the changed closure), built by the same
//               POST /build?version=2 with BuildKit's default Dockerfile frontend; the context's tar is streamed
//               to dockerd inside the timed part (as `docker build` would send it).
//
//   COPY --link BuildKit's own path to the same layers, for scale (Dockers with buildx: not 20.10): the frontend's
//               planned layers (`nixoci frontend plan`, untimed) staged into one context, and `docker buildx
//               build --load` of a Dockerfile that `COPY --link`s each from it (buildx's session sends the context,
//               after the first build only what changed); timed from its first vertex's start to its last one's
//               end (buildx's own wall time, which adds the CLI's start and its wait for the image, printed beside).
//               No network, no container, no plan: what BuildKit spends on making, merging and exporting the layers.
//
// For the frontend's builds the time is also split by phase from the vertices' start and end times and the steps'
// own log lines (plan step and its nixoci process, fetch steps and the longest fetch process, layer copies or
// merge, export and of it compressing and unpacking), and "BuildKit's part" is the build less nixoci's processes:
// after the change, that part alone is compared with the 0.1x goal.
//
// Cold: before each cold run every bench image is removed and `docker builder prune -af` empties BuildKit's
// cache (the frontend image stays). Before every timed run the disk settles (sync, then the data's file system's
// free space steady: containerd deletes pruned snapshots in the background, and a run that shares the disk with
// that, or with the write-back of the run before, measures them too). After the change: the changed closure (bench/fixtures/closure.nix with
// `--argstr changed 1`: 5 store paths differ) right after the cold run, with what the cold run left; for the
// frontend, that build once more with nothing changed (every step cached: BuildKit's own cost of a build, the floor
// of any build after a change).
// The binary cache is warmed once (untimed: every narinfo, NAR and NAR listing fetched), so that the cold runs do
// not also pay for `nixoci serve` compressing NARs and reading them for listings on first request. Series interleaved, RUNS runs each (medians).
// Executed / cached steps: the BuildKit vertices of the progress stream (for the frontend, its `nixoci: fetch`
// and `nixoci: layer` copy steps (without MergeOp only) and all vertices; for the Dockerfile, every vertex); layers: `docker image
// inspect`'s RootFS.Layers, whose diff_ids (the last cold run's) are compared layer by layer between the
// frontend's image and nixoci build's (`--tar-format docker20` on 20.10). Nothing about time is asserted; a failed build throws (a BuildKit flightcontrol/runc
// error is retried once, and reported). Knobs: NIXOCI_BENCH_FRONTEND_RUNS=N (default 3),
// NIXOCI_BENCH_FRONTEND_DOCKER (above), NIXOCI_BENCH_FRONTEND_DISK=loop: dockerd's data root on a fresh ext4 image,
// loop-mounted (root only), instead of the temp dir's file system: on a VM whose disk creates files at a cost that
// swings between directories (see fileCreateCost) it gives every run the same disk.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import {
  dockerBuild,
  loadFrontendImage,
  startBinaryCacheServer,
  timestampMs,
  type BinaryCacheServer,
  type BuildStatus,
  type BuildVertex,
} from "../test/support/buildkit.js";
import { startDockerd, type Dockerd } from "../test/support/daemons.js";
import { dockerRelease, type DockerRelease } from "../test/support/docker-release.js";
import { median, nixBuild } from "./common.js";

const RUNS = Number(process.env.NIXOCI_BENCH_FRONTEND_RUNS ?? 3);
const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const NIXOCI = join(ROOT, "bin/nixoci.js");
const FIXTURE = join(ROOT, "bench/fixtures/closure.nix");
const FRONTEND = "nixoci-frontend:bench";

/** A build's result as the series use it: it must have succeeded (a failure throws with its log). */
interface BuildResult {
  ms: number;
  imageId: string;
  vertices: BuildVertex[];
  statuses: BuildStatus[];
  log: string;
}

async function build(d: Dockerd, context: string, params: Record<string, string>): Promise<BuildResult> {
  const r = await dockerBuild(d, context, params);
  if (r.error || !r.imageId)
    throw new Error(`build of ${context} failed (${r.status}): ${r.error}\n${r.log.slice(-3000)}`);
  return {
    ms: r.ms,
    imageId: r.imageId,
    vertices: [...r.vertices.values()],
    statuses: [...r.statuses.values()],
    log: r.log,
  };
}

/**
 * Where a frontend build's time went, in ms, from its vertices' start and end times (executed vertices only) and
 * its steps' own log lines: the plan step (and, of it, nixoci's process: Node's start and the step's work), the
 * fetch steps from the first start to the last end (and the longest fetch process), the layers' copies or merge,
 * BuildKit's export (and of it, compressing the layers and unpacking them into the image store, where it does
 * those). Whatever is left of the build's time (BuildKit reading the build file and starting the frontend,
 * solving, gaps between steps) is the total less these.
 */
interface Phases {
  plan: number;
  planProcess: number;
  fetch: number;
  fetchProcess: number;
  layers: number;
  exporting: number;
  compressing: number;
  unpacking: number;
}

const PHASE_NAMES: Record<keyof Phases, string> = {
  plan: "plan step",
  planProcess: "  its nixoci process",
  fetch: "fetch steps",
  fetchProcess: "  the longest fetch process",
  layers: "layer copies / merge (each one's time, added up)",
  exporting: "export",
  compressing: "  compressing layers",
  unpacking: "  unpacking into the image store",
};

/** From the first of `starts` to the last of `ends` (ms since the epoch, undefined: not yet); undefined if none. */
function firstToLast(starts: Array<number | undefined>, ends: Array<number | undefined>): number | undefined {
  const s = starts.filter((t) => t !== undefined);
  const e = ends.filter((t) => t !== undefined);
  return s.length && e.length ? Math.max(...e) - Math.min(...s) : undefined;
}

/** The time from the first start to the last end of the executed vertices (or statuses) `pick` selects, in ms. */
function span<T extends { started: BuildVertex["started"]; completed: BuildVertex["completed"] }>(
  xs: T[],
  pick: (x: T) => boolean,
): number {
  const picked = xs.filter(pick);
  return (
    firstToLast(
      picked.map((x) => timestampMs(x.started)),
      picked.map((x) => timestampMs(x.completed)),
    ) ?? 0
  );
}

/** A step's own process time from its log line "... in W s (started after S s)": S + W, in ms, each such line. */
function processTimes(log: string, verb: string): number[] {
  return [...log.matchAll(new RegExp(`${verb} .* in ([\\d.]+) s \\(started after ([\\d.]+) s\\)`, "g"))].map(
    (m) => (Number(m[1]) + Number(m[2])) * 1000,
  );
}

function phasesOf(r: BuildResult): Phases {
  const run = r.vertices.filter((v) => !v.cached);
  const exportVertex = new Set(run.filter((v) => v.name === "exporting to image").map((v) => v.digest));
  const exportStatus = r.statuses.filter((s) => exportVertex.has(s.vertex));
  return {
    plan: span(run, (v) => v.name.startsWith("nixoci: plan")),
    planProcess: processTimes(r.log, "planned").reduce((a, b) => a + b, 0),
    fetch: span(run, isFetch),
    fetchProcess: Math.max(0, ...processTimes(r.log, "fetched")),
    // Each copy or merge's own time, added up (the planned customisation layer's copy runs beside the fetches).
    layers: run
      .filter((v) => /^nixoci: (layer \d|merge|customisation)/.test(v.name))
      .reduce((n, v) => n + span([v], () => true), 0),
    exporting: span(run, (v) => exportVertex.has(v.digest)),
    compressing: span(exportStatus, (s) => s.ID === "exporting layers"),
    unpacking: span(exportStatus, (s) => s.ID.startsWith("unpacking")),
  };
}

interface Sample {
  ms: number;
  /** For nixoci: [build, load] ms. */
  parts?: [number, number];
  layers: number;
  steps: string;
  /** For the frontend: where the time went. */
  phases?: Phases;
}

const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;
const sec = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
const ratio = (x: number) => `${x.toFixed(2)}x`;

const nixBuildTop = (outLink: string, extra: string[]): string => nixBuild(FIXTURE, "top", outLink, extra);

function requisites(top: string): string[] {
  return execFileSync("nix-store", ["--query", "--requisites", top]).toString().split("\n").filter(Boolean);
}

function narSize(paths: string[]): number {
  return execFileSync("nix-store", ["--query", "--size", ...paths])
    .toString()
    .split("\n")
    .filter(Boolean)
    .reduce((n, s) => n + Number(s), 0);
}

function diffIdsOf(d: Dockerd, ref: string): string[] {
  const inspect = JSON.parse(d.docker(["image", "inspect", ref]).toString()) as Array<{
    RootFS: { Layers: string[] };
  }>;
  return inspect[0].RootFS.Layers;
}

function layersOf(d: Dockerd, ref: string): number {
  return diffIdsOf(d, ref).length;
}

/** "executed / cached" of the vertices `pick` selects. */
function steps(vertices: BuildVertex[], pick: (v: BuildVertex) => boolean): string {
  const vs = vertices.filter(pick);
  return `${vs.filter((v) => !v.cached).length} / ${vs.filter((v) => v.cached).length}`;
}

const isFetch = (v: BuildVertex) => v.name.startsWith("nixoci: fetch");
const isCopy = (v: BuildVertex) => v.name.startsWith("nixoci: layer ");

/**
 * Fetches every path's narinfo, NAR and NAR listing from the binary cache once (4 at a time), so that it has them
 * ready, as a cache of static files would.
 */
async function warmCache(cacheUrl: string, paths: string[]): Promise<void> {
  const queue = [...paths];
  const worker = async () => {
    for (let p = queue.shift(); p; p = queue.shift()) {
      const hash = p.slice("/nix/store/".length, "/nix/store/".length + 32);
      const info = await fetch(`${cacheUrl}/${hash}.narinfo`);
      if (!info.ok) throw new Error(`${cacheUrl}/${hash}.narinfo: ${info.status}`);
      const url = /^URL: (.*)$/m.exec(await info.text())?.[1];
      if (!url) throw new Error(`${hash}.narinfo has no URL`);
      const nar = await fetch(`${cacheUrl}/${url}`);
      if (!nar.ok) throw new Error(`${cacheUrl}/${url}: ${nar.status}`);
      await nar.arrayBuffer();
      const ls = await fetch(`${cacheUrl}/${hash}.ls`);
      if (!ls.ok) throw new Error(`${cacheUrl}/${hash}.ls: ${ls.status}`);
      await ls.arrayBuffer();
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
}

/**
 * Waits (untimed) until the disk is quiet: dirty pages written back and the free space of the file system the
 * daemons keep their data on steady for 0.6 s (at most 60 s), so that a timed run does not share the disk with
 * what the previous run left: its write-back, the snapshots containerd deletes in the background after a prune.
 */
function settle(): void {
  execFileSync("sync");
  const pause = new Int32Array(new SharedArrayBuffer(4));
  let last = -1n;
  let steady = 0;
  for (const deadline = Date.now() + 60_000; steady < 3 && Date.now() < deadline;) {
    const free = BigInt(fs.statfsSync(dataDisk, { bigint: true }).bfree);
    steady = free === last ? steady + 1 : 0;
    last = free;
    Atomics.wait(pause, 0, 0, 200);
  }
  execFileSync("sync");
}

/**
 * What creating a file costs on this disk, in µs: 250 empty files in each of 4 fresh directories under `dir`
 * (min–max over the directories). Every image here is thousands of files created (fetched, copied, unpacked), and
 * on some VMs that cost swings by 30x between directories of one file system (20 µs to 0.8 ms of kernel time
 * measured here), so the numbers are read with it.
 */
function fileCreateCost(dir: string): string {
  const per: number[] = [];
  for (let d = 0; d < 4; d++) {
    const sub = fs.mkdtempSync(join(dir, "create-cost-"));
    const t = performance.now();
    for (let i = 0; i < 250; i++) fs.closeSync(fs.openSync(join(sub, String(i)), "wx"));
    per.push(((performance.now() - t) * 1000) / 250);
    fs.rmSync(sub, { recursive: true });
  }
  return `${Math.round(Math.min(...per))}–${Math.round(Math.max(...per))} µs`;
}

/** The file system dockerd keeps its data on (settle() watches it). */
let dataDisk = tmpdir();

/**
 * A fresh ext4 file system (a sparse 64 GiB image, loop-mounted) at `dir`/disk for dockerd's data, or undefined
 * unless NIXOCI_BENCH_FRONTEND_DISK=loop.
 */
function freshDisk(dir: string): { path: string; remove(): void } | undefined {
  const kind = process.env.NIXOCI_BENCH_FRONTEND_DISK ?? "tmp";
  if (kind === "tmp") return undefined;
  if (kind !== "loop") throw new Error(`NIXOCI_BENCH_FRONTEND_DISK=${kind}: expected tmp or loop`);
  const image = join(dir, "disk.img");
  const path = join(dir, "disk");
  fs.mkdirSync(path);
  execFileSync("truncate", ["-s", "64G", image]);
  execFileSync("mkfs.ext4", ["-q", "-F", image]);
  execFileSync("mount", ["-o", "loop", image, path]);
  return {
    path,
    remove() {
      // With what dockerd left mounted in it (-R); lazily if still busy after 10 s.
      for (let i = 0; ; i++) {
        try {
          execFileSync("umount", ["-R", path], { stdio: "pipe" });
          break;
        } catch {
          if (i >= 20) {
            execFileSync("umount", ["-R", "-l", path], { stdio: "pipe" });
            break;
          }
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 500);
        }
      }
      fs.rmSync(image, { force: true });
    },
  };
}

/** Every bench image removed, BuildKit's cache emptied; the frontend image stays. Then the disk settles. */
function makeCold(d: Dockerd): void {
  const refs = d
    .docker(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"])
    .toString()
    .split("\n")
    .filter((r) => r && r !== FRONTEND && !r.startsWith("<none>"));
  if (refs.length) d.docker(["image", "rm", "-f", ...refs]);
  const dangling = d.docker(["image", "ls", "-q", "--filter", "dangling=true"]).toString().split("\n");
  if (dangling.some(Boolean)) d.docker(["image", "rm", "-f", ...dangling.filter(Boolean)]);
  d.docker(["builder", "prune", "-af"]);
  settle();
}

/** A context directory holding nixoci.yaml for `top`. */
function specContext(dir: string, top: string, cacheUrl: string, publicKey: string): string {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(
    join(dir, "nixoci.yaml"),
    [
      `# syntax=${FRONTEND}`,
      `packages: [${JSON.stringify(top)}]`,
      `entrypoint: [${JSON.stringify(`${top}/bin/bench-app`)}]`,
      `substituters: [${JSON.stringify(cacheUrl)}]`,
      `trustedPublicKeys: [${JSON.stringify(publicKey)}]`,
      "",
    ].join("\n"),
  );
  return dir;
}

/** A context with the closure's files at nix/store/... and a two-line Dockerfile. */
function dockerfileContext(dir: string, paths: string[]): string {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(join(dir, "nix/store"), { recursive: true });
  execFileSync("cp", ["-a", ...paths, join(dir, "nix/store")]);
  fs.writeFileSync(join(dir, "Dockerfile"), "FROM scratch\nCOPY nix /nix\n");
  return dir;
}

/** The layers of `top`'s image as the frontend plans them (`nixoci frontend plan` against the cache; untimed). */
function plannedLayers(top: string, cacheUrl: string, publicKey: string, dir: string): string[][] {
  const out = join(dir, "layers-plan.json");
  execFileSync(
    process.execPath,
    [NIXOCI, "frontend", "plan", "--out", out, "--from", cacheUrl, "--trusted-public-key", publicKey, top],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  const plan = JSON.parse(fs.readFileSync(out, "utf8")) as { layers: Array<{ paths: string[] }> };
  fs.rmSync(out);
  return plan.layers.map((l) => l.paths);
}

/**
 * A context for BuildKit's own Dockerfile frontend making the same store layers: each distinct layer's paths
 * (`cp -a`, untimed) under l-HASH/nix/store, and per variant a Dockerfile.NAME that `COPY --link`s its layers in
 * plan order, with a Dockerfile.NAME.dockerignore leaving out the other variant's layers (so a cold build sends
 * only its own files).
 */
function linkContext(dir: string, variants: Record<string, string[][]>): string {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const dirOf = (paths: string[]) =>
    `l-${createHash("sha256").update(paths.join("\n")).digest("hex").slice(0, 16)}`;
  const all = new Map<string, string[]>();
  for (const layers of Object.values(variants)) for (const paths of layers) all.set(dirOf(paths), paths);
  for (const [d, paths] of all) {
    fs.mkdirSync(join(dir, d, "nix/store"), { recursive: true });
    execFileSync("cp", ["-a", ...paths, join(dir, d, "nix/store")]);
  }
  for (const [name, layers] of Object.entries(variants)) {
    const mine = new Set(layers.map(dirOf));
    const lines = layers.map((paths) => `COPY --link ${dirOf(paths)} /`);
    fs.writeFileSync(join(dir, `Dockerfile.${name}`), ["FROM scratch", ...lines, ""].join("\n"));
    const ignored = [...all.keys()].filter((d) => !mine.has(d));
    fs.writeFileSync(
      join(dir, `Dockerfile.${name}.dockerignore`),
      ["Dockerfile.*", ...ignored, ""].join("\n"),
    );
  }
  return dir;
}

/**
 * `docker buildx build --load` of the context's Dockerfile.NAME (buildx's session sends the context, only what
 * changed after the first build). Timed as BuildKit's time: from the first vertex's start to the last one's end
 * in buildx's rawjson progress (buildx's own wall time, which adds the CLI's start and its wait for the image,
 * is reported beside it).
 */
function buildxBuild(d: Dockerd, ctx: string, name: string, tag: string): Sample {
  const t = performance.now();
  const r = d.buildx([
    "build",
    "--load",
    "--provenance=false",
    "-f",
    join(ctx, `Dockerfile.${name}`),
    "-t",
    tag,
    "--progress",
    "rawjson",
    ctx,
  ]);
  const wall = performance.now() - t;
  const vertices = new Map<string, { cached?: boolean; started?: string; completed?: string }>();
  for (const line of r.stderr.split("\n")) {
    if (!line.startsWith("{")) continue;
    const status = JSON.parse(line) as {
      vertexes?: Array<{ digest: string; cached?: boolean; started?: string; completed?: string }>;
    };
    for (const v of status.vertexes ?? []) vertices.set(v.digest, { ...vertices.get(v.digest), ...v });
  }
  const vs = [...vertices.values()];
  const ms = firstToLast(
    vs.map((v) => (v.started ? Date.parse(v.started) : undefined)),
    vs.map((v) => (v.completed ? Date.parse(v.completed) : undefined)),
  );
  if (ms === undefined) throw new Error(`buildx build of Dockerfile.${name}: no progress`);
  const cached = vs.filter((v) => v.cached).length;
  return {
    ms,
    layers: layersOf(d, tag),
    steps: `${vs.length - cached} / ${cached} vertices (buildx's wall time ${sec(wall)})`,
  };
}

/** A Docker to benchmark on: a release of the Docker matrix, with the classic or the containerd image store. */
interface DockerTarget {
  release: DockerRelease;
  containerdStore: boolean;
  label: string;
}

/** NIXOCI_BENCH_FRONTEND_DOCKER: "SERIES[/containerd] ..." (default: 20.10, 28.5 and 28.5 with containerd). */
function dockerTargets(): DockerTarget[] {
  const spec = process.env.NIXOCI_BENCH_FRONTEND_DOCKER ?? "20.10 28.5 28.5/containerd";
  return spec
    .split(/[\s,]+/)
    .filter(Boolean)
    .map((t) => {
      const [series, store] = t.split("/");
      const release = dockerRelease({ NIXOCI_DOCKER: series });
      return {
        release,
        containerdStore: store === "containerd",
        label: `dockerd ${release.series}${store === "containerd" ? " (containerd image store)" : ""}`,
      };
    });
}

export async function benchFrontend(): Promise<void> {
  for (const target of dockerTargets()) await benchFrontendOn(target);
}

async function benchFrontendOn(target: DockerTarget): Promise<void> {
  const started = performance.now();
  const rootsDir = "/tmp/nixoci-bench-closure"; // shared with bench/build.ts and bench/cri.ts
  fs.mkdirSync(rootsDir, { recursive: true });
  const base = nixBuildTop(join(rootsDir, "top"), []);
  const changed = nixBuildTop(join(rootsDir, "top-changed"), ["--argstr", "changed", "1"]);
  const basePaths = requisites(base);
  const changedPaths = requisites(changed);
  const before = new Set(basePaths);
  const differing = changedPaths.filter((p) => !before.has(p));

  const dir = fs.mkdtempSync(join("/tmp", "nixoci-bench-frontend-"));
  let d: Dockerd | undefined;
  let cache: BinaryCacheServer | undefined;
  const disk = freshDisk(dir);
  dataDisk = disk?.path ?? tmpdir();
  try {
    const t0 = performance.now();
    d = await startDockerd({
      release: target.release,
      containerdStore: target.containerdStore,
      ...(disk ? { dataRoot: join(disk.path, "docker") } : {}),
    });
    const dk = d;
    loadFrontendImage(dk, FRONTEND, dir);
    cache = await startBinaryCacheServer(dir, "frontend-bench");
    const cacheUrl = cache.url;
    const keys = { publicKey: cache.publicKey };

    const specBase = specContext(join(dir, "spec-base"), base, cacheUrl, keys.publicKey);
    const specChanged = specContext(join(dir, "spec-changed"), changed, cacheUrl, keys.publicKey);
    const retries: string[] = [];
    // BuildKit v0.8 sometimes fails a build of many concurrent steps on a loaded machine with "flightcontrol:
    // exceeded retry timeout" / "runc run failed: container process is already dead" (moby/buildkit#1822):
    // such a build is run again once (from a cold state again if it was a cold one), and said so.
    const withRetry = async (what: string, cold: boolean, build: () => Promise<BuildResult>) => {
      try {
        return await build();
      } catch (err) {
        const msg = (err as Error).message;
        if (!/flightcontrol: exceeded retry timeout|runc run failed/.test(msg)) throw err;
        retries.push(
          `${what}: ${/flightcontrol: exceeded retry timeout/.test(msg) ? "flightcontrol" : "runc"}`,
        );
        if (cold) makeCold(dk);
        return await build();
      }
    };
    const fe = (ctx: string, tag: string, cold: boolean) =>
      withRetry(tag, cold, () => build(dk, ctx, { dockerfile: "nixoci.yaml", t: tag, networkmode: "host" }));
    // Warm-up (untimed): the binary cache compresses every NAR once (as a populated cache would have them).
    await warmCache(cacheUrl, [...new Set([...basePaths, ...changedPaths])]);
    const setupMs = performance.now() - t0;

    const series = {
      frontendCold: [] as Sample[],
      frontendChanged: [] as Sample[],
      frontendSame: [] as Sample[],
      nixociCold: [] as Sample[],
      nixociChanged: [] as Sample[],
      dockerfileCold: [] as Sample[],
      dockerfileChanged: [] as Sample[],
      linkCold: [] as Sample[],
      linkChanged: [] as Sample[],
      linkSame: [] as Sample[],
    };
    let stageMs = 0;
    // dockerd 20.10 (BuildKit v0.8) writes Go 1.8-style tar headers: nixoci build's are those with docker20.
    const tarFormat = target.release.series === "20.10" ? ["--tar-format", "docker20"] : [];
    // The last cold run's diff_ids of both: the frontend's layers must be nixoci build's, byte for byte.
    const diffIds = { frontend: [] as string[], nixoci: [] as string[] };

    const frontendPair = async (run: number) => {
      makeCold(dk);
      const c = await fe(specBase, `bench-frontend:cold-${run}`, true);
      diffIds.frontend = diffIdsOf(dk, `bench-frontend:cold-${run}`);
      series.frontendCold.push({
        ms: c.ms,
        layers: diffIds.frontend.length,
        steps: `${steps(c.vertices, isFetch)} fetch steps (copy steps: ${steps(c.vertices, isCopy)}; all vertices: ${steps(c.vertices, () => true)})`,
        phases: phasesOf(c),
      });
      settle();
      const w = await fe(specChanged, `bench-frontend:changed-${run}`, false);
      series.frontendChanged.push({
        ms: w.ms,
        layers: layersOf(dk, `bench-frontend:changed-${run}`),
        steps: `${steps(w.vertices, isFetch)} fetch steps (copy steps: ${steps(w.vertices, isCopy)}; all vertices: ${steps(w.vertices, () => true)})`,
        phases: phasesOf(w),
      });
      // The same again, every step cached: what BuildKit spends on a build that runs nothing (solve, export,
      // image), below which no build after a change can go.
      settle();
      const n = await fe(specChanged, `bench-frontend:same-${run}`, false);
      series.frontendSame.push({
        ms: n.ms,
        layers: layersOf(dk, `bench-frontend:same-${run}`),
        steps: `${steps(n.vertices, isFetch)} fetch steps (all vertices: ${steps(n.vertices, () => true)})`,
        phases: phasesOf(n),
      });
    };

    const nixociPair = (run: number) => {
      makeCold(dk);
      const cache = join(dir, `nixoci-cache-${run}`);
      const one = (ctx: string, tag: string, layout: string): Sample => {
        const file = join(dir, `${layout}.tar`);
        const a = performance.now();
        const out = execFileSync(process.execPath, [
          NIXOCI,
          "build",
          "-q",
          "--json",
          "--cache-dir",
          cache,
          "--spec",
          join(ctx, "nixoci.yaml"),
          ...tarFormat,
          "-o",
          `docker-archive:${file}:${tag}`,
        ]);
        const b = performance.now();
        dk.docker(["load", "-i", file]);
        const e = performance.now();
        fs.rmSync(file);
        const layers = (JSON.parse(out.toString()) as { layers: Array<{ status: string }> }).layers;
        const built = layers.filter((l) => l.status === "built").length;
        return {
          ms: e - a,
          parts: [b - a, e - b],
          layers: layersOf(dk, tag),
          steps: `${built} / ${layers.length - built} layers`,
        };
      };
      series.nixociCold.push(one(specBase, `bench-nixoci:cold-${run}`, `cold-${run}`));
      diffIds.nixoci = diffIdsOf(dk, `bench-nixoci:cold-${run}`);
      settle();
      series.nixociChanged.push(one(specChanged, `bench-nixoci:changed-${run}`, `changed-${run}`));
      fs.rmSync(cache, { recursive: true, force: true });
    };

    const dockerfilePair = async (run: number) => {
      makeCold(dk);
      const ctx = join(dir, "dockerfile-context");
      let s = performance.now();
      dockerfileContext(ctx, basePaths);
      stageMs += performance.now() - s;
      settle();
      const c = await withRetry("Dockerfile cold", true, () =>
        build(dk, ctx, { t: `bench-dockerfile:cold-${run}` }),
      );
      series.dockerfileCold.push({
        ms: c.ms,
        layers: layersOf(dk, `bench-dockerfile:cold-${run}`),
        steps: steps(c.vertices, () => true),
      });
      s = performance.now();
      dockerfileContext(ctx, changedPaths);
      stageMs += performance.now() - s;
      settle();
      const w = await withRetry("Dockerfile changed", false, () =>
        build(dk, ctx, { t: `bench-dockerfile:changed-${run}` }),
      );
      series.dockerfileChanged.push({
        ms: w.ms,
        layers: layersOf(dk, `bench-dockerfile:changed-${run}`),
        steps: steps(w.vertices, () => true),
      });
      fs.rmSync(ctx, { recursive: true, force: true });
    };

    // BuildKit's own path to the same layers, where buildx is (not 20.10): the Dockerfile frontend `COPY --link`ing
    // each planned layer from a local context. No network, no container, no plan: what BuildKit itself spends on
    // making, merging and exporting these layers, cold and after the same change.
    const linkCtx = target.release.buildxPluginDir
      ? linkContext(join(dir, "link-context"), {
          base: plannedLayers(base, cacheUrl, keys.publicKey, dir),
          changed: plannedLayers(changed, cacheUrl, keys.publicKey, dir),
        })
      : undefined;
    const linkPair = (run: number) => {
      if (!linkCtx) return;
      makeCold(dk);
      series.linkCold.push(buildxBuild(dk, linkCtx, "base", `bench-link:cold-${run}`));
      settle();
      series.linkChanged.push(buildxBuild(dk, linkCtx, "changed", `bench-link:changed-${run}`));
      settle();
      series.linkSame.push(buildxBuild(dk, linkCtx, "changed", `bench-link:same-${run}`));
    };

    const pairs = [frontendPair, nixociPair, dockerfilePair, linkPair];
    for (let run = 0; run < RUNS; run++) {
      const order = run % 2 === 0 ? pairs : [...pairs].reverse();
      for (const pair of order) await pair(run);
    }

    console.log(
      `\nBuildKit frontend: bench/fixtures/closure.nix, ${basePaths.length} store paths, ` +
        `${mb(narSize(basePaths))} NAR; changed variant: ${differing.length} store paths differ ` +
        `(${mb(narSize(differing))} NAR); ${target.label}, one daemon; median of ${RUNS}, ` +
        `interleaved (setup: frontend image, binary cache warmed: ${sec(setupMs)}; staging the Dockerfile ` +
        `contexts with cp -a, untimed: ${sec(stageMs / (2 * RUNS))} each); dockerd's data on ` +
        `${disk ? "a fresh ext4 image (loop)" : "the temp dir's file system"}, creating a file there: ` +
        `${fileCreateCost(disk?.path ?? dir)}`,
    );
    const dfCold = median(series.dockerfileCold.map((s) => s.ms));
    const dfChanged = median(series.dockerfileChanged.map((s) => s.ms));
    const nxCold = median(series.nixociCold.map((s) => s.ms));
    const nxChanged = median(series.nixociChanged.map((s) => s.ms));
    console.log(
      "series".padEnd(34) +
        "time".padStart(9) +
        "vs Dockerfile".padStart(15) +
        "vs nixoci".padStart(11) +
        "layers".padStart(8) +
        "  executed / cached",
    );
    const line = (what: string, xs: Sample[], df: number, nx: number, what2 = "") => {
      const ms = median(xs.map((s) => s.ms));
      const last = xs[xs.length - 1];
      const parts = xs[0].parts
        ? ` (build ${sec(median(xs.map((s) => s.parts![0])))} + load ${sec(median(xs.map((s) => s.parts![1])))})`
        : "";
      console.log(
        what.padEnd(34) +
          sec(ms).padStart(9) +
          ratio(ms / df).padStart(15) +
          ratio(ms / nx).padStart(11) +
          String(last.layers).padStart(8) +
          `  ${last.steps}${what2}${parts}`,
      );
    };
    line("frontend, cold", series.frontendCold, dfCold, nxCold);
    line("frontend, 1 package changed", series.frontendChanged, dfChanged, nxChanged);
    line("frontend, nothing changed", series.frontendSame, dfChanged, nxChanged);
    line("nixoci build + docker load, cold", series.nixociCold, dfCold, nxCold, " built / reused");
    line("nixoci build + load, 1 changed", series.nixociChanged, dfChanged, nxChanged, " built / reused");
    line("Dockerfile COPY, cold", series.dockerfileCold, dfCold, nxCold, " vertices");
    line("Dockerfile COPY, 1 changed", series.dockerfileChanged, dfChanged, nxChanged, " vertices");
    const feCold = median(series.frontendCold.map((s) => s.ms));
    const feChanged = median(series.frontendChanged.map((s) => s.ms));
    console.log(
      `\ngoals: frontend cold / (nixoci build + docker load) cold = ${ratio(feCold / nxCold)} (issue 15: <= 1.5x); ` +
        `frontend after the change / frontend cold = ${ratio(feChanged / feCold)} (<= 0.1x; with nothing ` +
        `changed, every step cached: ${ratio(median(series.frontendSame.map((s) => s.ms)) / feCold)}); ` +
        `diff_ids equal to nixoci build${tarFormat.length ? " --tar-format docker20" : ""}'s: ` +
        `${diffIds.frontend.filter((d, i) => d === diffIds.nixoci[i]).length} of ${diffIds.nixoci.length} ` +
        `layers (the frontend's image has ${diffIds.frontend.length})`,
    );
    // Where the frontend's time went, and what of it is BuildKit's (all but nixoci's own processes in the steps).
    const frontendSeries: Array<[string, Sample[]]> = [
      ["cold", series.frontendCold],
      ["1 changed", series.frontendChanged],
      ["nothing changed", series.frontendSame],
    ];
    const phaseOf = (xs: Sample[], k: keyof Phases) => median(xs.map((x) => x.phases![k]));
    const buildkitPart = (xs: Sample[]) =>
      median(xs.map((x) => x.ms - x.phases!.planProcess - x.phases!.fetchProcess));
    console.log(
      `\nwhere the frontend's time went (medians; steps from their vertices' start to end)`.padEnd(66) +
        frontendSeries.map(([n]) => n.padStart(16)).join(""),
    );
    for (const k of Object.keys(PHASE_NAMES) as Array<keyof Phases>)
      console.log(
        PHASE_NAMES[k].padEnd(66) + frontendSeries.map(([, xs]) => sec(phaseOf(xs, k)).padStart(16)).join(""),
      );
    console.log(
      "BuildKit's part: the build less nixoci's processes in its steps".padEnd(66) +
        frontendSeries.map(([, xs]) => sec(buildkitPart(xs)).padStart(16)).join(""),
    );
    console.log(
      `after the change, BuildKit's part alone is ${ratio(buildkitPart(series.frontendChanged) / feCold)} of ` +
        `the frontend's cold build (the goal for the whole build: <= 0.1x)`,
    );
    if (series.linkCold.length) {
      const lc = median(series.linkCold.map((s) => s.ms));
      const lw = median(series.linkChanged.map((s) => s.ms));
      const ls = median(series.linkSame.map((s) => s.ms));
      console.log(
        `\nBuildKit's own path to the same ${series.linkCold[0].layers} store layers (buildx, its Dockerfile ` +
          `frontend \`COPY --link\`ing each from a local context: no network, no container, no plan; BuildKit's ` +
          `time, first vertex start to last end): cold ${sec(lc)} (${ratio(lc / nxCold)} of nixoci build + ` +
          `docker load), after the change ${sec(lw)} (${ratio(lw / lc)} of its cold; the change's own cost over ` +
          `nothing changed: ${sec(lw - ls)}), nothing changed ${sec(ls)}; last runs: ` +
          `${series.linkCold.at(-1)!.steps}; ${series.linkChanged.at(-1)!.steps}; ${series.linkSame.at(-1)!.steps}`,
      );
    }
    if (retries.length) console.log(`\nbuilds run again after a BuildKit error: ${retries.join(", ")}`);
    console.log(`\nfrontend benchmark: ${sec(performance.now() - started)} in all`);
  } finally {
    cache?.stop();
    await d?.stop();
    disk?.remove();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await benchFrontend();
