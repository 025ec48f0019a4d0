// Fault drills: kill -9 an operation at chosen points, then check what it left and that the next run works.
//
// - Seeds and trials: NIXOCI_DRILL_SEED (default: a random one, logged so a failure can be replayed) and
//   NIXOCI_DRILL_TRIALS (random kill points per operation; default 2, what `npm test` runs; `npm run drill`
//   runs 50). Each operation draws its points from its own generator (the seed mixed with the operation's
//   label), so replaying one operation does not depend on which others ran.
// - Kill points: uniformly random within the measured duration of one uninterrupted run, plus fixed early
//   points (a process killed while it starts, or at its first writes).
// - Processes: the CLI spawned asynchronously (the event loop keeps running, so the kill timer fires on time)
//   and SIGKILLed after a delay; daemons found by their command line in /proc.
// - Checks: pid-tagged temporaries (".NAME.tmp-<pid>-<12 hex>", util/fs.ts's tempSuffix) under the directories
//   an operation writes to; OCI layouts and archives whose every blob matches its digest; registry images
//   absent or complete.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import {
  closeSync,
  existsSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
} from "node:fs";
import * as http from "node:http";
import { setTimeout as sleep } from "node:timers/promises";
import { join } from "node:path";
import { ROOT } from "./cli.js";
import { freePort } from "./daemons.js";
import { makeTempDir } from "./fixtures.js";
import { runText } from "./run.js";
import { GiveUp, until } from "./poll.js";

const BIN = join(ROOT, "bin/nixoci.js");

// ---- seed, trials, kill points ----

