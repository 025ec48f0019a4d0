// Load benchmark: `nixoci serve` under sustained concurrent pulls and pushes, side by side with docker-registry
// 2.8, and its binary cache endpoint under many concurrent NAR downloads. Loopback only.
//
//   1. Registry load: PULLERS concurrent pullers and PUSHERS concurrent pushers for SECONDS against each server
//      in turn (nixoci serve first; the other server waits idle), from this process over two keep-alive
//      http.Agents (maxSockets = maxFreeSockets = the number of loops using it). A puller loops over
//      PULL_IMAGES images pushed beforehand (OCI manifests, a config and 3 random layers of 16 KiB, 256 KiB
//      and 2 MiB): GET of the manifest by tag with docker's Accept list, then GET of the config and each layer
//      in turn, streamed and discarded; the manifest, config and every layer are checked against their
//      SHA-256 digests and sizes. A pusher loops pushing a new image to a unique tag: a unique random layer of
//      64 KiB-1 MiB (alternately POST + monolithic PUT, and POST + 2 PATCH chunks + PUT), a unique config
//      (POST + PUT), then PUT of the manifest; the Docker-Content-Digest answers are checked. Once SECONDS
//      have passed no loop starts another pull or push; what is in flight finishes (anything still running
//      DRAIN_LIMIT_MS later is aborted and counted as an error). Both servers start empty (nixoci serve as
//      bench/serve.ts starts it, docker-registry with filesystem storage as test/support/daemons.ts does) and
//      get WARMUP_PULLS pulls first.
//   2. NAR streams: a fresh `nixoci serve --sign-key KEY` (key made with nix-store --generate-binary-cache-key)
//      and NAR_STREAMS concurrent downloaders for NAR_SECONDS over the closure of every attribute of
//      examples/packages.nix: GET of the narinfo, then GET of its NAR URL (zstd, compressed on the fly by a
//      `zstd` child process per request). Beforehand each path is fetched once and checked: the narinfo's
//      signature verifies, the NAR decompresses (zstd -d) to NarSize bytes hashing to NarHash; under load every
//      narinfo must equal that one and every compressed NAR its SHA-256 (zstd's output is deterministic).
// Errors: a socket error, a timeout (no progress for REQUEST_IDLE_MS), any status other than the expected one
// (200 for GETs, 201/202 for pushes), or a digest/size mismatch. Latency is per request for manifest, blob,
// narinfo and NAR GETs, and per whole image for pushes. The server's memory: VmRSS of its process sampled every
// SAMPLE_MS (plus that of its child processes for the sum), and VmHWM, reset (clear_refs 5) before the phase,
// read after it. Children: /proc/PID/task/*/children at every sample; "compressors" are those named zstd or xz.
// The load generator shares the machine's cores with the server: its own CPU use shapes the numbers, and so
// does anything else running. Nothing about time or memory is asserted; setup failures throw.
//
// Environment: NIXOCI_LOAD_SECONDS (60), NIXOCI_LOAD_PULLERS (500), NIXOCI_LOAD_PUSHERS (50),
// NIXOCI_LOAD_NAR_STREAMS (200; 0 skips the NAR phase), NIXOCI_LOAD_NAR_SECONDS (30).
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { setMaxListeners } from "node:events";
import * as fs from "node:fs";
import * as http from "node:http";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { monitorEventLoopDelay, type IntervalHistogram } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { Hash } from "../src/nix/hash.js";
import { narInfoFingerprint, parseNarInfo } from "../src/nix/narinfo.js";
import { parsePublicKey, verifyFingerprint } from "../src/nix/signature.js";
import { processesUnder, startRegistry, type Registry } from "../test/support/daemons.js";
import { generateCacheKey } from "../test/support/fixtures.js";
import { percentile, rmTree, startServe, stopServe, storePaths, type Serve } from "./serve.js";

