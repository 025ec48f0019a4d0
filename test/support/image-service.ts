// `nixoci image-service` as a child process for tests (in front of a real containerd's CRI), and image
// descriptions in the Nix store for it to pull as `nix:0/nix/store/...` references.
import { spawn, type ChildProcess } from "node:child_process";
import assert from "node:assert/strict";
import { closeSync, existsSync, openSync, rmSync } from "node:fs";
import { join } from "node:path";
import { criImageClient, type CriImageClient } from "../../src/proto/cri.js";
import { nixociOk, ROOT } from "./cli.js";
import { GiveUp, until } from "./poll.js";
import { exited, tail, waitExit } from "./snapshotter.js";

export interface ImageService {
  child: ChildProcess;
  socket: string;
  logFile: string;
  client: CriImageClient;
  /** Ends it by pid: `signal` (SIGTERM by default), then SIGKILL after 10 s. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * `nixoci image-service --address DIR/NAME.sock --log-level debug ARGS...` (log appended to DIR/NAME.log, `env`
 * added to the environment); a SIGKILLed predecessor's socket is removed first. Ready, bounded by 20 s, once the
 * client's channel is connected (not a call: a service whose containerd is gone must start too). A socket that
 * exists alone once let the next call fail with UNAVAILABLE (connect ECONNREFUSED; the fault drill in CI, 1.6).
 */
export async function startImageService(
  dir: string,
  name: string,
  args: string[],
  env?: NodeJS.ProcessEnv,
): Promise<ImageService> {
  const socket = join(dir, `${name}.sock`);
  const logFile = join(dir, `${name}.log`);
  rmSync(socket, { force: true });
  const fd = openSync(logFile, "a");
  const child = spawn(
    process.execPath,
    [join(ROOT, "bin/nixoci.js"), "image-service", "--address", socket, "--log-level", "debug", ...args],
    { stdio: ["ignore", fd, fd], env: { ...process.env, ...env } },
  );
  closeSync(fd);
  const client = criImageClient(socket);
  const stop = async (signal: NodeJS.Signals = "SIGTERM"): Promise<void> => {
    client.close();
    if (exited(child)) return;
    child.kill(signal);
    if (!(await waitExit(child, 10_000))) {
      child.kill("SIGKILL");
      await waitExit(child, 5000);
    }
  };
  try {
    await until(
      "the image service's channel to connect",
      20_000,
      async () => {
        if (exited(child)) throw new GiveUp("exited"); // its log is added below
        assert.ok(existsSync(socket), "no socket yet");
        await new Promise<void>((resolve, reject) =>
          client.raw.waitForReady(Date.now() + 2000, (err) => (err ? reject(err) : resolve())),
        );
      },
      50,
    );
  } catch (err) {
    await stop("SIGKILL");
    throw new Error(`${(err as Error).message}\n${tail(logFile)}`, { cause: err });
  }
  return { child, socket, logFile, client, stop };
}

/** `nixoci build ARGS -o nix:NAME`: the description's store path (the last line it prints). */
export function buildDescription(name: string, args: string[]): string {
  return nixociOk(["build", "-q", ...args, "-o", `nix:${name}`])
    .text.trim()
    .split("\n")
    .pop()!;
}