function intEnv(name: string, dflt: number): number {
  const v = process.env[name];
  if (v === undefined || v === "") return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer, got ${v}`);
  return n;
}

/** Random kill points per operation (NIXOCI_DRILL_TRIALS; 2 by default, `npm run drill` sets 50). */
export const DRILL_TRIALS = intEnv("NIXOCI_DRILL_TRIALS", 2);
/** The seed every kill point comes from (NIXOCI_DRILL_SEED replays a run). */
export const DRILL_SEED = intEnv("NIXOCI_DRILL_SEED", randomBytes(4).readUInt32BE(0) >>> 1);
/**
 * The long run (`npm run drill`, at least 10 trials): also runs the cases that find a known, not yet fixed
 * defect (each marked with a comment naming it), which the CI-sized run leaves out so `npm test` passes.
 */
export const LONG_DRILL = DRILL_TRIALS >= 10;

console.log(
  `drill: NIXOCI_DRILL_SEED=${DRILL_SEED} NIXOCI_DRILL_TRIALS=${DRILL_TRIALS} (set both to replay this run)`,
);

/** mulberry32: a small, fast, seedable generator of floats in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The generator of one operation: the drill seed mixed with the operation's label. */
export function rngFor(label: string): () => number {
  const h = createHash("sha256").update(`${DRILL_SEED}\0${label}`).digest();
  return mulberry32(h.readUInt32BE(0));
}

export interface KillPoint {
  /** Milliseconds after the operation started. */
  ms: number;
  kind: "fixed" | "random";
}

/** Fixed early points (ms): while the process starts, and at its first reads and writes. */
export const FIXED_EARLY_MS = [0, 60, 150, 300];

/**
 * The kill points of one operation: the fixed early ones (below the measured duration; the CI-sized run takes
 * `ciFixed` of them) and `trials` points uniformly random in [0, measuredMs).
 */
export function killPoints(
  label: string,
  measuredMs: number,
  opts: { trials?: number; fixed?: number[]; ciFixed?: number } = {},
): KillPoint[] {
  const rng = rngFor(label);
  const fixedAll = (opts.fixed ?? FIXED_EARLY_MS).filter((ms) => ms < measuredMs);
  const fixed = LONG_DRILL ? fixedAll : fixedAll.slice(-(opts.ciFixed ?? 1));
  const points: KillPoint[] = fixed.map((ms) => ({ ms, kind: "fixed" as const }));
  for (let i = 0; i < (opts.trials ?? DRILL_TRIALS); i++)
    points.push({ ms: Math.floor(rng() * measuredMs), kind: "random" });
  return points;
}

/** What a drill found at one trial, for its summary line. */
export type TrialOutcome = string;

/**
 * Runs `trial` for each point in order; an error names the operation, the point and how to replay it. Logs one
 * line per trial and a summary; returns the outcomes.
 */
export async function runTrials(
  label: string,
  points: KillPoint[],
  trial: (p: KillPoint, index: number) => Promise<TrialOutcome>,
): Promise<TrialOutcome[]> {
  const outcomes: TrialOutcome[] = [];
  for (const [i, p] of points.entries()) {
    const where = `${label}: trial ${i + 1}/${points.length}, kill at ${p.ms} ms (${p.kind})`;
    let outcome: TrialOutcome;
    try {
      outcome = await trial(p, i);
    } catch (err) {
      throw new Error(
        `${where}: ${(err as Error).message}\n  replay: NIXOCI_DRILL_SEED=${DRILL_SEED} NIXOCI_DRILL_TRIALS=${DRILL_TRIALS}`,
        { cause: err },
      );
    }
    outcomes.push(outcome);
    console.log(`${where}: ${outcome}`);
  }
  const counts = new Map<string, number>();
  for (const o of outcomes) {
    const k = o.replace(/\s*[(;].*$/, "");
    counts.set(k, (counts.get(k) ?? 0) + 1);
  }
  console.log(
    `${label}: ${points.length} trials passed (${[...counts].map(([k, n]) => `${n} ${k}`).join(", ")})`,
  );
  return outcomes;
}

// ---- processes ----

export interface Finished {
  pid: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  ms: number;
}

export interface SpawnOptions {
  env?: NodeJS.ProcessEnv;
  /** A file fed to stdin (default: nothing, stdin at EOF). */
  stdinFile?: string;
}

/** `nixoci ARGS...` as a child process (no shell), stdout and stderr collected. */
export function spawnNixoci(args: string[], opts: SpawnOptions = {}): ChildProcess {
  const fd = opts.stdinFile ? openSync(opts.stdinFile, "r") : undefined;
  try {
    return spawn(process.execPath, [BIN, ...args], {
      stdio: [fd ?? "ignore", "pipe", "pipe"],
      env: { ...process.env, ...opts.env },
    });
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** Waits for a child to exit, with what it wrote; `killAfterMs` SIGKILLs it that long after `started`. */
export function finish(child: ChildProcess, started: number, killAfterMs?: number): Promise<Finished> {
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  const timer =
    killAfterMs === undefined
      ? undefined
      : setTimeout(() => child.kill("SIGKILL"), Math.max(0, started + killAfterMs - performance.now()));
  return new Promise((resolve, reject) => {
    child.once("error", reject);
    child.once("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ pid: child.pid ?? 0, code, signal, stdout, stderr, ms: performance.now() - started });
    });
  });
}

/** Runs `nixoci ARGS...` to its end (asynchronously). */
export function runNixoci(args: string[], opts: SpawnOptions = {}): Promise<Finished> {
  const started = performance.now();
  return finish(spawnNixoci(args, opts), started);
}

/** Runs `nixoci ARGS...` and fails (with its stderr) unless it exits 0. */
export async function runNixociOk(args: string[], opts: SpawnOptions = {}): Promise<Finished> {
  const r = await runNixoci(args, opts);
  assert.equal(r.code, 0, `nixoci ${args.join(" ")} exited ${r.code ?? r.signal}: ${r.stderr}`);
  return r;
}

/** Runs `nixoci ARGS...` and SIGKILLs it `ms` after it started (unless it ended first). */
export function runNixociKilledAt(args: string[], ms: number, opts: SpawnOptions = {}): Promise<Finished> {
  const started = performance.now();
  return finish(spawnNixoci(args, opts), started, ms);
}

/** "killed", or how it ended first ("finished": exit 0; else the code and stderr). */
export function describeEnd(r: Finished): string {
  if (r.signal === "SIGKILL") return "killed";
  if (r.code === 0) return "finished before the kill";
  return `exited ${r.code ?? r.signal}: ${r.stderr.trim()}`;
}

/**
 * `nixoci substitute -q --from CACHE --trusted-public-key KEY --store-dir STORE PATHS...`'s arguments: the
 * substitution every store drill kills or checks.
 */
export function substituteArgs(from: string, publicKey: string, store: string, paths: string[]): string[] {
  return [
    "substitute",
    "-q",
    "--from",
    from,
    "--trusted-public-key",
    publicKey,
    "--store-dir",
    store,
    ...paths,
  ];
}

/** Measures one uninterrupted run (ms); it must succeed. */
export async function measure(args: string[], opts: SpawnOptions = {}): Promise<number> {
  const r = await runNixociOk(args, opts);
  return Math.max(1, Math.round(r.ms));
}

/** Pids of live processes whose command line (NUL-separated arguments) satisfies `match`. */
export function pidsOf(match: (argv: string[]) => boolean): number[] {
  const out: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const argv = readFileSync(`/proc/${name}/cmdline`, "utf8").split("\0").filter(Boolean);
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      if (stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) === "Z") continue;
      if (argv.length && match(argv)) out.push(Number(name));
    } catch {
      // gone
    }
  }
  return out;
}

/** True while a pid is a live process (not a zombie). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/**
 * Stops a process with SIGSTOP and waits until /proc says every thread of it is stopped (a thread finishes the
 * system call it is in first: libuv's pool threads do the file system work, renames included). A signal sent to it
 * now stays pending until SIGCONT, so it lands on the state the caller sees.
 */
export async function freeze(pid: number): Promise<void> {
  process.kill(pid, "SIGSTOP");
  await until(
    `process ${pid} to stop`,
    10_000,
    () => {
      for (const tid of readdirSync(`/proc/${pid}/task`))
        assert.match(readFileSync(`/proc/${pid}/task/${tid}/stat`, "utf8"), /^\d+ \(.*\) [Tt] /s);
    },
    1,
  );
}

/** SIGKILLs a daemon found by its command line (exactly one must match) and waits until it is gone. */
export async function killDaemon(what: string, match: (argv: string[]) => boolean): Promise<number> {
  const pids = pidsOf(match);
  assert.equal(pids.length, 1, `exactly one ${what} process (found ${pids.join(", ") || "none"})`);
  process.kill(pids[0], "SIGKILL");
  await until(`${what} (pid ${pids[0]}) to be gone`, 10_000, () => assert.ok(!pidAlive(pids[0])), 20);
  return pids[0];
}

// ---- temporaries ----

/** A name util/fs.ts's tempSuffix made: ".tmp-<pid>-<12 hex>" at its end (the pid is the writer's). */
export const TEMP_RE = /\.tmp-(\d+)-[0-9a-f]{12}$/;

/**
 * The pid-tagged temporaries under `dir` (relative paths), walking `depth` levels of directories (Infinity:
 * all); with `pids`, only those of these writers. Symlinks are not followed.
 */
export function pidTemporaries(dir: string, opts: { depth?: number; pids?: Set<number> } = {}): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string, depth: number): void => {
    let names: string[];
    try {
      names = readdirSync(d);
    } catch {
      return;
    }
    for (const n of names) {
      const path = join(d, n);
      const relPath = rel ? `${rel}/${n}` : n;
      const m = TEMP_RE.exec(n);
      if (m && (!opts.pids || opts.pids.has(Number(m[1])))) out.push(relPath);
      else if (depth > 1) {
        let st;
        try {
          st = lstatSync(path);
        } catch {
          continue;
        }
        if (st.isDirectory()) walk(path, relPath, depth - 1);
      }
    }
  };
  walk(dir, "", opts.depth ?? Infinity);
  return out.sort();
}

/** Fails when any of `dirs` holds a pid-tagged temporary (they are named in the message). */
export function assertNoTemporaries(dirs: string[], what: string, opts: { pids?: Set<number> } = {}): void {
  const found = dirs.flatMap((d) => pidTemporaries(d, opts).map((t) => `${d}/${t}`));
  assert.deepEqual(found, [], `${what}: temporaries left`);
}

/** The entries of a directory (none when it does not exist). */
export function entries(dir: string): string[] {
  try {
    return readdirSync(dir).sort();
  } catch {
    return [];
  }
}

/** A private TMPDIR for a drill's processes (their os.tmpdir()), so what they leave there can be checked. */
export function privateTmpdir(prefix: string): string {
  const dir = join(makeTempDir(`drill-${prefix}`), "tmp");
  mkdirSync(dir);
  return dir;
}

// ---- checking what is at a destination ----

/** sha256 of a file, as "sha256:<hex>". */
export function fileDigest(file: string): string {
  return `sha256:${createHash("sha256").update(readFileSync(file)).digest("hex")}`;
}

/**
 * Every blob file of `blobDir` (blobs/sha256) is named after its content's digest (dot-named temporaries
 * aside: the caller checks those). Returns the digests present.
 */
export function checkBlobDir(blobDir: string): Set<string> {
  const present = new Set<string>();
  for (const n of entries(blobDir)) {
    if (n.startsWith(".")) continue;
    assert.match(n, /^[0-9a-f]{64}$/, `${blobDir}: unexpected entry ${n}`);
    const st = statSync(join(blobDir, n));
    assert.ok(st.isFile(), `${blobDir}/${n} is a file`);
    assert.equal(fileDigest(join(blobDir, n)), `sha256:${n}`, `${blobDir}/${n}: content matches its name`);
    present.add(`sha256:${n}`);
  }
  return present;
}

interface Desc {
  mediaType?: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

/**
 * The manifest (by digest) and everything it names are in `blobs` with their sizes (with `storeLayersOmitted`,
 * layers annotated with their store paths may be missing: a Nix image description leaves them out).
 */
function checkManifestBlobs(
  blobDir: string,
  present: Set<string>,
  d: Desc,
  what: string,
  storeLayersOmitted = false,
): void {
  assert.ok(present.has(d.digest), `${what}: manifest ${d.digest} is present`);
  const file = join(blobDir, d.digest.slice(7));
  assert.equal(statSync(file).size, d.size, `${what}: manifest size`);
  const m = JSON.parse(readFileSync(file, "utf8")) as { config: Desc; layers: Desc[] };
  for (const b of [m.config, ...m.layers]) {
    const storeLayer = Object.keys(b.annotations ?? {}).some((k) =>
      k.startsWith("containerd.io/snapshot/nix-store-path."),
    );
    if (storeLayersOmitted && storeLayer && !present.has(b.digest)) continue;
    assert.ok(present.has(b.digest), `${what}: blob ${b.digest} is present`);
    assert.equal(statSync(join(blobDir, b.digest.slice(7))).size, b.size, `${what}: size of ${b.digest}`);
  }
}

/**
 * An OCI layout is absent, empty, or complete: oci-layout and index.json valid, every blob matching its name,
 * every manifest of the index with all its blobs; `umoci ls` reads it. Returns tag -> manifest digest
 * (undefined when there is no layout yet).
 */
export function checkOciLayout(
  dir: string,
  opts: { storeLayersOmitted?: boolean } = {},
): Map<string, string> | undefined {
  const visible = entries(dir).filter((n) => !n.startsWith("."));
  if (!visible.length) return undefined;
  // Blobs may be there before the index (a write in progress), but no index without oci-layout and blobs.
  const present = checkBlobDir(join(dir, "blobs", "sha256"));
  if (!visible.includes("index.json")) {
    assert.deepEqual(
      visible.filter((n) => n !== "blobs" && n !== "oci-layout"),
      [],
      `${dir}: no index.json, and nothing else`,
    );
    return undefined;
  }
  assert.deepEqual(JSON.parse(readFileSync(join(dir, "oci-layout"), "utf8")), {
    imageLayoutVersion: "1.0.0",
  });
  const index = JSON.parse(readFileSync(join(dir, "index.json"), "utf8")) as {
    schemaVersion: number;
    manifests: Desc[];
  };
  assert.equal(index.schemaVersion, 2, `${dir}/index.json schemaVersion`);
  const tags = new Map<string, string>();
  for (const m of index.manifests) {
    checkManifestBlobs(join(dir, "blobs", "sha256"), present, m, dir, opts.storeLayersOmitted);
    const tag = m.annotations?.["org.opencontainers.image.ref.name"];
    if (tag) tags.set(tag, m.digest);
  }
  const listed = runText("umoci", ["ls", "--layout", dir]).split("\n").filter(Boolean).sort();
  assert.deepEqual(listed, [...tags.keys()].sort(), `umoci ls --layout ${dir}`);
  return tags;
}

/** An archive file is absent, or a complete tar that opens; returns the directory it was unpacked into. */
function unpackArchive(file: string): string | undefined {
  if (!existsSync(file)) return undefined;
  const dir = makeTempDir("drill-unpack");
  runText("tar", ["-xf", file, "-C", dir]);
  return dir;
}

/** An oci-archive is absent or complete (a layout with every blob, one tagged manifest; skopeo reads it). */
export function checkOciArchive(file: string, tag: string): string | undefined {
  const dir = unpackArchive(file);
  if (!dir) return undefined;
  const digest = checkOciLayout(dir)?.get(tag);
  assert.ok(digest, `${file}: tag ${tag} in its index`);
  const inspected = JSON.parse(runText("skopeo", ["inspect", `oci-archive:${file}:${tag}`])) as {
    Digest: string;
  };
  assert.equal(inspected.Digest, digest);
  return digest;
}

/** A docker-archive is absent or complete (manifest.json, config and layers matching; skopeo reads it). */
export function checkDockerArchive(file: string): string | undefined {
  const dir = unpackArchive(file);
  if (!dir) return undefined;
  const [m] = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")) as Array<{
    Config: string;
    Layers: string[];
  }>;
  assert.equal(fileDigest(join(dir, m.Config)), `sha256:${m.Config.replace(/\.json$/, "")}`, "config");
  for (const l of m.Layers) assert.equal(fileDigest(join(dir, l)), `sha256:${l.replace(/\..*$/, "")}`, l);
  const config = JSON.parse(readFileSync(join(dir, m.Config), "utf8")) as { rootfs: { diff_ids: string[] } };
  assert.equal(config.rootfs.diff_ids.length, m.Layers.length, "a diff_id per layer");
  runText("skopeo", ["inspect", `docker-archive:${file}`]);
  return `sha256:${m.Config.replace(/\.json$/, "")}`;
}

/**
 * A registry's image REPO:TAG is absent (MANIFEST_UNKNOWN / NAME_UNKNOWN) or complete: `skopeo copy` of it
 * (which checks every blob's digest) into a fresh layout succeeds. Returns its manifest digest or undefined.
 */
export function checkRegistryImage(host: string, repo: string, tag: string): string | undefined {
  const ref = `docker://${host}/${repo}:${tag}`;
  let digest: string;
  try {
    digest = (JSON.parse(runText("skopeo", ["inspect", "--tls-verify=false", ref])) as { Digest: string })
      .Digest;
  } catch (err) {
    assert.match((err as Error).message, /manifest unknown|name unknown|not found/i, `${ref} absent`);
    return undefined;
  }
  const layout = join(makeTempDir("drill-copy"), "oci");
  runText("skopeo", ["copy", "--src-tls-verify=false", ref, `oci:${layout}:${tag}`]);
  const tags = checkOciLayout(layout);
  assert.ok(tags?.has(tag));
  return digest;
}

