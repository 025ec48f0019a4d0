// `nixoci serve` benchmark: the on-demand registry side by side with docker-registry 2.8 and `nixoci build`.
//
// nixoci serve runs as a child process (`node bin/nixoci.js serve --listen 127.0.0.1:PORT --storage DIR
// --nix-file examples/packages.nix --log-level warn`, ready when GET /healthz answers 200, stopped with
// SIGTERM); docker-registry 2.8 is started by test/support/daemons.ts. Everything listens on 127.0.0.1 only.
//
//   1. skopeo pull of a cached image: the 20-package image (TWENTY_PACKAGES of test/support/serve.ts, as in
//      test/cli/serve.test.ts) is built by nixoci serve, then copied from it into docker-registry with skopeo,
//      so both serve the same manifest and blob bytes (checked by digest). Then `skopeo copy
//      --src-tls-verify=false docker://HOST/<20 packages>:latest oci:FRESH:x` from each, 5 runs interleaved
//      (the order alternates from run to run) after one untimed pull each; medians and the ratio nixoci /
//      registry (goal <= 1.1x).
//   2. On-demand latency of an uncached image: per run, a fresh nixoci serve on a fresh --storage dir (its
//      first request GET /v2/, untimed), then the timed GET of the 20-package manifest (OCI Accept) — which
//      evaluates and nix-builds the packages (already in the store: nothing is really built) and builds the
//      image; against `nixoci build -q --layering nixery --cache-dir FRESH PATHS -o oci:FRESH:x` of the
//      same store paths (resolved once with nix-build -A; nixery is serve's layering, so both build the same
//      layers) as a child process, which includes Node's start-up. `nix-build -A ...` of the 20 packages
//      (the evaluation serve does on a miss, nothing to build) is timed too. Median of 3, interleaved.
//   3. 200 concurrent pulls across 10 cached images (10 package combinations, built beforehand and copied
//      into docker-registry too): every pull GETs the manifest (OCI Accept), then the config and every layer
//      blob at once, reading bodies fully and checking their sizes and SHA-256; all 200 start together on
//      an http.Agent of 64 keep-alive sockets. Per-pull latency p50, p99, max, and errors (goal: none), for
//      nixoci serve and, as the reference, docker-registry, each after a warm-up of 20 pulls. The loop is
//      bounded: 200 pulls, 60 s idle timeout per request, 180 s for a whole round (then the rest is aborted
//      and counted as errors).
// Nothing about time is asserted; failures (a pull that does not complete, differing digests) throw.
// NIXOCI_BENCH_CPU_PROF=DIR runs the nixoci serve children with `node --cpu-prof --cpu-prof-dir DIR`.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { setMaxListeners } from "node:events";
import * as fs from "node:fs";
import * as http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { freePort, startRegistry, type Registry } from "../test/support/daemons.js";
import { TWENTY_PACKAGES as TWENTY } from "../test/support/serve.js";

const NIXOCI = fileURLToPath(new URL("../../bin/nixoci.js", import.meta.url));
const EXAMPLES = fileURLToPath(new URL("../../examples/packages.nix", import.meta.url));
const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";

const PULL_RUNS = 5;
const ONDEMAND_RUNS = 3;
const CONCURRENT_PULLS = 200;
const CONCURRENT_IMAGES = 10;
const CONCURRENT_SOCKETS = 64;
const WARMUP_PULLS = 20;
const REQUEST_IDLE_MS = 60_000;
const ROUND_LIMIT_MS = 180_000;

/** Goals from the issue. */
const GOAL_PULL_VS_REGISTRY = 1.1;

/** 10 different package combinations (every other one with bash, whose layer is the largest). */
const APPLETS = ["df", "du", "env", "free", "hostname", "md5sum", "ps", "sha256sum", "top", "uniq"];
const TEN = APPLETS.map((a, i) =>
  [a, APPLETS[(i + 3) % APPLETS.length], "hello", ...(i % 2 === 0 ? ["bash"] : ["coreutils"])].sort(),
);

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** The p-th percentile (0..100) by nearest rank. */
export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

const sec = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
const msec = (ms: number) => `${ms.toFixed(0)} ms`;
const ratio = (x: number) => `${x.toFixed(2)}x`;
const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;
const verdict = (ok: boolean) => (ok ? "ok" : "MISSED");