function envInt(name: string, def: number, min: number): number {
  const v = process.env[name];
  if (v === undefined || v === "") return def;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer >= ${min}, got ${v}`);
  return n;
}

const SECONDS = envInt("NIXOCI_LOAD_SECONDS", 60, 1);
const PULLERS = envInt("NIXOCI_LOAD_PULLERS", 500, 0);
const PUSHERS = envInt("NIXOCI_LOAD_PUSHERS", 50, 0);
const NAR_STREAMS = envInt("NIXOCI_LOAD_NAR_STREAMS", 200, 0);
const NAR_SECONDS = envInt("NIXOCI_LOAD_NAR_SECONDS", 30, 1);

const PULL_IMAGES = 4;
const PULL_LAYER_SIZES = [16 << 10, 256 << 10, 2 << 20];
const PUSH_MIN = 64 << 10;
const PUSH_MAX = 1 << 20;
const PUSH_REPOS = 10;
const WARMUP_PULLS = 20;
const REQUEST_IDLE_MS = 60_000;
const DRAIN_LIMIT_MS = 120_000;
const SAMPLE_MS = 200;
/** After a failed pull or push, a loop waits this long (a server refusing at once must not be hammered). */
const ERROR_PAUSE_MS = 100;
/** Goal from the issue. */
const GOAL_RSS = 300e6;

const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip";
/** What docker 20.10's pull sends (as one header). */
const DOCKER_ACCEPT = [
  "application/vnd.docker.distribution.manifest.v2+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
  "application/vnd.oci.image.index.v1+json",
  OCI_MANIFEST,
  "application/vnd.docker.distribution.manifest.v1+prettyjws",
  "application/json",
].join(", ");

const sha256 = (b: Buffer): string => `sha256:${createHash("sha256").update(b).digest("hex")}`;
const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(0)} MB`;

// ---- HTTP ----

interface Target {
  name: string;
  host: string;
  port: number;
  /** The server process. */
  pid: number;
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  bytes: number;
  /** The body (kept when asked for, and for error statuses). */
  body: Buffer;
  /** sha256:HEX of the body, when asked for. */
  digest?: string;
}

/** One request on `agent`; the response streamed and kept, hashed or dropped. Fails after REQUEST_IDLE_MS idle. */
function call(
  target: Target,
  agent: http.Agent,
  method: string,
  path: string,
  o: { headers?: Record<string, string>; body?: Buffer; keep?: "body" | "digest"; signal?: AbortSignal },
): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const headers = { ...o.headers };
    if (method !== "GET" && method !== "HEAD") headers["Content-Length"] = String(o.body?.length ?? 0);
    const req = http.request(
      {
        host: "127.0.0.1",
        port: target.port,
        path,
        method,
        headers,
        agent,
        timeout: REQUEST_IDLE_MS,
        signal: o.signal,
      },
      (res) => {
        const status = res.statusCode ?? 0;
        const keep = o.keep === "body" || status >= 300;
        const hash = o.keep === "digest" ? createHash("sha256") : undefined;
        const chunks: Buffer[] = [];
        let bytes = 0;
        res.on("data", (d: Buffer) => {
          bytes += d.length;
          hash?.update(d);
          if (keep) chunks.push(d);
        });
        res.on("error", reject);
        res.on("end", () =>
          resolve({
            status,
            headers: res.headers,
            bytes,
            body: Buffer.concat(chunks),
            digest: hash && `sha256:${hash.digest("hex")}`,
          }),
        );
        res.on("close", () => {
          if (!res.complete) reject(new Error("response cut short"));
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error(`no progress for ${REQUEST_IDLE_MS / 1000} s`)));
    req.on("error", (err: Error) => {
      // Which connection failed: a fresh one, or a kept-alive one (and how long it had been idle).
      const idle = req.reusedSocket && req.socket ? lastUsed.get(req.socket) : undefined;
      const where =
        idle === undefined ? "new connection" : `keep-alive connection idle ${idleBucket(t0 - idle)}`;
      reject(Object.assign(err, { where }));
    });
    const t0 = performance.now();
    req.end(o.body);
  });
}

/** When each kept-alive connection was last handed back to its agent. */
const lastUsed = new WeakMap<object, number>();

function idleBucket(ms: number): string {
  return ms < 1000 ? "< 1 s" : ms < 4000 ? "1-4 s" : ms < 6000 ? "4-6 s" : ">= 6 s";
}

/** A request's failure, already counted. */
class Failed extends Error {}

class Stats {
  requests = 0;
  readonly errors = new Map<string, number>();
  readonly manifest: number[] = [];
  readonly blob: number[] = [];
  readonly push: number[] = [];
  readonly narinfo: number[] = [];
  readonly nar: number[] = [];
  pulls = 0;
  pushes = 0;
  bytesIn = 0;
  bytesOut = 0;

  error(what: string): void {
    this.errors.set(what, (this.errors.get(what) ?? 0) + 1);
  }

