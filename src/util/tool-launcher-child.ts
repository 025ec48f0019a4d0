// The launcher process of tool-launcher.ts: a small Node process that starts filter programs (igzip, zstd) for
// its parent, so that the parent — a build with a large, busy heap — never forks itself. (fork() marks every
// page of the parent copy-on-write; a heap that keeps being written then faults page by page: measured here,
// 50 ms of system time per spawn for a build's 120 MB heap, more than igzip spends compressing a layer.)
//
// Protocol. The parent sends {socket, token} over the IPC channel: an abstract UNIX socket name (Linux: no file,
// so nothing is left behind, whatever kills either process) and a random secret. The launcher listens there and
// answers {ready: true}. Then, per tool:
//   parent: connects, writes one line of JSON {token, id, tool, args} and waits;
//   launcher: checks the token (anyone on the machine can connect to an abstract socket; only the parent knows
//     the token, which never appears on a command line), stops reading, writes one ACK byte, then starts the tool
//     with the connection as its stdin and stdout and closes its own copy: the parent's bytes after the ACK are
//     the tool's input, the bytes after the ACK it reads are the tool's output, and end of input is the parent's
//     half-close;
//   launcher -> parent over the IPC channel: {id, error} when the tool could not start, or {id, code, signal,
//     stderr} when it ended (stderr: its first 16 KiB);
//   parent -> launcher over the IPC channel: {kill: id} stops a tool (SIGKILL).
// A launcher that cannot listen says {failed} and exits (the parent then forks the tools itself). It exits when
// its parent goes (the IPC channel closes), killing the tools still running.
import { spawn, type ChildProcess } from "node:child_process";
import { timingSafeEqual } from "node:crypto";
import net from "node:net";
import { LAUNCHER_ACK, toolEnv } from "./tool-env.js";

const HEADER_LIMIT = 64 * 1024;
const STDERR_LIMIT = 16 * 1024;

interface Request {
  token: string;
  id: number;
  tool: string;
  args: string[];
}

function parseRequest(line: string): Request | undefined {
  try {
    const r = JSON.parse(line) as Partial<Request>;
    if (
      typeof r.token === "string" &&
      typeof r.id === "number" &&
      typeof r.tool === "string" &&
      Array.isArray(r.args) &&
      r.args.every((a) => typeof a === "string")
    )
      return r as Request;
  } catch {
    // not a request
  }
  return undefined;
}

function send(message: object): void {
  if (process.connected) process.send!(message);
}

function sameToken(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

function serve(socket: string, token: string): void {
  const running = new Map<number, ChildProcess>();
  /** Tools killed before their connection came (their start is refused). */
  const killedEarly = new Set<number>();

  const server = net.createServer({ allowHalfOpen: true }, (conn) => {
    let header = "";
    const onData = (chunk: Buffer): void => {
      header += chunk.toString("utf8");
      const nl = header.indexOf("\n");
      if (nl < 0) {
        if (header.length > HEADER_LIMIT) conn.destroy();
        return;
      }
      conn.off("data", onData);
      conn.pause();
      const request = nl === header.length - 1 ? parseRequest(header.slice(0, nl)) : undefined;
      if (!request || !sameToken(request.token, token)) {
        conn.destroy();
        return;
      }
      conn.write(Buffer.of(LAUNCHER_ACK), () => start(request, conn));
    };
    conn.on("data", onData);
    conn.on("error", () => conn.destroy());
  });

  function start(request: Request, conn: net.Socket): void {
    if (killedEarly.delete(request.id)) {
      // Killed before it started (the IPC message overtook the connection): it never runs.
      conn.destroy();
      send({ id: request.id, code: null, signal: "SIGKILL", stderr: "" });
      return;
    }
    const child = spawn(request.tool, request.args, { stdio: [conn, conn, "pipe"], env: toolEnv() });
    // The tool has its own copies of the connection; the launcher's would keep it open after the tool exits.
    conn.destroy();
    running.set(request.id, child);
    let stderr = "";
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (s: string) => {
      if (stderr.length < STDERR_LIMIT) stderr += s;
    });
    child.on("error", (err: NodeJS.ErrnoException) => {
      running.delete(request.id);
      send({ id: request.id, error: { code: err.code, message: err.message } });
    });
    child.on("close", (code, signal) => {
      if (!running.delete(request.id)) return; // 'error' told already
      send({ id: request.id, code, signal, stderr });
    });
  }

  process.on("message", (m: { kill?: unknown }) => {
    if (typeof m?.kill !== "number") return;
    const child = running.get(m.kill);
    if (child) child.kill("SIGKILL");
    else killedEarly.add(m.kill);
  });
  process.on("disconnect", () => {
    for (const child of running.values()) child.kill("SIGKILL");
    process.exit(0);
  });
  server.on("error", (err) => {
    send({ failed: err.message });
    process.exit(1);
  });
  server.listen(socket, () => send({ ready: true }));
}

// Waits for its orders; a parent that is gone before it sends them ends the launcher.
process.once("message", (m: { socket?: unknown; token?: unknown }) => {
  if (typeof m?.socket !== "string" || typeof m.token !== "string") process.exit(1);
  serve(m.socket as string, m.token as string);
});
process.once("disconnect", () => process.exit(0));
