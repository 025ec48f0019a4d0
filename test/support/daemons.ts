// Real daemons for tests: docker-registry, containerd and dockerd, each started on loopback / unix sockets with
// private paths in a fresh temp dir, waited for with a bound (the error carries the daemon's log tail), and
// stopped by pid (SIGTERM, then SIGKILL). Stopping also ends what the daemon left behind (dockerd's own
// containerd, runc shims: processes whose command line or root is under the temp dir), unmounts anything still
// mounted under the temp dir and removes it. A process 'exit' hook SIGKILLs whatever a crashed test left running.
import { execFile, execFileSync, spawn, spawnSync, type ChildProcess } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { rm } from "node:fs/promises";
import * as http from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { containerdUnderTest, type ContainerdRelease } from "./containerd-release.js";
import { dockerRelease, dockerUnderTest, type DockerRelease } from "./docker-release.js";

// ---- process bookkeeping ----

const running = new Set<ChildProcess>();
const liveDirs = new Set<string>();
let exitHook = false;

/** On exit (a test that did not stop its daemons): SIGKILL them, remove their dirs when nothing is mounted. */
function installExitHook(): void {
  if (exitHook) return;
  exitHook = true;
  process.on("exit", () => {
    for (const c of running) {
      try {
        if (c.pid) process.kill(c.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
    for (const dir of liveDirs) cleanupDirSync(dir);
  });
}

/** The exit hook's cleanup: nothing asynchronous runs any more, so it waits by sleeping in a child. */
function cleanupDirSync(dir: string): void {
  const pause = (): void => void spawnSync("sleep", ["0.05"]);
  try {
    for (let i = 0; i < 100 && [...running].some((c) => c.pid && pidAlive(c.pid)); i++) pause();
    for (const sig of ["SIGTERM", "SIGKILL"] as const) {
      const pids = processesUnder(dir);
      for (const pid of pids) {
        try {
          process.kill(pid, sig);
        } catch {
          // gone
        }
      }
      for (let i = 0; i < 60 && pids.some(pidAlive); i++) pause();
    }
    for (const mp of mountsUnder(dir)) spawnSync("umount", ["-l", mp], { stdio: "ignore" });
    if (!process.env.NIXOCI_KEEP_TMP && !mountsUnder(dir).length)
      rmSync(dir, { recursive: true, force: true });
  } catch {
    // leave it under the temp dir
  }
}

function track(child: ChildProcess): void {
  running.add(child);
  child.once("exit", () => running.delete(child));
  installExitHook();
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

async function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (exited(child)) return true;
  return new Promise<boolean>((resolve) => {
    const t = setTimeout(() => {
      child.off("exit", onExit);
      resolve(false);
    }, ms);
    const onExit = (): void => {
      clearTimeout(t);
      resolve(true);
    };
    child.once("exit", onExit);
  });
}

/** SIGTERM, up to graceMs for the exit, then SIGKILL. */
async function stopChild(child: ChildProcess, graceMs: number): Promise<void> {
  if (exited(child) || !child.pid) return;
  child.kill("SIGTERM");
  if (await waitExit(child, graceMs)) return;
  child.kill("SIGKILL");
  await waitExit(child, 5000);
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    // A zombie still answers signal 0.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/**
 * Processes left behind under `dir`: their command line mentions it (dockerd's containerd, runc shims) or their
 * root directory is inside it (container processes). Never this process.
 */
export function processesUnder(dir: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const pid = Number(name);
    if (pid === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      let root = "";
      try {
        root = readlinkSync(`/proc/${pid}/root`);
      } catch {
        // permission or gone
      }
      if (cmd.includes(dir) || root === dir || root.startsWith(dir + "/")) {
        if (pidAlive(pid)) out.push(pid);
      }
    } catch {
      // gone
    }
  }
  return out;
}

async function killLeftovers(dir: string): Promise<void> {
  let pids = processesUnder(dir);
  if (!pids.length) return;
  for (const sig of ["SIGTERM", "SIGKILL"] as const) {
    for (const pid of pids) {
      try {
        process.kill(pid, sig);
      } catch {
        // gone
      }
    }
    const deadline = Date.now() + (sig === "SIGTERM" ? 3000 : 5000);
    while (Date.now() < deadline && pids.some(pidAlive)) await sleep(50);
    pids = pids.filter(pidAlive);
    if (!pids.length) return;
  }
}

/** Mount points under dir, deepest first (from /proc/self/mountinfo; octal escapes decoded). */
export function mountsUnder(dir: string): string[] {
  const out: string[] = [];
  for (const line of readFileSync("/proc/self/mountinfo", "utf8").split("\n")) {
    const f = line.split(" ");
    if (f.length < 5) continue;
    const mp = f[4].replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (mp === dir || mp.startsWith(dir + "/")) out.push(mp);
  }
  return out.sort((a, b) => b.length - a.length);
}

async function cleanupDir(dir: string): Promise<void> {
  await killLeftovers(dir);
  for (let round = 0; round < 3; round++) {
    const mps = mountsUnder(dir);
    if (!mps.length) break;
    for (const mp of mps) {
      try {
        execFileSync("umount", [mp], { stdio: "ignore" });
      } catch {
        try {
          execFileSync("umount", ["-l", mp], { stdio: "ignore" });
        } catch {
          // next round
        }
      }
    }
  }
  if (process.env.NIXOCI_KEEP_TMP) return;
  await rm(dir, { recursive: true, force: true, maxRetries: 3 });
  liveDirs.delete(dir);
}

function tailOf(file: string, lines = 40): string {
  try {
    const all = readFileSync(file, "utf8").split("\n");
    return all.slice(-lines).join("\n");
  } catch {
    return "(no log)";
  }
}

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function spawnDaemon(cmd: string, args: string[], logFile: string, env?: NodeJS.ProcessEnv): ChildProcess {
  const fd = openSync(logFile, "a");
  try {
    const child = spawn(cmd, args, { stdio: ["ignore", fd, fd], env: { ...process.env, ...env } });
    track(child);
    child.once("error", () => undefined); // ENOENT is reported through waitReady
    return child;
  } finally {
    closeSync(fd);
  }
}

/** Polls `ready` every 100 ms for at most timeoutMs; fails early when the daemon exits. */
async function waitReady(
  name: string,
  child: ChildProcess,
  logFile: string,
  timeoutMs: number,
  ready: () => Promise<boolean>,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exited(child) || !child.pid) {
      throw new Error(
        `${name} exited (${child.exitCode ?? child.signalCode ?? "did not start"}) before it was ready; log tail:\n${tailOf(logFile)}`,
      );
    }
    if (await ready().catch(() => false)) return;
    if (Date.now() > deadline)
      throw new Error(`${name} not ready after ${timeoutMs / 1000} s; log tail:\n${tailOf(logFile)}`);
    await sleep(100);
  }
}

function httpStatus(opts: http.RequestOptions, timeoutMs = 2000): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.request({ ...opts, timeout: timeoutMs }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode ?? 0));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
    req.end();
  });
}

