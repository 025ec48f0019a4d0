// Filter programs (igzip, zstd) started by a small launcher process (tool-launcher-child.ts) instead of by this
// one, for processes whose heap is large and busy: a fork() of such a process makes every later write to its heap
// fault page by page (copy-on-write), which cost a layer build more system time than the tool's own work. The
// launcher is one Node process forked once (lazily, on first use) and kept until this process exits; each tool's
// stdin and stdout are one UNIX socket to this process, its exit status and stderr come over the IPC channel.
//
// launchTool() gives an object shaped like the ChildProcess of spawn(tool, args, {stdio: "pipe"}) as far as
// compression.ts's ToolStream uses one: stdin/stdout/stderr streams, 'error' (could not start: err.code as
// spawn's, ENOENT...), 'exit' and 'close' (code, signal), and kill(). One difference: a tool that exits without
// reading all its input may lose output it wrote last, since the write that fails (EPIPE) takes the one socket
// with it; the tools run this way read their whole input.
import { fork, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { EventEmitter } from "node:events";
import net from "node:net";
import { PassThrough, Readable, Writable } from "node:stream";
import { LAUNCHER_ACK, toolEnv } from "./tool-env.js";
import { distFile } from "./package-files.js";

const HIGH_WATER = 1024 * 1024;

type Status =
  | { id: number; error: { code?: string; message: string } }
  | { id: number; code: number | null; signal: NodeJS.Signals | null; stderr: string };

class Launcher {
  private nextId = 1;
  private readonly tools = new Map<number, LaunchedTool>();

  constructor(
    readonly child: ChildProcess,
    readonly socket: string,
    readonly token: string,
  ) {
    child.on("message", (m: Status) => this.tools.get(m.id)?.onStatus(m));
    child.on("exit", () => {
      launcher = undefined;
      for (const tool of this.tools.values()) tool.onLauncherGone();
      this.tools.clear();
    });
    this.idle();
  }

  register(tool: LaunchedTool): number {
    const id = this.nextId++;
    this.tools.set(id, tool);
    // While a tool runs, its status must arrive even if nothing else keeps this process's event loop going.
    this.child.channel?.ref();
    return id;
  }

  done(id: number): void {
    this.tools.delete(id);
    if (!this.tools.size) this.idle();
  }

  kill(id: number): void {
    if (this.child.connected) this.child.send({ kill: id });
  }

  /** Nothing running: the launcher must not keep this process alive. */
  private idle(): void {
    this.child.channel?.unref();
    this.child.unref();
  }
}

let launcher: Promise<Launcher> | undefined;
/** The launcher's process from its fork until it exits, whether it has answered, and whether anyone awaits that. */
let launcherChild: ChildProcess | undefined;
let launcherReady = false;
let launcherAwaited = false;
/** The launcher could not start once: spawn directly from then on. */
let launcherBroken = process.platform !== "linux";

/**
 * The launcher, started if need be. Until it answers, its start keeps this process alive only once someone awaits
 * it (`awaited`): a launcher started for later tools must not hold up a process whose work is done. Once it
 * answered, the Launcher keeps the process alive only while tools run.
 */
function startLauncher(awaited: boolean): Promise<Launcher> {
  launcher ??= new Promise<Launcher>((resolve, reject) => {
    const script = distFile("src/util/tool-launcher-child.js");
    const child = fork(script, [], {
      stdio: ["ignore", "ignore", "ignore", "ipc"],
      execArgv: [],
      serialization: "json",
    });
    launcherChild = child;
    launcherAwaited = false;
    child.once("exit", () => {
      if (launcherChild === child) launcherChild = undefined;
      launcherReady = false;
    });
    const socket = `\0nixoci-launcher-${process.pid}-${randomBytes(8).toString("hex")}`;
    const token = randomBytes(32).toString("hex");
    const fail = (why: string): void => {
      launcher = undefined;
      launcherBroken = true;
      child.kill("SIGKILL");
      reject(new Error(`the tool launcher could not start: ${why}`));
    };
    const exitedEarly = (code: number | null, signal: NodeJS.Signals | null): void =>
      fail(`it exited (${signal ?? code})`);
    child.once("error", (err) => fail(err.message));
    child.once("exit", exitedEarly);
    child.on("message", function onReady(m: { ready?: boolean; failed?: string }) {
      if (m?.failed) fail(m.failed);
      if (!m?.ready) return;
      child.off("message", onReady);
      child.off("exit", exitedEarly);
      launcherReady = true;
      resolve(new Launcher(child, socket, token));
    });
    child.send({ socket, token });
  });
  if (!launcherReady && launcherChild) {
    launcherAwaited ||= awaited;
    if (launcherAwaited) {
      launcherChild.ref();
      launcherChild.channel?.ref();
    } else {
      launcherChild.unref();
      launcherChild.channel?.unref();
    }
  }
  return launcher;
}

/**
 * Starts the launcher now, so that the tools of this process's later, larger heap go through it (a server or a
 * test that wants every tool launched). Resolves once it answers; rejects if it cannot start.
 */
export async function startToolLauncher(): Promise<void> {
  if (launcherBroken) throw new Error("the tool launcher could not start in this process");
  await startLauncher(true);
}

/**
 * Below this resident size a process forks cheaply (its copy-on-write faults afterwards are few), so a tool asked
 * for before the launcher answered (a Node process's start: ~80 ms, the whole of a small fetch step's wait for its
 * first NAR) is spawned from here while the launcher starts for the tools after it.
 */
const DIRECT_SPAWN_RSS = 112 << 20;

/**
 * The running launcher's process id and socket name (for diagnostics and tests; the name is no secret, Linux lists
 * abstract sockets in /proc/net/unix); undefined before use.
 */
export async function launcherInfo(): Promise<{ pid: number; socket: string } | undefined> {
  const l = await launcher?.catch(() => undefined);
  return l && l.child.pid !== undefined ? { pid: l.child.pid, socket: l.socket } : undefined;
}

/** What compression.ts's ToolStream needs of a child process. */
export interface FilterProcess extends EventEmitter {
  readonly stdin: Writable;
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly pid?: number;
  kill(signal?: NodeJS.Signals): boolean;
}

/**
 * `tool args...` started by the launcher, as a FilterProcess; spawned from here where there is none, and by a small
 * process whose launcher has not answered yet (DIRECT_SPAWN_RSS).
 */
export function launchTool(tool: string, args: string[]): FilterProcess {
  if (launcherBroken) return spawnTool(tool, args);
  if (!launcherReady && process.memoryUsage.rss() < DIRECT_SPAWN_RSS) {
    startLauncher(false).catch(() => undefined);
    return spawnTool(tool, args);
  }
  return new LaunchedTool(tool, args);
}

function spawnTool(tool: string, args: string[]): FilterProcess {
  return spawn(tool, args, { stdio: ["pipe", "pipe", "pipe"], env: toolEnv() });
}

class LaunchedTool extends EventEmitter implements FilterProcess {
  readonly stdin: Writable;
  readonly stdout: Readable;
  readonly stderr = new PassThrough();
  /** Not a process id (the tool is the launcher's child): set once the tool was asked for, for ToolStream's checks. */
  pid: number | undefined = 0;
  private socket?: net.Socket;
  private launcher?: Launcher;
  private id = 0;
  private acked = false;
  private readonly waiting: Array<() => void> = [];
  private status?: { code: number | null; signal: NodeJS.Signals | null };
  private outputEnded = false;
  private finished = false;
  private killed = false;

  constructor(tool: string, args: string[]) {
    super();
    this.stdin = new Writable({
      highWaterMark: HIGH_WATER,
      write: (chunk: Buffer, _enc, cb) => this.whenAcked(() => this.socket!.write(chunk, cb), cb),
      final: (cb) =>
        this.whenAcked(() => {
          this.socket!.end();
          cb();
        }, cb),
      destroy: (err, cb) => {
        // A finished input is destroyed right after (autoDestroy): the tool's output is still coming.
        if (err || !this.stdin.writableFinished) this.socket?.destroy();
        cb(err);
      },
    });
    this.stdout = new Readable({
      highWaterMark: HIGH_WATER,
      read: () => this.socket?.resume(),
      destroy: (err, cb) => {
        this.socket?.destroy();
        cb(err);
      },
    });
    this.stdout.once("end", () => this.outputDone());
    this.stdout.once("close", () => this.outputDone());
    startLauncher(true).then(
      (l) => this.connect(l, tool, args),
      (err: Error) => this.fail(err),
    );
  }

  private connect(launcher: Launcher, tool: string, args: string[]): void {
    this.launcher = launcher;
    this.id = launcher.register(this);
    if (this.killed) {
      this.onStatus({ id: this.id, code: null, signal: "SIGKILL", stderr: "" });
      return;
    }
    const socket = net.connect({ path: launcher.socket, allowHalfOpen: true });
    this.socket = socket;
    socket.write(JSON.stringify({ token: launcher.token, id: this.id, tool, args }) + "\n");
    socket.on("data", (chunk: Buffer) => {
      if (!this.acked) {
        if (chunk[0] !== LAUNCHER_ACK) {
          socket.destroy(new Error("the tool launcher did not acknowledge"));
          return;
        }
        this.acked = true;
        for (const go of this.waiting.splice(0)) go();
        chunk = chunk.subarray(1);
        if (!chunk.length) return;
      }
      if (!this.stdout.push(chunk)) socket.pause();
    });
    socket.on("end", () => this.endOutput());
    socket.on("close", () => {
      for (const go of this.waiting.splice(0)) go();
      this.endOutput();
      // Closed before the ACK: the launcher did not take the request. A tool killed before it started gets its
      // SIGKILL status over IPC; anything else would wait forever for a status that never comes.
      if (!this.acked && !this.killed)
        this.onStatus({
          id: this.id,
          error: { message: "the tool launcher closed the connection before starting the tool" },
        });
    });
    socket.on("error", (err: NodeJS.ErrnoException) => {
      // Writing after the tool stopped reading is the input's error, as with a pipe, where it is EPIPE (a
      // socket says ECONNRESET when the tool exited with input unread); the status decides how the stream ends.
      const epipe =
        err.code === "ECONNRESET"
          ? Object.assign(new Error(`${err.message} (the tool stopped reading its input)`), { code: "EPIPE" })
          : err;
      this.stdin.destroy(epipe);
    });
  }

  /** Runs `go` once the launcher acknowledged; `cb` (with an error) when there will be no connection. */
  private whenAcked(go: () => void, cb: (err?: Error | null) => void): void {
    if (this.acked) go();
    else if (this.socket?.destroyed || this.finished) cb(new Error("the tool is not running"));
    else this.waiting.push(() => (this.acked && !this.socket!.destroyed ? go() : cb()));
  }

  /** The connection ended: no more output (the stream ends once its reader has taken what is buffered). */
  private endOutput(): void {
    if (!this.stdout.readableEnded && !this.stdout.destroyed) this.stdout.push(null);
  }

  /** As a child process's: 'close' comes after its output was read to the end (or dropped). */
  private outputDone(): void {
    if (this.outputEnded) return;
    this.outputEnded = true;
    this.maybeClose();
  }

  onStatus(status: Status): void {
    if (this.status || this.finished) return;
    if ("error" in status) {
      this.finish();
      const err = Object.assign(new Error(`spawn ${status.error.message}`), { code: status.error.code });
      err.message = status.error.message;
      this.emit("error", err);
      return;
    }
    this.status = { code: status.code, signal: status.signal };
    this.stderr.end(status.stderr);
    this.emit("exit", status.code, status.signal);
    this.maybeClose();
  }

  onLauncherGone(): void {
    if (this.finished) return;
    this.socket?.destroy();
    this.endOutput();
    this.onStatus({ id: this.id, code: null, signal: "SIGKILL", stderr: "the tool launcher exited" });
  }

  private maybeClose(): void {
    if (!this.status || !this.outputEnded || this.finished) return;
    this.finish();
    this.emit("close", this.status.code, this.status.signal);
  }

  private finish(): void {
    this.finished = true;
    this.pid = undefined;
    this.launcher?.done(this.id);
  }

  private fail(err: Error): void {
    this.finish();
    this.emit("error", err);
  }

  kill(): boolean {
    this.killed = true;
    if (this.launcher && !this.finished) this.launcher.kill(this.id);
    return true;
  }
}