/** The target of a symlink, or undefined. */
export function linkTarget(path: string): string | undefined {
  try {
    return readlinkSync(path);
  } catch {
    return undefined;
  }
}

// ---- nixoci serve as a child process ----

export interface Serve {
  proc: ChildProcess;
  host: string;
  pid: number;
  /** Everything it logged (JSON lines on stderr). */
  log(): string;
  /** SIGKILL, and wait for the exit. */
  kill(): Promise<void>;
  /** SIGTERM (then SIGKILL after 35 s: its grace period is 30 s), and wait for the exit. */
  stop(): Promise<void>;
}

/** `nixoci serve --listen 127.0.0.1:PORT --storage STORAGE ARGS...`; resolves once it logs "listening". */
export async function startServe(
  storage: string,
  extra: string[] = [],
  env?: NodeJS.ProcessEnv,
): Promise<Serve> {
  const port = await freePort();
  const host = `127.0.0.1:${port}`;
  const proc = spawnNixoci(["serve", "--listen", host, "--storage", storage, ...extra], { env });
  let log = "";
  proc.stdout!.resume();
  proc.stderr!.on("data", (d: Buffer) => (log += d.toString()));
  const gone = new Promise<void>((r) => proc.once("exit", () => r()));
  const ended = (): boolean => proc.exitCode !== null || proc.signalCode !== null;
  const waitGone = async (signal: NodeJS.Signals, ms: number): Promise<boolean> => {
    if (ended()) return true;
    proc.kill(signal);
    let t: NodeJS.Timeout | undefined;
    const r = await Promise.race([
      gone.then(() => true),
      new Promise<boolean>((res) => (t = setTimeout(res, ms, false))),
    ]);
    clearTimeout(t);
    return r;
  };
  const serve: Serve = {
    proc,
    host,
    pid: proc.pid ?? 0,
    log: () => log,
    kill: async () => void (await waitGone("SIGKILL", 10_000)),
    stop: async () => {
      if (!(await waitGone("SIGTERM", 35_000))) await waitGone("SIGKILL", 10_000);
    },
  };
  try {
    await until(
      "nixoci serve to listen",
      30_000,
      () => {
        if (ended()) throw new GiveUp(`exited ${proc.exitCode ?? proc.signalCode}: ${log}`);
        assert.ok(log.includes('"msg":"listening"'), "not listening yet");
      },
      50,
    );
  } catch (err) {
    await serve.kill();
    throw err;
  }
  return serve;
}