function runTool(cmd: string, args: string[], input: Buffer | undefined, env?: NodeJS.ProcessEnv): Buffer {
  try {
    return execFileSync(cmd, args, {
      input: input ?? Buffer.alloc(0),
      env: { ...process.env, ...env },
      maxBuffer: 1 << 30,
      timeout: 300_000,
      stdio: ["pipe", "pipe", "pipe"],
    });
  } catch (e) {
    const err = e as { status?: number | null; signal?: string | null; stderr?: Buffer; message: string };
    const how = err.signal
      ? `killed by ${err.signal}`
      : err.status != null
        ? `exited with status ${err.status}`
        : err.message;
    throw new Error(`${cmd} ${args.join(" ")}: ${how}\n${err.stderr?.toString().trim() ?? ""}`, { cause: e });
  }
}

function daemonDir(prefix: string): string {
  // Unix socket paths are limited to 107 bytes: keep the temp dir short.
  const base = tmpdir().length > 40 ? "/tmp" : tmpdir();
  const dir = mkdtempSync(join(base, `nixoci-${prefix}-`));
  liveDirs.add(dir);
  installExitHook();
  return dir;
}

function once<T>(f: () => Promise<T>): () => Promise<T> {
  let p: Promise<T> | undefined;
  return () => (p ??= f());
}

// ---- docker-registry ----

export interface Registry {
  /** 127.0.0.1:PORT */
  host: string;
  dir: string;
  stop(): Promise<void>;
  log(): string;
}

/** A bcrypt htpasswd line for user:password (apache2-utils' htpasswd, else Python's crypt), or undefined. */
export function makeHtpasswdLine(user: string, password: string): string | undefined {
  try {
    return execFileSync("htpasswd", ["-Bbn", user, password], { stdio: ["ignore", "pipe", "ignore"] })
      .toString()
      .trim();
  } catch {
    // fall through
  }
  try {
    const hash = execFileSync(
      "python3",
      [
        "-W",
        "ignore",
        "-c",
        "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
        password,
      ],
      { stdio: ["ignore", "pipe", "ignore"] },
    )
      .toString()
      .trim();
    if (hash.startsWith("$2")) return `${user}:${hash}`;
  } catch {
    // none
  }
  return undefined;
}

