// `nixoci snapshotter` as a child process for tests (containerd talks to it over a socket, and a synchronous
// client in the same process would deadlock an in-process server), and a small gRPC call helper.
import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import type * as grpc from "@grpc/grpc-js";
import { defaultMountpointsDir } from "../../src/servers/snapshotter/mountpoints.js";
import { gcRootsDir } from "../../src/servers/snapshotter/gcroots.js";
import { snapshotsClient } from "../../src/proto/containerd.js";
import { mountsUnder } from "./daemons.js";

const CMD_MODULE = new URL("../../src/cli/cmd-snapshotter.js", import.meta.url).pathname;
const LAUNCH = `import(${JSON.stringify(CMD_MODULE)}).then((m) => m.snapshotterCommand(process.argv.slice(1))).then(
  (code) => { process.exitCode = code; },
  (err) => { process.stderr.write(String(err && err.stack || err) + "\\n"); process.exitCode = 1; })`;

export const REF_LABEL = "containerd.io/snapshot.ref";
export const STORE_PATH_LABEL = "containerd.io/snapshot/nix-store-path.";

export interface Snapshotter {
  child: ChildProcess;
  socket: string;
  root: string;
  logFile: string;
}
export type Client = grpc.Client & Record<string, unknown>;
export type Reply = Record<string, unknown> & { err?: number; details?: string };

const children = new Set<ChildProcess>();
process.on("exit", () => {
  for (const c of children) if (!exited(c)) c.kill("SIGKILL");
});

export const exited = (c: ChildProcess): boolean => c.exitCode !== null || c.signalCode !== null;

export async function waitExit(c: ChildProcess, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!exited(c) && Date.now() < deadline) await sleep(20);
  return exited(c);
}

/** The last lines of a log file, for failure messages. */
/** The snapshotter log's JSON lines whose msg is `msg`. */
export function logRecords(sn: { logFile: string }, msg: string): Array<Record<string, unknown>> {
  const out: Array<Record<string, unknown>> = [];
  for (const line of readFileSync(sn.logFile, "utf8").split("\n")) {
    if (!line.startsWith("{")) continue;
    const r = JSON.parse(line) as Record<string, unknown>;
    if (r.msg === msg) out.push(r);
  }
  return out;
}

export function tail(file: string, n = 30): string {
  try {
    return readFileSync(file, "utf8").split("\n").slice(-n).join("\n");
  } catch {
    return "(no log)";
  }
}

/** One unary call with a deadline; errors come back as {err: code, details}. */
export function rpc(client: Client, method: string, req: object, timeoutMs = 30_000): Promise<Reply> {
  const fn = client[method] as (
    req: object,
    opts: object,
    cb: (e: grpc.ServiceError | null, r: Reply) => void,
  ) => void;
  return new Promise((resolve) =>
    fn.call(client, req, { deadline: Date.now() + timeoutMs }, (e, r) =>
      resolve(e ? { err: e.code, details: e.details } : r),
    ),
  );
}

/** The snapshots List streams for `filters` (containerd's filter syntax), every batch joined. */
export async function list(client: Client, filters: string[] = []): Promise<Reply[]> {
  const fn = client.List as (req: object, opts: object) => grpc.ClientReadableStream<{ info: Reply[] }>;
  const stream = fn.call(client, { filters }, { deadline: Date.now() + 10_000 });
  const out: Reply[] = [];
  await new Promise<void>((resolve, reject) => {
    stream.on("data", (d: { info: Reply[] }) => out.push(...d.info));
    stream.on("end", resolve);
    stream.on("error", reject);
  });
  return out;
}

/** Starts the snapshotter (debug logs, plus `extra` arguments) and waits at most 15 s for its socket to answer. */
export async function startSnapshotter(
  dir: string,
  extra: string[] = [],
  env: NodeJS.ProcessEnv = process.env,
): Promise<Snapshotter> {
  const socket = join(dir, "sn.sock");
  const root = join(dir, "root");
  const logFile = join(dir, "snapshotter.log");
  const fd = openSync(logFile, "a");
  const args = ["--address", socket, "--root", root, "--log-level", "debug", ...extra];
  const child = spawn(process.execPath, ["--input-type=module", "-e", LAUNCH, "--", ...args], {
    stdio: ["ignore", fd, fd],
    env,
  });
  closeSync(fd);
  children.add(child);
  child.once("exit", () => children.delete(child));
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (exited(child)) throw new Error(`snapshotter exited early:\n${tail(logFile)}`);
    if (existsSync(socket)) {
      const c = snapshotsClient(socket);
      try {
        if ((await rpc(c, "Stat", { key: "\u0000probe" }, 2000)).err === 5)
          return { child, socket, root, logFile };
      } finally {
        c.close();
      }
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`snapshotter not ready after 15 s:\n${tail(logFile)}`);
    }
    await sleep(100);
  }
}

/** Sends `signal` and waits (10 s, then SIGKILL and 5 s more) for the snapshotter to exit. */
export async function stopSnapshotter(
  sn: Snapshotter | undefined,
  signal: NodeJS.Signals = "SIGTERM",
): Promise<void> {
  if (!sn || exited(sn.child)) return;
  sn.child.kill(signal);
  if (!(await waitExit(sn.child, 10_000))) {
    sn.child.kill("SIGKILL");
    await waitExit(sn.child, 5000);
  }
}

/** A command without blocking the event loop; rejects with its stderr. */
export function runAsync(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 256 << 20 }, (err, stdout, stderr) =>
      err ? reject(new Error(`${cmd} ${args.join(" ")}: ${err.message}\n${stderr}`)) : resolve(stdout),
    ),
  );
}

/** A temp dir short enough for unix socket paths (at most 107 bytes). */
export function shortTempDir(prefix: string): string {
  return mkdtempSync(join("/tmp", `nixoci-${prefix}-`));
}

/**
 * Removes a test dir: the snapshotter's GC roots (under /nix/var/nix/gcroots for /nix/store), mounts, and the
 * files unless `keepFiles` (for looking at them after a run).
 */
export async function removeSnapshotterDir(dir: string, keepFiles = false): Promise<void> {
  rmSync(gcRootsDir(join(dir, "root"), { realDir: "/nix/store", storeDir: "/nix/store" }), {
    recursive: true,
    force: true,
  });
  const views = defaultMountpointsDir(join(dir, "root")); // store views stay mounted while their images are there
  for (const mp of [...mountsUnder(views), ...mountsUnder(dir)])
    await runAsync("umount", ["-l", mp]).catch(() => undefined);
  if (!mountsUnder(views).length) rmSync(views, { recursive: true, force: true });
  if (!keepFiles && !mountsUnder(dir).length) rmSync(dir, { recursive: true, force: true });
}

/**
 * A nix-layer test's teardown: closes the client, SIGKILLs the snapshotter (nothing unmounts on the way out),
 * removes `dir`, and fails when anything was still mounted under it.
 */
export async function killAndCheckNoMounts(
  client: grpc.Client | undefined,
  sn: Snapshotter | undefined,
  dir: string | undefined,
  what = "the test directory",
): Promise<void> {
  client?.close();
  await stopSnapshotter(sn, "SIGKILL");
  if (!dir) return;
  const left = mountsUnder(dir);
  await removeSnapshotterDir(dir);
  assert.deepEqual(left, [], `no mount left under ${what}`);
}