export interface HttpResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** One HTTP request (no keep-alive); rejects on a connection error. */
export function httpRequest(
  host: string,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: Buffer,
): Promise<HttpResult> {
  const [hostname, port] = host.split(":");
  return new Promise((resolve, reject) => {
    const req = http.request({ hostname, port: Number(port), method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () =>
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }),
      );
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

/** Media types a client accepts for manifests (OCI and Docker schema 2, images and indexes). */
export const MANIFEST_ACCEPT = [
  "application/vnd.oci.image.manifest.v1+json",
  "application/vnd.oci.image.index.v1+json",
  "application/vnd.docker.distribution.manifest.v2+json",
  "application/vnd.docker.distribution.manifest.list.v2+json",
].join(", ");

/** A drill test's timeout: 5 minutes plus `perTrialMs` for each of its trials (a liveness bound, not a speed check). */
export function drillTimeout(perTrialMs: number): number {
  return 300_000 + perTrialMs * (DRILL_TRIALS + FIXED_EARLY_MS.length);
}

/**
 * Polls `holds` (the command is seen holding a temporary) until it does while the command is frozen, then sends
 * `signal` and lets it go on; resolves with how it ended. A command that ends first fails the test.
 */
export async function interruptWhile(
  child: ChildProcess,
  ended: Promise<Finished>,
  holds: () => boolean,
  signal: NodeJS.Signals,
  what: string,
): Promise<Finished> {
  let done = false;
  void ended.then(() => (done = true));
  const deadline = Date.now() + 60_000;
  for (;;) {
    assert.ok(Date.now() < deadline, `the command did not get to ${what} within 60 s`);
    if (done) assert.fail(`the command ended before it was seen at ${what}: ${JSON.stringify(await ended)}`);
    if (holds()) {
      await freeze(child.pid!);
      if (holds()) break;
      child.kill("SIGCONT");
    }
    await sleep(1);
  }
  child.kill(signal);
  child.kill("SIGCONT");
  return ended;
}