export async function startRegistry(
  opts: { htpasswd?: { user: string; password: string } } = {},
): Promise<Registry> {
  const dir = daemonDir("registry");
  const logFile = join(dir, "registry.log");
  let authSection = "";
  if (opts.htpasswd) {
    const line = makeHtpasswdLine(opts.htpasswd.user, opts.htpasswd.password);
    if (!line) {
      await cleanupDir(dir);
      throw new Error("startRegistry: cannot make a bcrypt htpasswd entry (install apache2-utils)");
    }
    writeFileSync(join(dir, "htpasswd"), line + "\n");
    authSection = `auth:\n  htpasswd:\n    realm: nixoci-test\n    path: ${join(dir, "htpasswd")}\n`;
  }
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const host = `127.0.0.1:${port}`;
    const config = join(dir, "config.yml");
    writeFileSync(
      config,
      [
        "version: 0.1",
        "log:",
        "  level: info",
        "storage:",
        "  filesystem:",
        `    rootdirectory: ${join(dir, "data")}`,
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        `  addr: ${host}`,
        "  secret: nixoci-test-secret",
        authSection,
      ].join("\n"),
    );
    const child = spawnDaemon("docker-registry", ["serve", config], logFile);
    try {
      await waitReady("docker-registry", child, logFile, 15_000, async () => {
        const s = await httpStatus({ host: "127.0.0.1", port, path: "/v2/", method: "GET" });
        return s === 200 || s === 401;
      });
    } catch (err) {
      lastError = err;
      await stopChild(child, 2000);
      if (/address already in use/.test(tailOf(logFile))) continue;
      await cleanupDir(dir);
      throw err;
    }
    const stop = once(async () => {
      await stopChild(child, 5000);
      await cleanupDir(dir);
    });
    return { host, dir, stop, log: () => tailOf(logFile, 100000) };
  }
  await cleanupDir(dir);
  throw lastError;
}

// ---- containerd ----

export interface Containerd {
  /** The gRPC socket. */
  address: string;
  root: string;
  /** The containerd release running (NIXOCI_CONTAINERD, see containerd-release.ts). */
  release: ContainerdRelease;
  /** The running containerd's pid (changes on restart). */
  pid(): number | undefined;
  stop(): Promise<void>;
  /**
   * Stops containerd with `signal` (SIGKILL: no cleanup; its shims and their containers live on) and starts it
   * again with the same config, root and state, as a node's service manager would.
   */
  restart(signal?: NodeJS.Signals): Promise<void>;
  /** Runs the release's `ctr -a ADDRESS ARGS...` and returns its stdout; throws with stderr on failure. */
  ctr(args: string[], opts?: { input?: Buffer }): Buffer;
  log(): string;
}

/** The CRI plugins of a release: disabled together when a test wants no CRI (2.x split the one 1.x plugin). */
function criPlugins(release: ContainerdRelease): string[] {
  return release.major >= 2
    ? ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime"]
    : ["io.containerd.grpc.v1.cri"];
}

/**
 * Starts the containerd under test (containerdUnderTest(): NIXOCI_CONTAINERD, unless `release`) with root, state
 * and sockets in a temp dir, in its release's config schema (`version = 2` for 1.x, 3 for 2.x). The CRI plugin is
 * disabled unless `criConfig` is given (TOML appended verbatim to the config, in the release's schema: see cri.ts
 * criConfig); `proxyPlugins` become `[proxy_plugins.NAME]` sections (type "snapshot", address = its socket). NRI
 * (on by default in 2.x) is off: its socket is system-wide, /var/run/nri/nri.sock.
 */