  get errorCount(): number {
    let n = 0;
    for (const c of this.errors.values()) n += c;
    return n;
  }
}

interface Ctx {
  target: Target;
  stats: Stats;
  signal: AbortSignal;
  /** True once no new pull or push should start. */
  stopped(): boolean;
}

function reason(ctx: Ctx, err: unknown): string {
  if (ctx.signal.aborted) return `unfinished ${DRAIN_LIMIT_MS / 1000} s after the end`;
  const e = err as NodeJS.ErrnoException & { where?: string };
  return `${e.code ? `${e.code} ${e.message}` : e.message}${e.where ? ` (${e.where})` : ""}`;
}

/** A counted request that must answer `expect`; anything else is counted as an error and throws Failed. */
async function request(
  ctx: Ctx,
  agent: http.Agent,
  label: string,
  method: string,
  path: string,
  expect: number,
  o: { headers?: Record<string, string>; body?: Buffer; keep?: "body" | "digest" } = {},
): Promise<Reply> {
  ctx.stats.requests++;
  let r: Reply;
  try {
    r = await call(ctx.target, agent, method, path, { ...o, signal: ctx.signal });
  } catch (err) {
    ctx.stats.error(`${label}: ${reason(ctx, err)}`);
    throw new Failed();
  }
  ctx.stats.bytesIn += r.bytes;
  ctx.stats.bytesOut += o.body?.length ?? 0;
  if (r.status !== expect) {
    const code = /"code"\s*:\s*"([A-Z_]+)"/.exec(r.body.toString("utf8", 0, 2000))?.[1];
    ctx.stats.error(`${label}: HTTP ${r.status}${code ? ` ${code}` : ""}`);
    throw new Failed();
  }
  return r;
}

function check(ctx: Ctx, label: string, ok: boolean, why: string): void {
  if (ok) return;
  ctx.stats.error(`${label}: ${why}`);
  throw new Failed();
}

// ---- images ----

/** Random bytes to cut unique blobs from (a fresh 32-byte head makes each one unique). */
const POOL = randomBytes(Math.max(...PULL_LAYER_SIZES, PUSH_MAX));

function uniqueBlob(size: number): Buffer {
  const off = Math.floor(Math.random() * (POOL.length - size + 1));
  return Buffer.concat([randomBytes(32), POOL.subarray(off + 32, off + size)]);
}

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
}

interface Image {
  config: Buffer;
  layers: Buffer[];
  manifest: Buffer;
  digest: string;
}

function makeImage(layerSizes: number[]): Image {
  const layers = layerSizes.map(uniqueBlob);
  const config = Buffer.from(
    JSON.stringify({
      architecture: "amd64",
      os: "linux",
      config: { Env: [`NONCE=${randomBytes(16).toString("hex")}`] },
      rootfs: { type: "layers", diff_ids: layers.map(sha256) },
    }),
  );
  const desc = (mediaType: string, b: Buffer): Descriptor => ({
    mediaType,
    digest: sha256(b),
    size: b.length,
  });
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: desc(OCI_CONFIG, config),
      layers: layers.map((l) => desc(OCI_LAYER, l)),
    }),
  );
  return { config, layers, manifest, digest: sha256(manifest) };
}

/** An upload URL from a Location header (docker-registry's are absolute), with `digest` set when given. */
function uploadPath(location: string | undefined, digest?: string): string {
  if (!location) throw new Error("no Location");
  const u = new URL(location, "http://127.0.0.1");
  if (digest) u.searchParams.set("digest", digest);
  return u.pathname + u.search;
}

/** POST, then one PUT with the whole blob, or two PATCH chunks and a PUT without a body. */
async function uploadBlob(ctx: Ctx, agent: http.Agent, repo: string, blob: Buffer, chunked: boolean) {
  const digest = sha256(blob);
  const start = await request(ctx, agent, "POST upload", "POST", `/v2/${repo}/blobs/uploads/`, 202);
  let location = start.headers.location;
  const octets = { "Content-Type": "application/octet-stream" };
  let last: Reply;
  if (chunked) {
    const half = blob.length >> 1;
    for (const [from, to] of [
      [0, half],
      [half, blob.length],
    ]) {
      const r = await request(ctx, agent, "PATCH upload", "PATCH", uploadPath(location), 202, {
        headers: { ...octets, "Content-Range": `${from}-${to - 1}` },
        body: blob.subarray(from, to),
      });
      location = r.headers.location;
    }
    last = await request(ctx, agent, "PUT upload", "PUT", uploadPath(location, digest), 201);
  } else {
    last = await request(ctx, agent, "PUT upload", "PUT", uploadPath(location, digest), 201, {
      headers: octets,
      body: blob,
    });
  }
  check(ctx, "PUT upload", last.headers["docker-content-digest"] === digest, "wrong Docker-Content-Digest");
}

