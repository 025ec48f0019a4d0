// Package names resolved by evaluating Nix code with the nix binary: a Nix file, a nixpkgs checkout or a flake.
//
// One fixed Nix expression (EXPR below) does the work; everything that varies (the file, the system, the git
// revision, the package names) is passed with --argstr, never spliced into Nix code, and nix is always spawned
// without a shell. For a request:
//   1. `nix-instantiate --eval --strict --json` checks every name at once: it must be an attribute path
//      ("hello", "python3Packages.requests") to a derivation. The answers are cached per revision and system,
//      so a repeated request evaluates nothing before building.
//   2. `nix-build --no-out-link -A a -A b ...` builds (or finds) the packages and prints their output paths.
// The package set is:
//   - nixFile: `import FILE`, called with `{ system }` (only if it takes a `system` argument) when it is a
//     function; revision = a hash of the file and of every file it names by relative path (./x.nix, ../y),
//     found by scanning the sources (imports computed at evaluation time are not seen);
//   - nixpkgs: a git checkout's revision is its HEAD commit, and `latest` is HEAD's committed tree: imported in
//     place when the work tree is clean (`git status --untracked-files=no` is empty), else from the commit
//     with `builtins.fetchGit { url = PATH; rev; }` (local, no network; uncommitted changes are ignored). Any
//     other commit can be pinned by its full id (fetchGit too). A tree without git (a channel) is imported as
//     it is, its revision read from .git-revision;
//   - flake: `builtins.getFlake` of the locked reference (from `nix flake metadata`), packages merged from
//     legacyPackages.<system> and packages.<system>; revision = the locked git revision or NAR hash.
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { readFile, realpath, stat } from "node:fs/promises";
import { dirname, join, resolve as resolvePath } from "node:path";
import { parseStorePath } from "../nix/store-path.js";
import { NixociError, oneLine } from "../util/errors.js";
import { Cached } from "./cached.js";
import { nixSystems } from "./nix-systems.js";
import {
  archForName,
  RevisionUnavailableError,
  systemForArch,
  UnknownPackageError,
  type PackageResolver,
  type ResolveOptions,
} from "./resolver.js";

const EXPR = `
{ source, kind, system, rev ? "", names ? "", list ? "" }:
let
  root =
    if kind == "file" then import source
    else if kind == "git" then import (builtins.fetchGit { url = source; inherit rev; allRefs = true; })
    else
      let flake = builtins.getFlake source;
      in (flake.legacyPackages.\${system} or { }) // (flake.packages.\${system} or { });
  pkgs =
    if builtins.isFunction root
    then root (builtins.intersectAttrs (builtins.functionArgs root) { inherit system; })
    else root;
  attrPath = name: builtins.filter builtins.isString (builtins.split "\\\\." name);
  find = set: path:
    if path == [ ] then set
    else if builtins.isAttrs set && builtins.hasAttr (builtins.head path) set
    then find set.\${builtins.head path} (builtins.tail path)
    else null;
  isPackage = name:
    let r = builtins.tryEval (
      let v = find pkgs (attrPath name); in builtins.isAttrs v && (v.type or null) == "derivation");
    in r.success && r.value;
in
if list != "" then builtins.attrNames pkgs
else if names == "" then pkgs
else builtins.filter (name: !isPackage name) (builtins.fromJSON names)
`;

/** Names nix can take as an attribute path after -A (no quoting, no interpolation, no empty components). */
const ATTR_PATH_RE = /^[A-Za-z0-9_][A-Za-z0-9_'+-]*(\.[A-Za-z0-9_][A-Za-z0-9_'+-]*)*$/;
const EXPERIMENTAL = ["--extra-experimental-features", "nix-command flakes"];

