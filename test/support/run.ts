// Runs external programs (nix, nix-store, xz...) for tests: no shell, output captured, failures loud.
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmdirSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";

export interface RunOptions {
  /** Bytes or text fed to the program's stdin (default: none, stdin is empty). */
  input?: Buffer | string;
  /** Extra environment variables, merged over process.env. */
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/** Runs `cmd args...` (no shell) and returns its stdout; throws an Error with the exit status and stderr on failure. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Buffer {
  try {
    return execFileSync(cmd, args, {
      input: opts.input ?? "",
      env: { ...process.env, ...opts.env },
      cwd: opts.cwd,
      maxBuffer: 1 << 30,
      stdio: ["pipe", "pipe", "pipe"],
    });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & {
      status?: number | null;
      signal?: string | null;
      stderr?: Buffer;
    };
    const how =
      err.code === "ENOENT"
        ? "not found"
        : err.signal
          ? `killed by ${err.signal}`
          : err.status != null
            ? `exited with status ${err.status}`
            : err.message;
    const stderr = err.stderr?.toString().trim();
    throw new Error(`${cmd} ${args.join(" ")}: ${how}${stderr ? `\n${stderr}` : ""}`, { cause: e });
  }
}

/** Like run, with stdout decoded as UTF-8 and trimmed. */
export function runText(cmd: string, args: string[], opts: RunOptions = {}): string {
  return run(cmd, args, opts).toString("utf8").trim();
}

/**
 * `nix copy --from FROM --to TO PATHS...` trusting only `publicKey` and requiring signatures: Nix's own check
 * that a cache's narinfos are signed by that key.
 */
export function nixCopyRequiringSigs(from: string, to: string, publicKey: string, paths: string[]): Buffer {
  const trust = ["--option", "trusted-public-keys", publicKey, "--option", "require-sigs", "true"];
  return nixCmd(["copy", "--from", from, "--to", to, ...trust, ...paths]);
}

/**
 * A pid no process has (a child that already exited): the writer of a planted temporary that the next run must
 * treat as dead.
 */
export function deadPid(): number {
  const r = spawnSync(process.execPath, ["-e", ""]);
  assert.ok(r.pid && r.status === 0);
  return r.pid;
}

/** Runs `nix --extra-experimental-features nix-command ARGS...` and returns its stdout. */
export function nixCmd(args: string[], opts: RunOptions = {}): Buffer {
  return run("nix", ["--extra-experimental-features", "nix-command", ...args], opts);
}

/**
 * Runs `fn` with a path to this checkout that the unprivileged user nobody can read: the checkout itself when every
 * directory above it lets others through, else a read-only bind mount of it under /tmp (CI's checkout lives under
 * /root, mode 700), removed afterwards.
 */
export function withCheckoutForNobody<T>(root: string, fn: (visibleRoot: string) => T): T {
  const blocked = (() => {
    for (let d = dirname(root); ; d = dirname(d)) {
      if ((statSync(d).mode & 0o001) === 0) return true;
      if (d === dirname(d)) return false;
    }
  })();
  if (!blocked) return fn(root);
  const view = mkdtempSync(join(tmpdir(), "nixoci-checkout-"));
  chmodSync(view, 0o755);
  run("mount", ["--bind", "-o", "ro", root, view]);
  try {
    return fn(view);
  } finally {
    run("umount", [view]);
    rmdirSync(view);
  }
}

/** `nixoci ARGS` as the unprivileged user nobody (setpriv's argv), from a checkout nobody can read. */
export function nixociAsNobodyArgv(root: string, args: string[]): string[] {
  return [
    "--reuid=nobody",
    "--regid=nogroup",
    "--clear-groups",
    process.execPath,
    join(root, "bin/nixoci.js"),
    ...args,
  ];
}