export async function startContainerd(
  opts: {
    proxyPlugins?: Record<string, { type: string; address: string }>;
    criConfig?: string;
    /** Another release than the one under test (a test that covers every release itself). */
    release?: ContainerdRelease;
  } = {},
): Promise<Containerd> {
  const release = opts.release ?? containerdUnderTest();
  const dir = daemonDir("containerd");
  const root = join(dir, "root");
  const address = join(dir, "containerd.sock");
  const logFile = join(dir, "containerd.log");
  const toml = (s: string): string => JSON.stringify(s);
  const lines = [
    `version = ${release.configVersion}`,
    `root = ${toml(root)}`,
    `state = ${toml(join(dir, "state"))}`,
    opts.criConfig === undefined ? `disabled_plugins = [${criPlugins(release).map(toml).join(", ")}]` : "",
    "[grpc]",
    `  address = ${toml(address)}`,
    "[ttrpc]",
    `  address = ${toml(address + ".ttrpc")}`,
    "[debug]",
    `  address = ${toml(join(dir, "debug.sock"))}`,
    `[plugins."io.containerd.internal.v1.opt"]`,
    `  path = ${toml(join(dir, "opt"))}`,
    `[plugins."io.containerd.nri.v1.nri"]`,
    `  disable = true`,
  ];
  for (const [name, p] of Object.entries(opts.proxyPlugins ?? {})) {
    lines.push(`[proxy_plugins.${toml(name)}]`, `  type = ${toml(p.type)}`, `  address = ${toml(p.address)}`);
  }
  // 2.x's ctr imports and pulls through the transfer service, which unpacks only into the snapshotters its
  // unpack_config lists (by default overlayfs alone; a list replaces that default, so overlayfs stays in it).
  const snapshotters = Object.entries(opts.proxyPlugins ?? {}).filter(([, p]) => p.type === "snapshot");
  if (release.major >= 2 && snapshotters.length) {
    const platform = `linux/${process.arch === "x64" ? "amd64" : process.arch}`;
    for (const name of ["overlayfs", ...snapshotters.map(([n]) => n)])
      lines.push(
        `[[plugins."io.containerd.transfer.v1.local".unpack_config]]`,
        `  platform = ${toml(platform)}`,
        `  snapshotter = ${toml(name)}`,
      );
  }
  if (opts.criConfig !== undefined) lines.push(opts.criConfig);
  const config = join(dir, "config.toml");
  writeFileSync(config, lines.join("\n") + "\n");
  // The release's own shims: containerd looks for containerd-shim-runc-v2 on its PATH first.
  const env = release.binDir ? { PATH: `${release.binDir}:${process.env.PATH ?? ""}` } : undefined;
  const ctr = (args: string[], o: { input?: Buffer } = {}): Buffer =>
    runTool(release.ctr, ["-a", address, ...args], o.input);
  const start = async (): Promise<ChildProcess> => {
    const c = spawnDaemon(release.containerd, ["--config", config], logFile, env);
    try {
      await waitReady(`containerd ${release.series}`, c, logFile, 20_000, async () => {
        if (!existsSync(address)) return false;
        await new Promise<void>((resolve, reject) =>
          execFile(release.ctr, ["-a", address, "version"], { timeout: 5000 }, (err) =>
            err ? reject(err) : resolve(),
          ),
        );
        return true;
      });
    } catch (err) {
      await stopChild(c, 3000);
      throw err;
    }
    return c;
  };
  let child: ChildProcess | undefined;
  try {
    child = await start();
  } catch (err) {
    await cleanupDir(dir);
    throw err;
  }
  const stop = once(async () => {
    if (child) await stopChild(child, 10_000);
    await cleanupDir(dir);
  });
  const restart = async (signal: NodeJS.Signals = "SIGKILL"): Promise<void> => {
    const c = child!;
    child = undefined;
    if (!exited(c)) {
      c.kill(signal);
      if (!(await waitExit(c, 10_000))) throw new Error(`containerd did not exit on ${signal}`);
    }
    child = await start();
  };
  const pid = (): number | undefined => child?.pid;
  return { address, root, release, pid, stop, restart, ctr, log: () => tailOf(logFile, 100000) };
}

// ---- dockerd ----

export interface Dockerd {
  /** The API's unix socket path. */
  host: string;
  /** The Docker release running (NIXOCI_DOCKER, see docker-release.ts). */
  release: DockerRelease;
  /** Whether this daemon keeps images in containerd's image store (startDockerd's containerdStore). */
  containerdStore: boolean;
  stop(): Promise<void>;
  /** Runs the release's docker CLI against this daemon and returns its stdout; throws with stderr on failure. */
  docker(args: string[], opts?: { input?: Buffer }): Buffer;
  /**
   * Runs `docker buildx ARGS...` with the release's buildx plugin against this daemon (its default builder, the
   * daemon's own BuildKit) and returns stdout and stderr (where the build progress goes); throws on failure.
   * 20.10 has no buildx: it throws.
   */
  buildx(args: string[], opts?: { input?: Buffer; cwd?: string }): { stdout: Buffer; stderr: string };
  log(): string;
}

/**
 * Debian 12's docker CLI (20.10) rather than another docker earlier on PATH. It speaks every daemon of the Docker
 * matrix (its API 1.41 is within 26.1's and 28.5's 1.24 to 1.45/1.51) and builds with its own BuildKit session
 * client when DOCKER_BUILDKIT=1, where newer CLIs insist on the buildx plugin.
 */