async function pushImage(
  ctx: Ctx,
  agent: http.Agent,
  repo: string,
  tag: string,
  image: Image,
  chunked: boolean,
): Promise<void> {
  for (const layer of image.layers) await uploadBlob(ctx, agent, repo, layer, chunked);
  await uploadBlob(ctx, agent, repo, image.config, false);
  const r = await request(ctx, agent, "PUT manifest", "PUT", `/v2/${repo}/manifests/${tag}`, 201, {
    headers: { "Content-Type": OCI_MANIFEST },
    body: image.manifest,
  });
  check(
    ctx,
    "PUT manifest",
    r.headers["docker-content-digest"] === image.digest,
    "wrong Docker-Content-Digest",
  );
}

interface PullImage {
  repo: string;
  image: Image;
}

/** One pull: the manifest by tag, then the config and the layers in turn; everything checked. */
async function pullOnce(ctx: Ctx, agent: http.Agent, p: PullImage): Promise<void> {
  let t = performance.now();
  const m = await request(ctx, agent, "GET manifest", "GET", `/v2/${p.repo}/manifests/latest`, 200, {
    headers: { Accept: DOCKER_ACCEPT },
    keep: "body",
  });
  ctx.stats.manifest.push(performance.now() - t);
  check(ctx, "GET manifest", sha256(m.body) === p.image.digest, "manifest digest mismatch");
  const manifest = JSON.parse(m.body.toString()) as { config: Descriptor; layers: Descriptor[] };
  for (const d of [manifest.config, ...manifest.layers]) {
    t = performance.now();
    const isConfig = d === manifest.config;
    const b = await request(ctx, agent, "GET blob", "GET", `/v2/${p.repo}/blobs/${d.digest}`, 200, {
      keep: isConfig ? "body" : "digest",
    });
    ctx.stats.blob.push(performance.now() - t);
    check(ctx, "GET blob", b.bytes === d.size, `${b.bytes} bytes, expected ${d.size}`);
    check(ctx, "GET blob", (isConfig ? sha256(b.body) : b.digest) === d.digest, "blob digest mismatch");
  }
  ctx.stats.pulls++;
}

// ---- the server's memory and children ----

interface ProcStatus {
  name: string;
  rss: number;
  hwm: number;
}

function procStatus(pid: number): ProcStatus | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  } catch {
    return undefined;
  }
  const field = (k: string): string => new RegExp(`^${k}:\\s*(.*)$`, "m").exec(text)?.[1] ?? "";
  const kb = (k: string): number => (parseInt(field(k), 10) || 0) * 1024;
  return { name: field("Name").trim(), rss: kb("VmRSS"), hwm: kb("VmHWM") };
}

function childrenOf(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      try {
        const text = fs.readFileSync(`/proc/${pid}/task/${tid}/children`, "utf8").trim();
        if (text) out.push(...text.split(/\s+/).map(Number));
      } catch {
        // a thread that just ended
      }
    }
  } catch {
    // the process is gone
  }
  return out;
}

/** Samples the server process (and its children) every SAMPLE_MS until stop(). */
class Sampler {
  peakRss = 0;
  peakTotal = 0;
  peakChildren = 0;
  peakCompressors = 0;
  samples = 0;
  hwm = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly pid: number) {
    try {
      fs.writeFileSync(`/proc/${pid}/clear_refs`, "5"); // resets VmHWM to the current RSS
    } catch {
      // not allowed: VmHWM is then the peak since the start
    }
    this.sample();
    this.timer = setInterval(() => this.sample(), SAMPLE_MS);
  }

  private sample(): void {
    const st = procStatus(this.pid);
    if (!st) return;
    this.samples++;
    let total = st.rss;
    let compressors = 0;
    const children = childrenOf(this.pid);
    for (const c of children) {
      const cs = procStatus(c);
      if (!cs) continue;
      total += cs.rss;
      if (cs.name === "zstd" || cs.name === "xz") compressors++;
    }
    this.peakRss = Math.max(this.peakRss, st.rss);
    this.peakTotal = Math.max(this.peakTotal, total);
    this.peakChildren = Math.max(this.peakChildren, children.length);
    this.peakCompressors = Math.max(this.peakCompressors, compressors);
  }

  stop(): void {
    clearInterval(this.timer);
    this.sample();
    this.hwm = procStatus(this.pid)?.hwm ?? 0;
  }
}

