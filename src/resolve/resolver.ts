// Package resolvers: what `nixoci serve` asks to turn package names ("git", "htop") into store paths that are
// valid in the local store, for one revision of a package set and one architecture. Three kinds:
//   - NixEvalResolver (nix-eval.ts): a Nix file, a nixpkgs checkout or a flake, evaluated and built with the
//     nix binary;
//   - PackageIndexResolver (package-index.ts): a JSON index of prebuilt store paths per architecture, realised
//     from signed binary caches without the nix binary;
//   - LiteralResolver (literal.ts): names that are store path base names ("<hash>-<name>"), taken as they are.
// createResolver picks one from the serve options.
import type { LocalStore } from "../store/local-store.js";
import type { Store } from "../store/store.js";
import { NixociError } from "../util/errors.js";

export interface ResolveOptions {
  /** The package-set revision to resolve against (from currentRevision(), or a pinned tag that servesRevision accepted). */
  revision: string;
  /** OCI architecture name (amd64, arm64, ...); see systemForArch. */
  arch: string;
  /** Aborts evaluation/building/substitution (child processes are killed). */
  signal?: AbortSignal;
}

export interface PackageResolver {
  /** For logs and error messages: what the packages come from ("nix file /etc/nixoci/packages.nix"). */
  readonly description: string;
  /**
   * The revision `latest` stands for right now: for a Nix file, a hash of the file and the files it refers to
   * by relative path; for a nixpkgs git checkout, `git rev-parse HEAD`; for a flake, its locked revision (or
   * NAR hash); for an index, its "revision" field; for literal store paths, "store". Always a valid tag
   * (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`). Cheap: cached for a few seconds.
   */
  currentRevision(): Promise<string>;
  /**
   * Whether a revision given as a tag (a pin) can be served: a nixpkgs git checkout serves any commit of the
   * repository (full 40-hex id); a Nix file, flake or index only its current revision; literal store paths any
   * revision (store paths are immutable, so the revision changes nothing).
   */
  servesRevision(revision: string): Promise<boolean>;
  /**
   * Resolves package names to store paths valid in the local store (building them with nix, or substituting
   * them from binary caches). Throws UnknownPackageError naming every unknown package, NixociError for
   * anything else (evaluation or build failures, a revision that is no longer available).
   */
  resolve(packages: string[], opts: ResolveOptions): Promise<string[]>;
}

/** Some requested package names do not exist in the package set; `packages` lists all of them, sorted. */
export class UnknownPackageError extends NixociError {
  readonly packages: string[];

  constructor(packages: string[], where?: string) {
    const sorted = [...new Set(packages)].sort();
    super(
      sorted.length === 1 ? "unknown package" : "unknown packages",
      `${sorted.join(", ")}${where ? ` (not in ${where})` : ""}`,
    );
    this.name = "UnknownPackageError";
    this.packages = sorted;
  }
}

/** A pinned revision the resolver cannot (or no longer) serve. */
export class RevisionUnavailableError extends NixociError {
  constructor(
    readonly revision: string,
    problem: string,
  ) {
    super(`revision ${revision}`, problem);
    this.name = "RevisionUnavailableError";
  }
}

const SYSTEMS: Record<string, string> = {
  amd64: "x86_64-linux",
  arm64: "aarch64-linux",
  "386": "i686-linux",
  arm: "armv7l-linux",
  riscv64: "riscv64-linux",
  ppc64le: "powerpc64le-linux",
  s390x: "s390x-linux",
};

/** The Nix system for an OCI architecture (amd64 -> x86_64-linux, arm64 -> aarch64-linux). */
export function systemForArch(arch: string): string {
  const system = SYSTEMS[arch];
  if (!system) throw new NixociError(`architecture ${arch}`, "no Nix system is known for it");
  return system;
}

/** The OCI architecture for a Nix system or an OCI name (x86_64-linux/x86_64/amd64 -> amd64); undefined if unknown. */
export function archForName(name: string): string | undefined {
  if (SYSTEMS[name]) return name;
  const bare = name.replace(/-linux$/, "");
  for (const [arch, system] of Object.entries(SYSTEMS)) if (system === `${bare}-linux`) return arch;
  return undefined;
}

/** A value computed at most once per `ttlMs` (concurrent callers share the computation; failures are not kept). */
export class Cached<T> {
  private value?: { at: number; promise: Promise<T> };

  constructor(
    private readonly ttlMs: number,
    private readonly compute: () => Promise<T>,
  ) {}

  get(): Promise<T> {
    const now = Date.now();
    if (this.value && now - this.value.at < this.ttlMs) return this.value.promise;
    const promise = this.compute();
    const entry = { at: now, promise };
    this.value = entry;
    promise.catch(() => {
      if (this.value === entry) this.value = undefined;
    });
    return promise;
  }

  invalidate(): void {
    this.value = undefined;
  }
}

export interface ResolverOptions {
  /** A Nix file (or directory with default.nix): an attribute set of packages, or a function returning one. */
  nixFile?: string;
  /** A nixpkgs checkout (git repository, or a tree with .git-revision): `import PATH { system }`. */
  nixpkgs?: string;
  /** A flake reference; packages are its packages.<system> and legacyPackages.<system>. */
  flake?: string;
  /** A package index JSON file of prebuilt store paths, substituted from `substituters`. */
  indexFile?: string;
  /** The local store images are built from. */
  store: LocalStore;
  /** Binary caches (with their trust settings) for the index and literal resolvers. */
  substituters?: Store[];
  /** Limit for one evaluation+build by the nix binary (default: none; the registry applies its own). */
  nixTimeoutMs?: number;
}

/**
 * The resolver the options ask for: at most one of nixFile, nixpkgs, flake and indexFile; none means
 * literal store path names.
 */
export async function createResolver(opts: ResolverOptions): Promise<PackageResolver> {
  const given = (["nixFile", "nixpkgs", "flake", "indexFile"] as const).filter((k) => opts[k] !== undefined);
  if (given.length > 1)
    throw new NixociError("serve", `give only one package source (got ${given.join(" and ")})`);
  if (opts.indexFile !== undefined) {
    const { PackageIndexResolver } = await import("./package-index.js");
    return new PackageIndexResolver({
      indexFile: opts.indexFile,
      store: opts.store,
      substituters: opts.substituters ?? [],
    });
  }
  if (opts.nixFile !== undefined || opts.nixpkgs !== undefined || opts.flake !== undefined) {
    const { NixEvalResolver } = await import("./nix-eval.js");
    return new NixEvalResolver({
      nixFile: opts.nixFile,
      nixpkgs: opts.nixpkgs,
      flake: opts.flake,
      timeoutMs: opts.nixTimeoutMs,
    });
  }
  const { LiteralResolver } = await import("./literal.js");
  return new LiteralResolver({ store: opts.store, substituters: opts.substituters ?? [] });
}
