// Runs the built nixoci CLI as a user would (a separate process, no shell) and captures everything.
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "../../..");
const BIN = join(ROOT, "bin/nixoci.js");

// A private XDG cache for this test process: builds and pushes never touch the user's ~/.cache/nixoci.
const XDG_CACHE_HOME = mkdtempSync(join(tmpdir(), "nixoci-test-xdg-"));
process.on("exit", () => rmSync(XDG_CACHE_HOME, { recursive: true, force: true }));

export interface CliResult {
  status: number | null;
  stdout: Buffer;
  stderr: string;
  text: string;
}

export interface CliOptions {
  input?: Buffer | string;
  env?: NodeJS.ProcessEnv;
  /** The working directory (relative arguments such as ./result are relative to it). */
  cwd?: string;
  /**
   * A bound for a run that must not hang (a regression that would otherwise block the whole file): past it the
   * process is killed and the result says so (status null).
   */
  timeoutMs?: number;
}

export function nixoci(args: string[], opts: CliOptions = {}): CliResult {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    input: opts.input,
    env: { ...process.env, XDG_CACHE_HOME, ...opts.env },
    cwd: opts.cwd,
    timeout: opts.timeoutMs,
    maxBuffer: 1 << 30,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString(), text: r.stdout.toString() };
}

/** Runs nixoci and fails with its stderr when it does not exit 0. */
export function nixociOk(args: string[], opts: CliOptions = {}): CliResult {
  const r = nixoci(args, opts);
  if (r.status !== 0) throw new Error(`nixoci ${args.join(" ")} exited ${r.status}: ${r.stderr}`);
  return r;
}

/**
 * Like nixoci, without blocking this process: for a CLI that talks to a server running in the test process
 * (spawnSync would stop that server from answering).
 */
export function nixociAsync(args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      env: { ...process.env, XDG_CACHE_HOME, ...opts.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    child.on("error", reject);
    child.on("close", (status) => {
      const stdout = Buffer.concat(out);
      resolve({ status, stdout, stderr: Buffer.concat(err).toString(), text: stdout.toString() });
    });
  });
}