// ---- a timed phase ----

interface PhaseResult {
  stats: Stats;
  wallMs: number;
  sampler: Sampler;
  /** This process's event-loop delay during the phase (how far behind the load generator fell). */
  loopDelay: IntervalHistogram;
}

/** Runs `loops` until `seconds` have passed (then lets them finish, up to DRAIN_LIMIT_MS), sampling the server. */
async function phase(
  target: Target,
  seconds: number,
  loops: ((ctx: Ctx) => Promise<void>)[],
): Promise<PhaseResult> {
  const stats = new Stats();
  const abort = new AbortController();
  setMaxListeners(0, abort.signal); // one listener per request in flight
  const sampler = new Sampler(target.pid);
  const loopDelay = monitorEventLoopDelay({ resolution: 20 });
  loopDelay.enable();
  const t0 = performance.now();
  const deadline = t0 + seconds * 1000;
  const ctx: Ctx = { target, stats, signal: abort.signal, stopped: () => performance.now() >= deadline };
  const timer = setTimeout(() => abort.abort(), seconds * 1000 + DRAIN_LIMIT_MS);
  try {
    await Promise.all(loops.map((loop) => loop(ctx)));
  } finally {
    clearTimeout(timer);
    sampler.stop();
    loopDelay.disable();
  }
  return { stats, wallMs: performance.now() - t0, sampler, loopDelay };
}

/** Repeats `once` until the phase stops; a failure is counted (if not yet) and followed by a short pause. */
async function repeat(ctx: Ctx, label: string, once: (n: number) => Promise<void>): Promise<void> {
  for (let n = 0; !ctx.stopped(); n++) {
    try {
      await once(n);
    } catch (err) {
      if (!(err instanceof Failed)) ctx.stats.error(`${label}: ${reason(ctx, err)}`);
      if (ctx.signal.aborted) return;
      await sleep(ERROR_PAUSE_MS);
    }
  }
}

function agent(sockets: number): http.Agent {
  const a = new http.Agent({ keepAlive: true, maxSockets: Math.max(1, sockets), maxFreeSockets: sockets });
  a.on("free", (socket: object) => lastUsed.set(socket, performance.now()));
  return a;
}

async function registryLoad(target: Target, images: PullImage[]): Promise<PhaseResult> {
  const pullAgent = agent(PULLERS);
  const pushAgent = agent(PUSHERS);
  try {
    const warm = await phase(target, 3600, [
      async (ctx) => {
        for (let i = 0; i < WARMUP_PULLS; i++)
          await pullOnce(ctx, pullAgent, images[i % images.length]).catch((err: unknown) => {
            if (!(err instanceof Failed)) ctx.stats.error(`warm-up: ${reason(ctx, err)}`);
          });
      },
    ]);
    if (warm.stats.errorCount)
      throw new Error(`${target.name}: warm-up pulls failed: ${[...warm.stats.errors.keys()].join("; ")}`);
    const nonce = randomBytes(4).toString("hex");
    const pullers = Array.from(
      { length: PULLERS },
      (_, i) => (ctx: Ctx) =>
        repeat(ctx, "pull", (n) => pullOnce(ctx, pullAgent, images[(i + n) % images.length])),
    );
    const pushers = Array.from(
      { length: PUSHERS },
      (_, i) => async (ctx: Ctx) =>
        repeat(ctx, "push", async (n) => {
          const image = makeImage([PUSH_MIN + Math.floor(Math.random() * (PUSH_MAX - PUSH_MIN + 1))]);
          const t0 = performance.now();
          await pushImage(
            ctx,
            pushAgent,
            `load/push-${i % PUSH_REPOS}`,
            `${nonce}-${i}-${n}`,
            image,
            n % 2 === 1,
          );
          ctx.stats.push.push(performance.now() - t0);
          ctx.stats.pushes++;
        }),
    );
    return await phase(target, SECONDS, [...pullers, ...pushers]);
  } finally {
    pullAgent.destroy();
    pushAgent.destroy();
  }
}

