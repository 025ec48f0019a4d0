// `nixoci image-service` as a child process for tests (in front of a real containerd's CRI), and image
// descriptions in the Nix store for it to pull as `nix:0/nix/store/...` references.
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, openSync } from "node:fs";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { criImageClient, type CriImageClient } from "../../src/proto/cri.js";
import { nixociOk, ROOT } from "./cli.js";
import { exited, tail, waitExit } from "./snapshotter.js";

export interface ImageService {
  child: ChildProcess;
  socket: string;
  logFile: string;
  client: CriImageClient;
  stop(): Promise<void>;
}

/**
 * `nixoci image-service --address DIR/NAME.sock --log-level debug ARGS...` (log in DIR/NAME.log); ready when its
 * socket exists (bounded: 20 s). stop() ends it by pid (SIGTERM, then SIGKILL).
 */
export async function startImageService(dir: string, name: string, args: string[]): Promise<ImageService> {
  const socket = join(dir, `${name}.sock`);
  const logFile = join(dir, `${name}.log`);
  const fd = openSync(logFile, "a");
  const child = spawn(
    process.execPath,
    [join(ROOT, "bin/nixoci.js"), "image-service", "--address", socket, "--log-level", "debug", ...args],
    { stdio: ["ignore", fd, fd] },
  );
  closeSync(fd);
  const client = criImageClient(socket);
  const stop = async (): Promise<void> => {
    client.close();
    if (exited(child)) return;
    child.kill("SIGTERM");
    if (!(await waitExit(child, 10_000))) {
      child.kill("SIGKILL");
      await waitExit(child, 5000);
    }
  };
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (exited(child)) throw new Error(`image service exited early:\n${tail(logFile)}`);
    if (existsSync(socket)) return { child, socket, logFile, client, stop };
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`image service not ready after 20 s:\n${tail(logFile)}`);
    }
    await sleep(100);
  }
}

/** `nixoci build ARGS -o nix:NAME`: the description's store path (the last line it prints). */
export function buildDescription(name: string, args: string[]): string {
  return nixociOk(["build", "-q", ...args, "-o", `nix:${name}`])
    .text.trim()
    .split("\n")
    .pop()!;
}
