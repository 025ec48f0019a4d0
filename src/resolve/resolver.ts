// Package resolvers: what `nixoci serve` asks to turn package names ("git", "htop") into store paths that are
// valid in the local store, for one revision of a package set and one architecture. Three kinds:
//   - NixEvalResolver (nix-eval.ts): a Nix file, a nixpkgs checkout or a flake, evaluated and built with the
//     nix binary;
//   - PackageIndexResolver (package-index.ts): a JSON index of prebuilt store paths per architecture, realised
//     from signed binary caches without the nix binary;
//   - LiteralResolver (literal.ts): names that are store path base names ("<hash>-<name>"), taken as they are.
// This module holds what they share (the interface and its errors); create-resolver.ts picks one from the serve
// options.
import { didYouMean } from "../util/did-you-mean.js";
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
  /**
   * The names among `packages` that the package set does not have for that revision and architecture, sorted
   * (empty when it has them all), found without building or substituting anything: what `resolve` would call
   * unknown. For serve's start-up check of meta-packages and for tags lists of names not built yet.
   */
  missingPackages(packages: string[], opts: ResolveOptions): Promise<string[]>;
  /**
   * The names the package set has for that revision and architecture (attribute names of a Nix package set,
   * an index's keys), for "did you mean"; undefined when they cannot be listed (literal store paths).
   */
  packageNames(opts: ResolveOptions): Promise<string[] | undefined>;
  /**
   * The OCI architectures it can give packages for (a Nix resolver: Nix's system, extra-platforms and remote
   * builders' systems; an index: its architectures); undefined when it cannot tell (literal store paths are
   * whatever they were built for).
   */
  architectures(): Promise<string[] | undefined>;
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

/**
 * Unknown names with their "did you mean", as errors show them: `unknown package "helo" (did you mean hello?)`,
 * `unknown packages "helo" (did you mean hello?), "zzz"`.
 */
export function describeUnknownPackages(
  packages: readonly string[],
  suggestions: Readonly<Record<string, string>> = {},
): string {
  const named = packages.map((p) =>
    Object.hasOwn(suggestions, p)
      ? `${JSON.stringify(p)} (did you mean ${suggestions[p]}?)`
      : JSON.stringify(p),
  );
  return `${packages.length === 1 ? "unknown package" : "unknown packages"} ${named.join(", ")}`;
}

/**
 * For each unknown name that is a near miss of a known one, that name; else, for a variant of a known package
 * (nixpkgs' bashInteractive, gitFull, python3Minimal), the longest known name it starts with (bash, git, python3).
 */
export function suggestPackages(
  unknown: readonly string[],
  known: readonly string[] | undefined,
): Record<string, string> {
  const out: Record<string, string> = {};
  if (!known?.length) return out;
  for (const name of unknown) {
    let guess = didYouMean(name, known);
    if (guess === undefined)
      for (const k of known)
        if (k.length >= 3 && k.length < name.length && name.startsWith(k) && k.length > (guess?.length ?? 0))
          guess = k;
    if (guess !== undefined && guess !== name) out[name] = guess;
  }
  return out;
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