export interface NixEvalOptions {
  /** A Nix file, or a directory with default.nix. */
  nixFile?: string;
  /** A nixpkgs checkout. */
  nixpkgs?: string;
  /** A flake reference (path:/dir, github:owner/repo/ref, ...). */
  flake?: string;
  /** Kills an evaluation/build that takes longer (default: no limit of its own). */
  timeoutMs?: number;
  /** How long currentRevision() answers from its cache (default 3 s; 60 s for flakes). */
  revisionCacheMs?: number;
  /** The nix programs' directory or names (tests); default from PATH. */
  nixBuild?: string;
  nixInstantiate?: string;
  nix?: string;
}

type Source = { kind: "file"; path: string } | { kind: "git"; path: string } | { kind: "flake"; ref: string };

/** How the package set of one revision is passed to EXPR. */
interface EvalTarget {
  args: string[];
  flake: boolean;
  /** Imports files that may change under it (a Nix file, a clean git work tree): re-checked after building. */
  live?: boolean;
}

export class NixEvalResolver implements PackageResolver {
  readonly description: string;
  private readonly source: Source;
  private readonly revision: Cached<{ revision: string; target: EvalTarget }>;
  /** revision \0 system -> name -> is a package; a few recent revisions only. */
  private readonly known = new Map<string, Map<string, boolean>>();
  /** Per revision and system: the names the next evaluation checks (checkNames), and the one running. */
  private readonly nextBatch = new Map<string, { names: Set<string>; done: Promise<void> }>();
  private readonly runningBatch = new Map<string, Promise<void>>();
  /** revision \0 system -> the package set's attribute names; a few recent revisions only. */
  private readonly names = new Map<string, Promise<string[]>>();
  private platforms?: Promise<string[] | undefined>;

  constructor(private readonly opts: NixEvalOptions) {
    const given = [opts.nixFile, opts.nixpkgs, opts.flake].filter((x) => x !== undefined);
    if (given.length !== 1)
      throw new NixociError("nix resolver", "give exactly one of nixFile, nixpkgs, flake");
    if (opts.nixFile !== undefined) {
      this.source = { kind: "file", path: resolvePath(opts.nixFile) };
      this.description = `nix file ${this.source.path}`;
    } else if (opts.nixpkgs !== undefined) {
      const path = resolvePath(opts.nixpkgs);
      this.source = { kind: "git", path }; // or a channel tree without git (see computeRevision)
      this.description = `nixpkgs ${path}`;
    } else {
      this.source = { kind: "flake", ref: opts.flake! };
      this.description = `flake ${opts.flake}`;
    }
    const ttl = opts.revisionCacheMs ?? (this.source.kind === "flake" ? 60_000 : 3_000);
    this.revision = new Cached(ttl, () => this.computeRevision());
  }

  async currentRevision(): Promise<string> {
    return (await this.revision.get()).revision;
  }

  async servesRevision(revision: string): Promise<boolean> {
    if (revision === (await this.currentRevision())) return true;
    if (this.source.kind !== "git" || !/^[0-9a-f]{40}$/.test(revision)) return false;
    try {
      await this.run("git", ["-C", this.source.path, "cat-file", "-e", `${revision}^{commit}`], {
        timeoutMs: 30_000,
      });
      return true;
    } catch {
      return false;
    }
  }

  async resolve(packages: string[], opts: ResolveOptions): Promise<string[]> {
    const names = [...new Set(packages)].sort();
    if (!names.length) throw new NixociError(this.description, "no packages requested");
    const system = systemForArch(opts.arch);
    const target = await this.targetFor(opts.revision);

    // 1. Which names are packages (cached per revision and system).
    const unknown = await this.unknownAmong(names, target, opts);
    if (unknown.length) throw new UnknownPackageError(unknown, this.description);
    const known = this.known.get(`${opts.revision}\0${system}`);

    // 2. Build (or find) them.
    let stdout: string;
    try {
      stdout = await this.run(
        this.opts.nixBuild ?? "nix-build",
        [
          ...(target.flake ? EXPERIMENTAL : []),
          "--no-out-link",
          "-E",
          EXPR,
          ...target.args,
          "--argstr",
          "system",
          system,
          ...names.flatMap((n) => ["-A", n]),
        ],
        { signal: opts.signal, timeoutMs: this.opts.timeoutMs, what: "build" },
      );
    } catch (err) {
      // The check above makes this rare (a package set that changed underneath us): name what nix says is missing.
      const missing = [...(err as Error).message.matchAll(/attribute '([^']+)' in selection path/g)].map(
        (m) => m[1],
      );
      if (missing.length) {
        known?.clear();
        throw new UnknownPackageError(missing, this.description);
      }
      throw err;
    }
    const paths = [...new Set(stdout.split("\n").filter(Boolean))];
    for (const p of paths) parseStorePath(p, undefined, `nix-build output`);
    if (!paths.length) throw new NixociError(this.description, "nix-build printed no store paths");