export function rmTree(path: string): void {
  try {
    execFileSync("chmod", ["-R", "u+w", path], { stdio: "ignore" });
  } catch {
    // missing, or nothing to change
  }
  fs.rmSync(path, { recursive: true, force: true });
}

interface Response {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** One HTTP request to 127.0.0.1:PORT, the body read fully; fails after `idleMs` without progress. */
function get(
  host: string,
  path: string,
  opts: { headers?: Record<string, string>; agent?: http.Agent; idleMs?: number; signal?: AbortSignal } = {},
): Promise<Response> {
  const port = Number(host.slice(host.lastIndexOf(":") + 1));
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: "127.0.0.1",
        port,
        path,
        method: "GET",
        headers: opts.headers,
        agent: opts.agent,
        timeout: opts.idleMs ?? 10_000,
        signal: opts.signal,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (d: Buffer) => chunks.push(d));
        res.on("error", reject);
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
        );
      },
    );
    req.on("timeout", () =>
      req.destroy(new Error(`GET ${path}: no progress for ${opts.idleMs ?? 10_000} ms`)),
    );
    req.on("error", reject);
    req.end();
  });
}

// ---- nixoci serve as a child process ----

export interface Serve {
  host: string;
  proc: ChildProcess;
  log(): string;
}

/** `nixoci serve` on a free loopback port with `--storage STORAGE --nix-file examples/packages.nix`, plus `extraArgs`. */
export async function startServe(storage: string, extraArgs: string[] = []): Promise<Serve> {
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const prof = process.env.NIXOCI_BENCH_CPU_PROF;
  const nodeArgs = prof ? ["--cpu-prof", "--cpu-prof-dir", prof] : [];
  const proc = spawn(
    process.execPath,
    [
      ...nodeArgs,
      NIXOCI,
      "serve",
      "--listen",
      host,
      "--storage",
      storage,
      "--nix-file",
      EXAMPLES,
      "--log-level",
      "warn",
      ...extraArgs,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let log = "";
  proc.stderr!.on("data", (d: Buffer) => (log = (log + d.toString()).slice(-20_000)));
  proc.on("error", (err) => (log += `\n${err.message}`));
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null || proc.signalCode !== null) break;
    const r = await get(host, "/healthz", { idleMs: 2000 }).catch(() => undefined);
    if (r?.status === 200) return { host, proc, log: () => log };
    await new Promise((r) => setTimeout(r, 50));
  }
  proc.kill("SIGKILL");
  throw new Error(`nixoci serve did not become ready: ${log}`);
}

/** SIGTERM by pid, then SIGKILL after 30 s. */
export async function stopServe(s: Serve): Promise<void> {
  if (s.proc.exitCode !== null || s.proc.signalCode !== null) return;
  const exited = new Promise<void>((r) => s.proc.once("exit", () => r()));
  s.proc.kill("SIGTERM");
  const timer = setTimeout(() => s.proc.kill("SIGKILL"), 30_000);
  await exited;
  clearTimeout(timer);
}

// ---- helpers ----

/** Runs a program to completion; its wall time in ms. Throws with stderr when it fails. */
function timed(cmd: string, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    child.on("error", reject);
    child.on("close", (code) => {
      const ms = performance.now() - t0;
      if (code === 0) resolve(ms);
      else reject(new Error(`${cmd} ${args.join(" ")} exited with ${code}: ${err.trim()}`));
    });
  });
}

function skopeo(args: string[]): Promise<number> {
  return timed("skopeo", args);
}

interface ImageInfo {
  digest: string;
  blobs: { digest: string; size: number }[];
}

/** GET of a manifest with OCI Accept (building the image if nixoci has not yet); its digest and blobs. */
async function manifestOf(host: string, repo: string, idleMs = 600_000): Promise<ImageInfo> {
  const r = await get(host, `/v2/${repo}/manifests/latest`, { headers: { Accept: OCI_MANIFEST }, idleMs });
  if (r.status !== 200) throw new Error(`GET ${host}/v2/${repo}/manifests/latest: ${r.status} ${r.body}`);
  const m = JSON.parse(r.body.toString()) as {
    config: { digest: string; size: number };
    layers: { digest: string; size: number }[];
  };
  const digest = `sha256:${createHash("sha256").update(r.body).digest("hex")}`;
  return { digest, blobs: [m.config, ...m.layers].map((d) => ({ digest: d.digest, size: d.size })) };
}