// ---- NAR streams ----

interface NarRef {
  hashPart: string;
  narinfo: string;
  url: string;
  /** sha256 of the compressed NAR. */
  digest: string;
  narSize: number;
}

/** Fetches and checks each path's narinfo and NAR once (signature, NarHash, NarSize). */
async function narReferences(target: Target, paths: string[], publicKey: string): Promise<NarRef[]> {
  const a = agent(8);
  const ctx: Ctx = { target, stats: new Stats(), signal: new AbortController().signal, stopped: () => false };
  const trusted = [parsePublicKey(publicKey)];
  const refs: NarRef[] = [];
  try {
    for (const path of paths) {
      const hashPart = path.slice("/nix/store/".length, "/nix/store/".length + 32);
      const ni = await request(ctx, a, "GET narinfo", "GET", `/${hashPart}.narinfo`, 200, { keep: "body" });
      const narinfo = ni.body.toString();
      const info = parseNarInfo(narinfo, { input: path, expectedHashPart: hashPart });
      if (!verifyFingerprint(narInfoFingerprint(info), info.sigs, trusted))
        throw new Error(`${path}: narinfo signature does not verify`);
      if (info.compression !== "zstd") throw new Error(`${path}: Compression ${info.compression}`);
      const nar = await request(ctx, a, "GET nar", "GET", `/${info.url}`, 200, { keep: "body" });
      const plain = execFileSync("zstd", ["-d", "-c", "-q"], { input: nar.body, maxBuffer: 1 << 30 });
      if (plain.length !== info.narSize || !Hash.of("sha256", plain).equals(info.narHash))
        throw new Error(`${path}: the NAR does not match NarHash/NarSize`);
      refs.push({ hashPart, narinfo, url: `/${info.url}`, digest: sha256(nar.body), narSize: info.narSize });
    }
  } catch (err) {
    if (err instanceof Failed)
      throw new Error(`reference fetch failed: ${[...ctx.stats.errors.keys()].join("; ")}`, { cause: err });
    throw err;
  } finally {
    a.destroy();
  }
  return refs;
}

interface NarResult extends PhaseResult {
  paths: number;
  narBytes: number;
  closureNar: number;
}

async function narLoad(work: string): Promise<NarResult> {
  const roots = storePaths([]); // every attribute of examples/packages.nix
  const paths = execFileSync("nix-store", ["--query", "--requisites", ...roots])
    .toString()
    .split("\n")
    .filter(Boolean);
  const key = generateCacheKey("nixoci-load-1", join(work, "key"));
  const serve = await startServe(join(work, "nar-storage"), ["--sign-key", key.secretKeyFile]);
  const a = agent(NAR_STREAMS);
  try {
    const target = serveTarget(serve);
    const refs = await narReferences(target, paths, key.publicKey);
    let narBytes = 0;
    const loops = Array.from(
      { length: NAR_STREAMS },
      (_, i) => (ctx: Ctx) =>
        repeat(ctx, "nar", async (n) => {
          const ref = refs[(i + n * NAR_STREAMS) % refs.length];
          let t = performance.now();
          const ni = await request(ctx, a, "GET narinfo", "GET", `/${ref.hashPart}.narinfo`, 200, {
            keep: "body",
          });
          ctx.stats.narinfo.push(performance.now() - t);
          check(ctx, "GET narinfo", ni.body.toString() === ref.narinfo, "narinfo differs");
          t = performance.now();
          const nar = await request(ctx, a, "GET nar", "GET", ref.url, 200, { keep: "digest" });
          ctx.stats.nar.push(performance.now() - t);
          check(ctx, "GET nar", nar.digest === ref.digest, "compressed NAR differs");
          narBytes += ref.narSize;
        }),
    );
    const r = await phase(target, NAR_SECONDS, loops);
    if (r.stats.errorCount) console.log(`nixoci serve's log tail:\n${serve.log().slice(-3000)}`);
    return { ...r, paths: refs.length, narBytes, closureNar: refs.reduce((s, x) => s + x.narSize, 0) };
  } finally {
    a.destroy();
    await stopServe(serve);
  }
}

// ---- report ----

function serveTarget(serve: Serve): Target {
  return { name: "nixoci serve", host: serve.host, port: portOf(serve.host), pid: serve.proc.pid! };
}