export const DOCKER_CLI = dockerRelease({ NIXOCI_DOCKER: "20.10" }).docker;

/**
 * Starts the dockerd under test (dockerUnderTest(): NIXOCI_DOCKER) with data, exec root, socket and CLI config in a
 * temp dir, no bridge and no iptables rules. A 26.1 or 28.5 daemon runs its own release's containerd (first on its
 * PATH, for this child only) as its managed containerd, under the exec root. `containerdStore` turns on the
 * containerd image store (26.1 and 28.5 only): images and build results live in containerd's content store and
 * overlayfs snapshotter instead of the classic graph driver (whose BuildKit has no MergeOp).
 */
export async function startDockerd(
  opts: {
    containerdStore?: boolean;
    release?: DockerRelease;
    /** The daemon's data root (default: in its temp dir), e.g. on a file system of the caller's choosing. */
    dataRoot?: string;
  } = {},
): Promise<Dockerd> {
  const release = opts.release ?? dockerUnderTest();
  const containerdStore = opts.containerdStore ?? false;
  if (containerdStore && !release.containerdStore)
    throw new Error(`startDockerd: Docker ${release.series} has no containerd image store (26.1 and later)`);
  const dir = daemonDir("dockerd");
  const sock = join(dir, "docker.sock");
  const logFile = join(dir, "dockerd.log");
  const daemonJson = join(dir, "daemon.json");
  writeFileSync(
    daemonJson,
    JSON.stringify(containerdStore ? { features: { "containerd-snapshotter": true } } : {}) + "\n",
  );
  // The CLI's config (never the user's ~/.docker): the release's buildx plugin is found through it, and buildx
  // keeps its builder state in it.
  const cliConfig = join(dir, "cli");
  mkdirSync(cliConfig);
  if (release.buildxPluginDir)
    writeFileSync(
      join(cliConfig, "config.json"),
      JSON.stringify({ cliPluginsExtraDirs: [release.buildxPluginDir] }) + "\n",
    );
  const env = release.path ? { PATH: [...release.path, process.env.PATH ?? ""].join(":") } : undefined;
  const child = spawnDaemon(
    release.dockerd,
    [
      "--config-file",
      daemonJson,
      "--data-root",
      opts.dataRoot ?? join(dir, "root"),
      "--exec-root",
      join(dir, "exec"),
      "-H",
      `unix://${sock}`,
      "--pidfile",
      join(dir, "docker.pid"),
      "--iptables=false",
      "--ip-masq=false",
      "--bridge=none",
    ],
    logFile,
    env,
  );
  const docker = (args: string[], o: { input?: Buffer } = {}): Buffer =>
    runTool(release.docker, ["-H", `unix://${sock}`, ...args], o.input, { DOCKER_CONFIG: cliConfig });
  const buildx = (args: string[], o: { input?: Buffer; cwd?: string } = {}) => {
    if (!release.buildxPluginDir) throw new Error(`Docker ${release.series} has no buildx`);
    // The daemon by DOCKER_HOST, which also outranks any DOCKER_CONTEXT in the environment.
    const r = spawnSync(release.docker, ["buildx", ...args], {
      input: o.input ?? Buffer.alloc(0),
      cwd: o.cwd,
      env: { ...process.env, DOCKER_CONFIG: cliConfig, DOCKER_HOST: `unix://${sock}` },
      maxBuffer: 1 << 30,
      timeout: 300_000,
    });
    const stderr = r.stderr?.toString() ?? "";
    if (r.error || r.status !== 0)
      throw new Error(
        `docker buildx ${args.join(" ")}: ${r.error?.message ?? (r.signal ? `killed by ${r.signal}` : `exited with status ${r.status}`)}\n${stderr.trim()}`,
      );
    return { stdout: r.stdout, stderr };
  };
  try {
    await waitReady(`dockerd ${release.series}`, child, logFile, 60_000, async () => {
      if (!existsSync(sock)) return false;
      return (await httpStatus({ socketPath: sock, path: "/_ping", method: "GET" })) === 200;
    });
  } catch (err) {
    await stopChild(child, 15_000);
    await cleanupDir(dir);
    throw err;
  }
  const stop = once(async () => {
    await stopChild(child, 20_000);
    await cleanupDir(dir);
  });
  return {
    host: sock,
    release,
    containerdStore,
    stop,
    docker,
    buildx,
    log: () => tailOf(logFile, 100000),
  };
}