    // Files edited while they were being built from: the result belongs to neither revision.
    if (target.live) {
      this.revision.invalidate();
      const now = await this.revision.get();
      if (now.revision !== opts.revision || !now.target.live)
        throw new RevisionUnavailableError(
          opts.revision,
          `${this.description} changed while building; retry`,
        );
    }
    return paths;
  }

  async missingPackages(packages: string[], opts: ResolveOptions): Promise<string[]> {
    const names = [...new Set(packages)].sort();
    if (!names.length) return [];
    return this.unknownAmong(names, await this.targetFor(opts.revision), opts);
  }

  async packageNames(opts: ResolveOptions): Promise<string[]> {
    const key = `${opts.revision}\0${systemForArch(opts.arch)}`;
    let names = this.names.get(key);
    if (!names) {
      const target = await this.targetFor(opts.revision);
      names = this.evaluate(target, opts, ["--argstr", "list", "1"]).then((out) => {
        const list: unknown = JSON.parse(out);
        if (!Array.isArray(list) || list.some((n) => typeof n !== "string"))
          throw new NixociError(this.description, "nix-instantiate printed no list of names");
        return list as string[];
      });
      this.names.set(key, names);
      while (this.names.size > 4) this.names.delete(this.names.keys().next().value!);
      names.catch(() => this.names.get(key) === names && this.names.delete(key));
    }
    return names;
  }

  /**
   * Nix's own answer to which systems it builds for: `system`, `extra-platforms`, and the systems of the remote
   * machines in `builders` (read once: nix.conf rarely changes under a running server).
   */
  architectures(): Promise<string[] | undefined> {
    this.platforms ??= this.run(this.opts.nix ?? "nix", [...EXPERIMENTAL, "show-config", "--json"], {
      timeoutMs: 60_000,
      what: "nix show-config",
    }).then(
      async (out) => {
        const systems = await nixSystems(out);
        return [...new Set(systems.map(archForName).filter((a) => a !== undefined))].sort();
      },
      // A nix without the nix command (only nix-build and nix-instantiate): it cannot tell.
      () => undefined,
    );
    return this.platforms;
  }

  /** The sorted names among `names` (sorted, unique) that are no package, evaluated once per revision and system. */
  private async unknownAmong(names: string[], target: EvalTarget, opts: ResolveOptions): Promise<string[]> {
    const bad = names.filter((n) => !ATTR_PATH_RE.test(n));
    const cacheKey = `${opts.revision}\0${systemForArch(opts.arch)}`;
    const unchecked = names.filter((n) => !bad.includes(n) && this.known.get(cacheKey)?.get(n) === undefined);
    if (unchecked.length) await this.checkNames(cacheKey, target, opts, unchecked);
    const known = this.known.get(cacheKey);
    return [...bad, ...names.filter((n) => known?.get(n) === false)].sort();
  }

  /**
   * Checks `names` in the next evaluation for the revision and system of `cacheKey`: one nix-instantiate at a time
   * per revision and system, each checking every name asked for while the one before ran. Requests for names
   * nobody asked before (a client trying many) cost one process at a time, not one each. No request's signal
   * stops a batch others wait on; the evaluation's timeout does.
   */
  private checkNames(
    cacheKey: string,
    target: EvalTarget,
    opts: ResolveOptions,
    names: string[],
  ): Promise<void> {
    let batch = this.nextBatch.get(cacheKey);
    if (!batch) {
      const batchNames = new Set<string>();
      const before = this.runningBatch.get(cacheKey) ?? Promise.resolve();
      const done = before
        .catch(() => undefined)
        .then(() => {
          this.nextBatch.delete(cacheKey); // names asked for from now on wait for the one after
          const unchecked = [...batchNames].filter((n) => this.known.get(cacheKey)?.get(n) === undefined);
          return unchecked.length ? this.evaluateNames(cacheKey, target, opts, unchecked) : undefined;
        });
      const running = done.finally(() => {
        if (this.runningBatch.get(cacheKey) === running) this.runningBatch.delete(cacheKey);
      });
      running.catch(() => undefined);
      batch = { names: batchNames, done };
      this.nextBatch.set(cacheKey, batch);
      this.runningBatch.set(cacheKey, running);
    }
    for (const n of names) batch.names.add(n);
    return batch.done;
  }

  private async evaluateNames(
    cacheKey: string,
    target: EvalTarget,
    opts: ResolveOptions,
    unchecked: string[],
  ): Promise<void> {
    const stdout = await this.evaluate(target, { ...opts, signal: undefined }, [
      "--argstr",
      "names",
      JSON.stringify(unchecked),
    ]);
    let missing: unknown;
    try {
      missing = JSON.parse(stdout);
    } catch {
      throw new NixociError(this.description, `nix-instantiate printed no JSON list: ${oneLine(stdout)}`);
    }
    if (!Array.isArray(missing)) throw new NixociError(this.description, "nix-instantiate printed no list");
    let known = this.known.get(cacheKey);
    if (!known) {
      known = new Map();
      this.known.set(cacheKey, known);
      while (this.known.size > 8) this.known.delete(this.known.keys().next().value!);
    }
    if (known.size > 10_000) known.clear();
    for (const n of unchecked) known.set(n, !missing.includes(n));
  }

  /** `nix-instantiate --eval --strict --json` of EXPR for the target and system, with `args` added. */
  private evaluate(target: EvalTarget, opts: ResolveOptions, args: string[]): Promise<string> {
    return this.run(
      this.opts.nixInstantiate ?? "nix-instantiate",
      [
        ...(target.flake ? EXPERIMENTAL : []),
        "--eval",
        "--strict",
        "--json",
        "-E",
        EXPR,
        ...target.args,
        "--argstr",
        "system",
        systemForArch(opts.arch),
        ...args,
      ],
      { signal: opts.signal, timeoutMs: this.opts.timeoutMs, what: "evaluation" },
    );
  }

  /** The EXPR arguments for a revision: the current one, or (git) a pinned commit. */
  private async targetFor(revision: string): Promise<EvalTarget> {
    const current = await this.revision.get();
    if (revision === current.revision) return current.target;
    if (this.source.kind === "git" && (await this.servesRevision(revision)))
      return {
        args: [
          "--argstr",
          "kind",
          "git",
          "--argstr",
          "source",
          this.source.path,
          "--argstr",
          "rev",
          revision,
        ],
        flake: false,
      };
    throw new RevisionUnavailableError(
      revision,
      `not available from ${this.description} (current revision: ${current.revision})`,
    );
  }

  private async computeRevision(): Promise<{ revision: string; target: EvalTarget }> {
    const src = this.source;
    switch (src.kind) {
      case "file": {
        const revision = await hashNixSources(src.path);
        return {
          revision,
          target: {
            args: ["--argstr", "kind", "file", "--argstr", "source", src.path],
            flake: false,
            live: true,
          },
        };
      }
      case "git": {
        let rev: string | undefined;
        try {
          // Only a repository whose top level is the path itself (not a tree inside some other repository).
          const [top, head] = (
            await this.run("git", ["-C", src.path, "rev-parse", "--show-toplevel", "HEAD"], {
              timeoutMs: 30_000,
            })
          ).split("\n");
          if ((await realpath(top)) === (await realpath(src.path))) rev = head.trim();
        } catch {
          // not a git checkout (or no git): a channel tree, with .git-revision
        }
        if (rev !== undefined) {
          if (!/^[0-9a-f]{40}$/.test(rev))
            throw new NixociError(this.description, `git rev-parse HEAD printed ${JSON.stringify(rev)}`);
          // A clean work tree is HEAD's tree: imported in place, which spares copying the checkout into the
          // store for every new commit. With uncommitted changes, HEAD's commit is imported with fetchGit.
          const status = await this.run(
            "git",
            ["-C", src.path, "status", "--porcelain", "--untracked-files=no"],
            { timeoutMs: 60_000 },
          );
          if (status.trim() === "")
            return {
              revision: rev,
              target: {
                args: ["--argstr", "kind", "file", "--argstr", "source", src.path],
                flake: false,
                live: true,
              },
            };
          return {
            revision: rev,
            target: {
              args: ["--argstr", "kind", "git", "--argstr", "source", src.path, "--argstr", "rev", rev],
              flake: false,
            },
          };
        }
        let text: string;
        try {
          text = (await readFile(join(src.path, ".git-revision"), "utf8")).trim();
        } catch {
          throw new NixociError(
            this.description,
            "is neither a git checkout nor a tree with a .git-revision file, so it has no revision",
          );
        }
        if (!/^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/.test(text))
          throw new NixociError(join(src.path, ".git-revision"), "is not a revision id");
        return {
          revision: text,
          target: { args: ["--argstr", "kind", "file", "--argstr", "source", src.path], flake: false },
        };
      }
      case "flake": {
        const out = await this.run(
          this.opts.nix ?? "nix",
          [...EXPERIMENTAL, "flake", "metadata", "--json", src.ref],
          { timeoutMs: this.opts.timeoutMs ?? 300_000, what: "flake metadata" },
        );
        let meta: { revision?: unknown; url?: unknown; locked?: { narHash?: unknown } };
        try {
          meta = JSON.parse(out) as typeof meta;
        } catch {
          throw new NixociError(this.description, "nix flake metadata printed no JSON");
        }
        const url = typeof meta.url === "string" ? meta.url : src.ref;
        let revision: string;
        if (typeof meta.revision === "string" && /^[0-9a-f]{40}$/.test(meta.revision))
          revision = meta.revision;
        else if (typeof meta.locked?.narHash === "string" && meta.locked.narHash.startsWith("sha256-"))
          revision = `nar-${Buffer.from(meta.locked.narHash.slice(7), "base64").toString("hex").slice(0, 32)}`;
        else
          throw new NixociError(
            this.description,
            "nix flake metadata gave neither a revision nor a NAR hash",
          );
        return {
          revision,
          target: { args: ["--argstr", "kind", "flake", "--argstr", "source", url], flake: true },
        };
      }
    }
  }

  private run(
    cmd: string,
    args: string[],
    opts: { signal?: AbortSignal; timeoutMs?: number; what?: string },
  ): Promise<string> {
    return runProcess(cmd, args, { ...opts, input: this.description });
  }
}

