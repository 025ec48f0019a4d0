// The resolver `nixoci serve`'s options ask for (see resolver.ts for the kinds).
import type { LocalStore } from "../store/local-store.js";
import type { Store } from "../store/store.js";
import { NixociError } from "../util/errors.js";
import { LiteralResolver } from "./literal.js";
import { NixEvalResolver } from "./nix-eval.js";
import { PackageIndexResolver } from "./package-index.js";
import type { PackageResolver } from "./resolver.js";

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
    return new PackageIndexResolver({
      indexFile: opts.indexFile,
      store: opts.store,
      substituters: opts.substituters ?? [],
    });
  }
  if (opts.nixFile !== undefined || opts.nixpkgs !== undefined || opts.flake !== undefined) {
    return new NixEvalResolver({
      nixFile: opts.nixFile,
      nixpkgs: opts.nixpkgs,
      flake: opts.flake,
      timeoutMs: opts.nixTimeoutMs,
    });
  }
  return new LiteralResolver({ store: opts.store, substituters: opts.substituters ?? [] });
}
