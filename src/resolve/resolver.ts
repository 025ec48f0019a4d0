// Package resolvers: what `nixoci serve` asks to turn package names ("git", "htop") into store paths that are
// valid in the local store, for one revision of a package set and one architecture. Three kinds:
//   - NixEvalResolver (nix-eval.ts): a Nix file, a nixpkgs checkout or a flake, evaluated and built with the
//     nix binary;
//   - PackageIndexResolver (package-index.ts): a JSON index of prebuilt store paths per architecture, realised
//     from signed binary caches without the nix binary;
//   - LiteralResolver (literal.ts): names that are store path base names ("<hash>-<name>"), taken as they are.
// This module holds what they share (the interface and its errors); create-resolver.ts picks one from the serve
// options.
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