/**
 * Runs a program without a shell in its own process group and returns its stdout. On abort or timeout the
 * whole group gets SIGTERM (so nix's builders go too), then SIGKILL after a grace period. Failures become a
 * one-line NixociError with the last error lines of stderr.
 */
export function runProcess(
  cmd: string,
  args: string[],
  opts: { signal?: AbortSignal; timeoutMs?: number; what?: string; input?: string; graceMs?: number } = {},
): Promise<string> {
  const input = opts.input ?? cmd;
  const what = opts.what ?? cmd;
  return new Promise((resolve, reject) => {
    if (opts.signal?.aborted) {
      reject(new NixociError(input, `${what} cancelled`));
      return;
    }
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"], detached: true });
    const out: Buffer[] = [];
    let err = "";
    let stopped: string | undefined;
    let killTimer: NodeJS.Timeout | undefined;
    const stop = (why: string) => {
      if (stopped || child.exitCode !== null || child.signalCode !== null) return;
      stopped = why;
      const kill = (sig: NodeJS.Signals) => {
        try {
          if (child.pid) process.kill(-child.pid, sig);
        } catch {
          child.kill(sig);
        }
      };
      kill("SIGTERM");
      killTimer = setTimeout(() => kill("SIGKILL"), opts.graceMs ?? 5_000);
      killTimer.unref();
    };
    const timer =
      opts.timeoutMs !== undefined
        ? setTimeout(
            () => stop(`${what} timed out after ${Math.round(opts.timeoutMs! / 1000)} s`),
            opts.timeoutMs,
          )
        : undefined;
    const onAbort = () => stop(`${what} cancelled`);
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => {
      err = (err + b.toString("utf8")).slice(-65536);
    });
    const finish = () => {
      if (timer) clearTimeout(timer);
      if (killTimer) clearTimeout(killTimer);
      opts.signal?.removeEventListener("abort", onAbort);
    };
    child.on("error", (e: NodeJS.ErrnoException) => {
      finish();
      reject(
        new NixociError(
          input,
          e.code === "ENOENT" ? `${cmd} is not installed` : `cannot run ${cmd}: ${e.message}`,
        ),
      );
    });
    child.on("close", (code, signal) => {
      finish();
      if (stopped) return reject(new NixociError(input, stopped));
      if (code === 0) return resolve(Buffer.concat(out).toString("utf8"));
      const lines = err
        .split("\n")
        .map((l) => l.trim())
        .filter(Boolean);
      const errors = lines.filter((l) => /error/i.test(l));
      const detail = (errors.length ? errors.slice(-3) : lines.slice(-2)).join(" ");
      const how = signal ? `killed by ${signal}` : `failed (exit ${code})`;
      reject(new NixociError(input, `${what} ${how}${detail ? `: ${oneLine(detail).slice(0, 600)}` : ""}`));
    });
  });
}

