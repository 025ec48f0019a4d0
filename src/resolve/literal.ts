// Package names that are store path base names ("<32-char hash>-<name>"), taken literally: the path must be
// valid in the local store, or be found in one of the configured binary caches (then it is substituted, with
// its closure, signatures checked). Store paths are immutable, so every revision means the same thing: the
// current revision is "store" and any pinned revision is accepted.
import { parseStoreBaseName } from "../nix/store-path.js";
import type { LocalStore } from "../store/local-store.js";
import type { Store } from "../store/store.js";
import { Substituter } from "../store/substituter.js";
import { NixociError } from "../util/errors.js";
import { UnknownPackageError, type PackageResolver, type ResolveOptions } from "./resolver.js";

export class LiteralResolver implements PackageResolver {
  readonly description: string;

  constructor(private readonly opts: { store: LocalStore; substituters?: Store[] }) {
    this.description = `store paths in ${opts.store.url}${
      opts.substituters?.length ? ` or ${opts.substituters.map((s) => s.url).join(", ")}` : ""
    }`;
  }

  async currentRevision(): Promise<string> {
    return "store";
  }

  async servesRevision(_revision: string): Promise<boolean> {
    return true;
  }

  async resolve(packages: string[], opts: ResolveOptions): Promise<string[]> {
    const names = [...new Set(packages)].sort();
    if (!names.length) throw new NixociError(this.description, "no packages requested");
    const unknown = await this.missingPackages(names, opts);
    if (unknown.length) throw new UnknownPackageError(unknown, this.description);
    const roots = names.map((n) => parseStoreBaseName(n, this.opts.store.storeDir).path);
    const substituters = this.opts.substituters ?? [];
    if (substituters.length) await new Substituter(this.opts.store, substituters).realise(roots);
    return roots;
  }

  /** Names that are no store path base name, or whose path neither the store nor a binary cache has. */
  async missingPackages(packages: string[], opts: ResolveOptions): Promise<string[]> {
    const { store } = this.opts;
    const substituters = this.opts.substituters ?? [];
    const unknown: string[] = [];
    for (const name of [...new Set(packages)].sort()) {
      opts.signal?.throwIfAborted();
      let path: string;
      try {
        path = parseStoreBaseName(name, store.storeDir).path;
      } catch {
        unknown.push(name);
        continue;
      }
      if (await store.queryPathInfo(path)) continue;
      let found = false;
      for (const s of substituters) {
        try {
          if (await s.queryPathInfo(path)) {
            found = true;
            break;
          }
        } catch (err) {
          throw new NixociError(path, `cannot substitute: ${(err as Error).message}`);
        }
      }
      if (!found) unknown.push(name);
    }
    return unknown;
  }

  /** The store is no list of names worth suggesting from. */
  async packageNames(_opts: ResolveOptions): Promise<undefined> {
    return undefined;
  }

  /** Store paths are whatever they were built for: the name's architecture prefix only labels the image. */
  async architectures(): Promise<undefined> {
    return undefined;
  }
}
