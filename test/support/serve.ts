// `nixoci serve` as a child process for the CLI tests, and the package list the serve tests and bench share.
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { ROOT } from "./cli.js";
import { freePort } from "./daemons.js";
import { GiveUp, until } from "./poll.js";

/** 20 packages of examples/packages.nix: the large image of test/cli/serve.test.ts and bench/serve.ts. */
export const TWENTY_PACKAGES = [
  "awk",
  "bash",
  "cat",
  "coreutils",
  "cut",
  "date",
  "diff",
  "find",
  "grep",
  "gzip",
  "head",
  "hello",
  "less",
  "ls",
  "sed",
  "sort",
  "tail",
  "tar",
  "tr",
  "wc",
];

export interface ServeProcess {
  proc: ChildProcess;
  /** 127.0.0.1:PORT */
  host: string;
  /** Everything it logged on stderr so far. */
  log: () => string;
  /** Resolves with the exit code once it exited. */
  exited: Promise<number | null>;
}

/**
 * `nixoci serve --listen 127.0.0.1:PORT --storage STORAGE ARGS...` on a free port (`detached`: in a process
 * group of its own; `env`: variables added to this process's); resolves once it logs "listening" (30 s; as JSON or
 * text), else SIGKILLs it and throws with its log.
 */
export async function startNixociServe(
  storage: string,
  args: string[] = [],
  opts: { detached?: boolean; env?: NodeJS.ProcessEnv } = {},
): Promise<ServeProcess> {
  const host = `127.0.0.1:${await freePort()}`;
  let log = "";
  const proc = spawn(
    process.execPath,
    [join(ROOT, "bin/nixoci.js"), "serve", "--listen", host, "--storage", storage, ...args],
    {
      stdio: ["ignore", "ignore", "pipe"],
      detached: opts.detached ?? false,
      env: { ...process.env, ...opts.env },
    },
  );
  proc.stderr!.on("data", (d) => (log += d));
  const exited = new Promise<number | null>((resolve) => proc.once("exit", (code) => resolve(code)));
  try {
    await until(
      "nixoci serve to listen",
      30_000,
      () => {
        if (proc.exitCode !== null) throw new GiveUp(`exited with ${proc.exitCode}`);
        // A JSON "listening" record, or its text line (--log-format text).
        assert.ok(log.includes('"msg":"listening"') || / INFO {2}listening /.test(log), "not listening yet");
      },
      50,
    );
  } catch (err) {
    if (opts.detached && proc.exitCode === null && proc.signalCode === null)
      process.kill(-proc.pid!, "SIGKILL");
    else proc.kill("SIGKILL");
    throw new Error(`nixoci serve did not start: ${String(err)}\n${log}`, { cause: err });
  }
  return { proc, host, log: () => log, exited };
}