function registryTarget(registry: Registry): Target {
  const pid = processesUnder(registry.dir).find((p) => procStatus(p)?.name === "docker-registry");
  if (!pid) throw new Error("cannot find the docker-registry process");
  return { name: "docker-registry 2.8", host: registry.host, port: portOf(registry.host), pid };
}

function portOf(host: string): number {
  return Number(host.slice(host.lastIndexOf(":") + 1));
}

function lat(xs: number[]): string {
  if (!xs.length) return "-";
  return `${percentile(xs, 50).toFixed(0)} / ${percentile(xs, 99).toFixed(0)} / ${Math.max(...xs).toFixed(0)}`;
}

function latRatio(a: number[], b: number[]): string {
  if (!a.length || !b.length) return "";
  return `${(percentile(a, 50) / percentile(b, 50)).toFixed(2)}x / ${(percentile(a, 99) / percentile(b, 99)).toFixed(2)}x`;
}

/** Event-loop delay p99 / max in ms. */
function delay(h: IntervalHistogram): string {
  return `${(h.percentile(99) / 1e6).toFixed(0)} / ${(h.max / 1e6).toFixed(0)} ms`;
}

const ratio = (a: number, b: number): string => (b > 0 ? `${(a / b).toFixed(2)}x` : "");

function table(head: string[], rows: string[][]): void {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i])))
      .join("  ")
      .trimEnd();
  console.log(line(head));
  for (const r of rows) console.log(line(r));
}

function printErrors(name: string, s: Stats): void {
  if (!s.errors.size) return;
  console.log(`${name} errors:`);
  for (const [e, c] of [...s.errors].sort((x, y) => y[1] - x[1])) console.log(`  ${c} x ${e}`);
}

function printRegistry(ours: PhaseResult, theirs: PhaseResult): void {
  const perSec = (n: number, r: PhaseResult): number => n / (r.wallMs / 1000);
  const o = ours.stats;
  const t = theirs.stats;
  const pull = PULL_LAYER_SIZES.reduce((a, b) => a + b, 0);
  console.log(
    `\nLoad: ${PULLERS} pullers + ${PUSHERS} pushers for ${SECONDS} s on loopback, each server in turn ` +
      `(a pull: manifest + config + 3 layers, ${(pull / 1e6).toFixed(1)} MB, of ${PULL_IMAGES} images; a push: 1 layer of ` +
      `64 KiB-1 MiB, config, manifest to a new tag). Latency p50 / p99 / max in ms; ratios nixoci / registry. ` +
      `The load generator runs on the same cores.`,
  );
  const rows: string[][] = [
    ["requests done", String(o.requests), String(t.requests), ratio(o.requests, t.requests)],
    ["errors (goal: 0)", String(o.errorCount), String(t.errorCount), ""],
    ["manifest GET latency", lat(o.manifest), lat(t.manifest), latRatio(o.manifest, t.manifest)],
    ["blob GET latency", lat(o.blob), lat(t.blob), latRatio(o.blob, t.blob)],
    ["push latency (whole image)", lat(o.push), lat(t.push), latRatio(o.push, t.push)],
    ["pulls done", String(o.pulls), String(t.pulls), ratio(o.pulls, t.pulls)],
    ["pushes done", String(o.pushes), String(t.pushes), ratio(o.pushes, t.pushes)],
    [
      "requests/s",
      perSec(o.requests, ours).toFixed(0),
      perSec(t.requests, theirs).toFixed(0),
      ratio(perSec(o.requests, ours), perSec(t.requests, theirs)),
    ],
    [
      "MB/s pulled / pushed",
      `${(perSec(o.bytesIn, ours) / 1e6).toFixed(0)} / ${(perSec(o.bytesOut, ours) / 1e6).toFixed(1)}`,
      `${(perSec(t.bytesIn, theirs) / 1e6).toFixed(0)} / ${(perSec(t.bytesOut, theirs) / 1e6).toFixed(1)}`,
      ratio(perSec(o.bytesIn, ours), perSec(t.bytesIn, theirs)),
    ],
    [
      "wall time (incl. finishing)",
      `${(ours.wallMs / 1000).toFixed(1)} s`,
      `${(theirs.wallMs / 1000).toFixed(1)} s`,
      "",
    ],
    [
      "server peak RSS: VmHWM / sampled",
      `${mb(ours.sampler.hwm)} / ${mb(ours.sampler.peakRss)}`,
      `${mb(theirs.sampler.hwm)} / ${mb(theirs.sampler.peakRss)}`,
      ratio(ours.sampler.hwm, theirs.sampler.hwm),
    ],
    [
      "server child processes (peak)",
      String(ours.sampler.peakChildren),
      String(theirs.sampler.peakChildren),
      "",
    ],
    ["load generator loop delay p99 / max", delay(ours.loopDelay), delay(theirs.loopDelay), ""],
  ];
  table(["measurement", "nixoci serve", "docker-registry 2.8", "ratio"], rows);
  console.log(
    `goal: nixoci serve peak RSS < ${mb(GOAL_RSS)}: ${ours.sampler.hwm < GOAL_RSS ? "ok" : "MISSED"}; ` +
      `no errors: ${o.errorCount === 0 ? "ok" : "MISSED"} (${ours.sampler.samples} / ` +
      `${theirs.sampler.samples} memory samples)`,
  );
  printErrors("nixoci serve", o);
  printErrors("docker-registry", t);
}