/** Copies repo:latest from nixoci serve into docker-registry, and checks both serve the same manifest. */
async function mirror(serve: Serve, registry: Registry, repo: string): Promise<ImageInfo> {
  const ours = await manifestOf(serve.host, repo);
  await skopeo([
    "copy",
    "-q",
    "--src-tls-verify=false",
    "--dest-tls-verify=false",
    `docker://${serve.host}/${repo}:latest`,
    `docker://${registry.host}/${repo}:latest`,
  ]);
  const theirs = await manifestOf(registry.host, repo);
  if (theirs.digest !== ours.digest)
    throw new Error(`${repo}: docker-registry serves ${theirs.digest}, nixoci serve ${ours.digest}`);
  return ours;
}

/** Store paths of examples/packages.nix attributes (built if need be), in attribute order. */
export function storePaths(attrs: string[]): string[] {
  return execFileSync("nix-build", ["--no-out-link", EXAMPLES, ...attrs.flatMap((a) => ["-A", a])], {
    stdio: ["ignore", "pipe", "pipe"],
  })
    .toString()
    .split("\n")
    .filter(Boolean);
}

/** A counter from GET /metrics (0 when absent). */
async function metric(host: string, series: string): Promise<number> {
  const text = (await get(host, "/metrics")).body.toString();
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

// ---- 1. skopeo pull ----

async function benchSkopeoPull(serve: Serve, registry: Registry, work: string): Promise<void> {
  const repo = TWENTY.join("/");
  const t0 = performance.now();
  const image = await mirror(serve, registry, repo);
  const setupMs = performance.now() - t0;
  const bytes = image.blobs.reduce((n, b) => n + b.size, 0);
  let n = 0;
  const pull = async (host: string): Promise<number> => {
    const dest = join(work, `pull-${n++}`);
    try {
      return await skopeo([
        "copy",
        "-q",
        "--src-tls-verify=false",
        `docker://${host}/${repo}:latest`,
        `oci:${dest}:x`,
      ]);
    } finally {
      rmTree(dest);
    }
  };
  await pull(serve.host);
  await pull(registry.host);
  const ours: number[] = [];
  const theirs: number[] = [];
  for (let run = 0; run < PULL_RUNS; run++) {
    if (run % 2 === 0) {
      ours.push(await pull(serve.host));
      theirs.push(await pull(registry.host));
    } else {
      theirs.push(await pull(registry.host));
      ours.push(await pull(serve.host));
    }
  }
  const o = median(ours);
  const t = median(theirs);
  console.log(
    `\n1. skopeo copy docker://HOST/<${TWENTY.length} packages>:latest oci:FRESH:x — a cached image of ` +
      `${image.blobs.length - 1} layers, ${mb(bytes)} (identical manifest ${image.digest.slice(0, 19)}… on both; ` +
      `building it and copying it into docker-registry took ${sec(setupMs)}); median of ${PULL_RUNS}, interleaved`,
  );
  console.log(
    "source".padEnd(22) + "time".padStart(10) + "vs registry".padStart(13) + "  runs".padEnd(40) + "goal",
  );
  const runs = (xs: number[]) => `  ${xs.map((x) => msec(x).replace(" ", "")).join(" ")}`;
  console.log(
    "docker-registry 2.8".padEnd(22) + sec(t).padStart(10) + ratio(1).padStart(13) + runs(theirs).padEnd(40),
  );
  console.log(
    "nixoci serve".padEnd(22) +
      sec(o).padStart(10) +
      ratio(o / t).padStart(13) +
      runs(ours).padEnd(40) +
      `<= ${GOAL_PULL_VS_REGISTRY}x registry: ${verdict(o / t <= GOAL_PULL_VS_REGISTRY)}`,
  );
}

// ---- 2. on-demand latency ----

async function benchOnDemand(work: string): Promise<void> {
  const repo = TWENTY.join("/");
  const paths = storePaths(TWENTY);
  const closure = execFileSync("nix-store", ["--query", "--requisites", ...paths])
    .toString()
    .split("\n")
    .filter(Boolean);
  const startup: number[] = [];
  for (let i = 0; i < ONDEMAND_RUNS; i++)
    startup.push(await timed(process.execPath, [NIXOCI, "build", "--help"]));

  const serveMs: number[] = [];
  const buildMs: number[] = [];
  const evalMs: number[] = [];
  let layers = 0;
  for (let run = 0; run < ONDEMAND_RUNS; run++) {
    const storage = join(work, `storage-${run}`);
    const serve = await startServe(storage);
    try {
      const base = await get(serve.host, "/v2/");
      if (base.status !== 200) throw new Error(`GET /v2/: ${base.status}`);
      const t0 = performance.now();
      const m = await manifestOf(serve.host, repo);
      serveMs.push(performance.now() - t0);
      layers = m.blobs.length - 1;
      // Really uncached: this request built the image (and nothing was served from a cache).
      const built = await metric(serve.host, 'nixoci_image_builds_total{result="success"}');
      const hits = await metric(serve.host, 'nixoci_image_cache_total{result="hit"}');
      if (built !== 1 || hits !== 0)
        throw new Error(`expected 1 build and no cache hit, got ${built} and ${hits}`);
    } finally {
      await stopServe(serve);
      rmTree(storage);
    }

    const cache = join(work, `cache-${run}`);
    const layout = join(work, `layout-${run}`);
    try {
      buildMs.push(
        await timed(process.execPath, [
          NIXOCI,
          "build",
          "-q",
          "--layering",
          "nixery",
          "--cache-dir",
          cache,
          ...paths,
          "-o",
          `oci:${layout}:x`,
        ]),
      );
    } finally {
      rmTree(cache);
      rmTree(layout);
    }

    evalMs.push(await timed("nix-build", ["--no-out-link", EXAMPLES, ...TWENTY.flatMap((a) => ["-A", a])]));
  }
  const s = median(serveMs);
  const b = median(buildMs);
  const e = median(evalMs);
  console.log(
    `\n2. an uncached image of ${TWENTY.length} packages (${closure.length} store paths, ${layers} layers): ` +
      `the first GET of its manifest from a fresh nixoci serve (fresh --storage) vs \`nixoci build\` of the ` +
      `same store paths (fresh --cache-dir, a child process: Node start-up + \`build --help\` is ` +
      `${msec(median(startup))}); median of ${ONDEMAND_RUNS}, interleaved`,
  );
  console.log("operation".padEnd(40) + "time".padStart(10) + "vs build".padStart(10) + "  runs");
  const line = (what: string, xs: number[], m: number) =>
    console.log(
      what.padEnd(40) +
        sec(m).padStart(10) +
        ratio(m / b).padStart(10) +
        `  ${xs.map((x) => msec(x).replace(" ", "")).join(" ")}`,
    );
  line("nixoci build --layering nixery PATHS", buildMs, b);
  line("nixoci serve: first GET of the manifest", serveMs, s);
  line("  of which nix-build -A x20 (no builds)", evalMs, e);
}

// ---- 3. concurrent pulls ----

interface PullRound {
  latencies: number[];
  errors: string[];
  wallMs: number;
  bytes: number;
}

/** One pull: the manifest, then its config and layers at once; bodies read fully and checked. */
async function pullOnce(
  host: string,
  repo: string,
  agent: http.Agent,
  signal: AbortSignal,
): Promise<{ ms: number; bytes: number }> {
  const t0 = performance.now();
  const opts = { agent, signal, idleMs: REQUEST_IDLE_MS };
  const r = await get(host, `/v2/${repo}/manifests/latest`, { ...opts, headers: { Accept: OCI_MANIFEST } });
  if (r.status !== 200) throw new Error(`manifest ${r.status}`);
  const m = JSON.parse(r.body.toString()) as {
    config: { digest: string; size: number };
    layers: { digest: string; size: number }[];
  };
  const sizes = await Promise.all(
    [m.config, ...m.layers].map(async (d) => {
      const b = await get(host, `/v2/${repo}/blobs/${d.digest}`, opts);
      if (b.status !== 200) throw new Error(`blob ${b.status}`);
      if (b.body.length !== d.size) throw new Error(`blob of ${b.body.length} bytes, expected ${d.size}`);
      if (`sha256:${createHash("sha256").update(b.body).digest("hex")}` !== d.digest)
        throw new Error("blob digest mismatch");
      return b.body.length;
    }),
  );
  return { ms: performance.now() - t0, bytes: r.body.length + sizes.reduce((a, b) => a + b, 0) };
}

/** `count` pulls (round-robin over the repos), all started at once, bounded by ROUND_LIMIT_MS. */
async function pullRound(host: string, repos: string[], count: number): Promise<PullRound> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: CONCURRENT_SOCKETS });
  const abort = new AbortController();
  setMaxListeners(count * 8, abort.signal); // one listener per request in flight
  const timer = setTimeout(() => abort.abort(new Error("round time limit")), ROUND_LIMIT_MS);
  const latencies: number[] = [];
  const errors: string[] = [];
  let bytes = 0;
  const t0 = performance.now();
  try {
    await Promise.all(
      Array.from({ length: count }, async (_, i) => {
        try {
          const p = await pullOnce(host, repos[i % repos.length], agent, abort.signal);
          latencies.push(p.ms);
          bytes += p.bytes;
        } catch (err) {
          errors.push((err as Error).message);
        }
      }),
    );
  } finally {
    clearTimeout(timer);
    agent.destroy();
  }
  return { latencies, errors, wallMs: performance.now() - t0, bytes };
}