/**
 * A revision for a Nix file: sha256 over the file and every file it names by a relative path literal
 * (./foo.nix, ../lib; a directory means its default.nix), transitively, in a stable order. 20 hex digits.
 */
export async function hashNixSources(entry: string, maxFiles = 5000): Promise<string> {
  const hash = createHash("sha256");
  const start = await nixFileOf(entry);
  if (!start) throw new NixociError(entry, "no such Nix file");
  const seen = new Set<string>([start]);
  const queue = [start];
  const base = dirname(start);
  while (queue.length) {
    const file = queue.shift()!;
    let bytes: Buffer;
    try {
      bytes = await readFile(file);
    } catch (err) {
      if (file === start) throw new NixociError(entry, `cannot read: ${(err as NodeJS.ErrnoException).code}`);
      continue;
    }
    const rel = file.startsWith(base + "/") ? file.slice(base.length + 1) : file;
    hash.update(`${rel}\0${bytes.length}\0`).update(bytes);
    if (!file.endsWith(".nix")) continue;
    const text = bytes.toString("utf8").replace(/(^|[^:])#.*$/gm, "$1");
    for (const m of text.matchAll(/(?<![\w./-])(\.\.?(?:\/[A-Za-z0-9._+-]+)+)/g)) {
      const target = await nixFileOf(join(dirname(file), m[1]));
      if (target && !seen.has(target) && seen.size < maxFiles) {
        seen.add(target);
        queue.push(target);
      }
    }
  }
  return hash.digest("hex").slice(0, 20);
}

/** A path as Nix imports it: a file, or a directory's default.nix; undefined when neither exists. */
async function nixFileOf(path: string): Promise<string | undefined> {
  try {
    const st = await stat(path);
    if (st.isFile()) return resolvePath(path);
    if (st.isDirectory()) {
      const def = join(path, "default.nix");
      if ((await stat(def)).isFile()) return resolvePath(def);
    }
  } catch {
    // missing: not part of the hash
  }
  return undefined;
}