function printNar(r: NarResult): void {
  const s = r.stats;
  const secs = r.wallMs / 1000;
  console.log(
    `\nNAR streams: ${NAR_STREAMS} concurrent downloaders for ${NAR_SECONDS} s from nixoci serve's binary cache ` +
      `(${r.paths} store paths of examples/packages.nix, ${mb(r.closureNar)} of NAR in all; each download: ` +
      `GET narinfo, GET its .nar.zst). Latency p50 / p99 / max in ms.`,
  );
  table(
    ["measurement", "nixoci serve"],
    [
      ["requests done", String(s.requests)],
      ["errors (goal: 0)", String(s.errorCount)],
      ["narinfo GET latency", lat(s.narinfo)],
      ["NAR GET latency", lat(s.nar)],
      ["NARs downloaded", String(s.nar.length)],
      ["NARs/s", (s.nar.length / secs).toFixed(0)],
      [
        "MB/s compressed / as NAR",
        `${(s.bytesIn / 1e6 / secs).toFixed(1)} / ${(r.narBytes / 1e6 / secs).toFixed(1)}`,
      ],
      ["server peak RSS: VmHWM / sampled", `${mb(r.sampler.hwm)} / ${mb(r.sampler.peakRss)}`],
      ["server + children peak RSS (sampled)", mb(r.sampler.peakTotal)],
      ["child processes at once (peak)", String(r.sampler.peakChildren)],
      ["compressors (zstd/xz) at once (peak)", String(r.sampler.peakCompressors)],
      ["memory samples", String(r.sampler.samples)],
      ["load generator loop delay p99 / max", delay(r.loopDelay)],
    ],
  );
  printErrors("nixoci serve", s);
}

export async function benchLoad(): Promise<void> {
  const work = fs.mkdtempSync(join(tmpdir(), "nixoci-bench-load-"));
  try {
    await benchRegistryLoad(work);
    if (NAR_STREAMS > 0) printNar(await narLoad(work));
  } finally {
    rmTree(work);
  }
}

async function benchRegistryLoad(work: string): Promise<void> {
  let serve: Serve | undefined;
  let registry: Registry | undefined;
  try {
    [serve, registry] = await Promise.all([startServe(join(work, "storage")), startRegistry()]);
    const targets = [serveTarget(serve), registryTarget(registry)];
    const images: PullImage[] = Array.from({ length: PULL_IMAGES }, (_, i) => ({
      repo: `load/pull-${i}`,
      image: makeImage(PULL_LAYER_SIZES),
    }));
    const results: PhaseResult[] = [];
    for (const target of targets) {
      const a = agent(4);
      const ctx: Ctx = {
        target,
        stats: new Stats(),
        signal: new AbortController().signal,
        stopped: () => false,
      };
      try {
        for (const p of images) await pushImage(ctx, a, p.repo, "latest", p.image, false);
      } catch (err) {
        if (err instanceof Failed)
          throw new Error(
            `${target.name}: pushing the images failed: ${[...ctx.stats.errors.keys()].join("; ")}`,
            {
              cause: err,
            },
          );
        throw err;
      } finally {
        a.destroy();
      }
      results.push(await registryLoad(target, images));
    }
    if (results[0].stats.errorCount) console.log(`nixoci serve's log tail:\n${serve.log().slice(-3000)}`);
    printRegistry(results[0], results[1]);
  } finally {
    if (serve) await stopServe(serve);
    await registry?.stop();
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await benchLoad();