async function benchConcurrent(serve: Serve, registry: Registry): Promise<void> {
  const repos = TEN.map((p) => p.join("/"));
  const t0 = performance.now();
  const images: ImageInfo[] = [];
  for (const repo of repos) images.push(await mirror(serve, registry, repo));
  const setupMs = performance.now() - t0;
  const perPull = images.reduce((n, im) => n + im.blobs.reduce((a, b) => a + b.size, 0), 0) / images.length;
  const requests = images.reduce((n, im) => n + 1 + im.blobs.length, 0) / images.length;

  const rows: [string, PullRound][] = [];
  for (const [name, host] of [
    ["nixoci serve", serve.host],
    ["docker-registry 2.8", registry.host],
  ] as const) {
    await pullRound(host, repos, WARMUP_PULLS);
    rows.push([name, await pullRound(host, repos, CONCURRENT_PULLS)]);
  }
  console.log(
    `\n3. ${CONCURRENT_PULLS} pulls of ${CONCURRENT_IMAGES} cached images at once (${CONCURRENT_SOCKETS} sockets; a ` +
      `pull: the manifest, then config and layers in parallel, ${requests.toFixed(1)} requests, ` +
      `${mb(perPull)} on average; building the images and copying them into docker-registry took ` +
      `${sec(setupMs)}); after ${WARMUP_PULLS} warm-up pulls`,
  );
  console.log(
    "server".padEnd(22) +
      "p50".padStart(10) +
      "p99".padStart(10) +
      "max".padStart(10) +
      "errors".padStart(8) +
      "wall".padStart(10) +
      "MB/s".padStart(8) +
      "  goal",
  );
  for (const [name, r] of rows) {
    const ok = r.latencies.length > 0;
    console.log(
      name.padEnd(22) +
        (ok ? msec(percentile(r.latencies, 50)) : "-").padStart(10) +
        (ok ? msec(percentile(r.latencies, 99)) : "-").padStart(10) +
        (ok ? msec(Math.max(...r.latencies)) : "-").padStart(10) +
        String(r.errors.length).padStart(8) +
        sec(r.wallMs).padStart(10) +
        (r.bytes / 1e6 / (r.wallMs / 1000)).toFixed(0).padStart(8) +
        (name.startsWith("nixoci") ? `  no errors: ${verdict(r.errors.length === 0)}` : ""),
    );
    if (r.errors.length) {
      const counts = new Map<string, number>();
      for (const e of r.errors) counts.set(e, (counts.get(e) ?? 0) + 1);
      for (const [e, c] of counts) console.log(`  ${c} x ${e}`);
    }
  }
}

export async function benchServe(): Promise<void> {
  storePaths([...new Set([...TWENTY, ...TEN.flat()])]); // built once; later a no-op
  const work = fs.mkdtempSync(join(tmpdir(), "nixoci-bench-serve-"));
  let serve: Serve | undefined;
  let registry: Registry | undefined;
  try {
    [serve, registry] = await Promise.all([startServe(join(work, "storage")), startRegistry()]);
    await benchSkopeoPull(serve, registry, work);
    await benchOnDemand(work); // its own nixoci serve children; the others wait idle
    await benchConcurrent(serve, registry);
  } finally {
    if (serve) await stopServe(serve);
    await registry?.stop();
    rmTree(work);
  }
}
