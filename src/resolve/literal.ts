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
    const { store } = this.opts;
    const substituters = this.opts.substituters ?? [];
    const paths = new Map<string, string>();
    const unknown: string[] = [];
    for (const name of names) {
      let path: string;
      try {
        path = parseStoreBaseName(name, store.storeDir).path;
      } catch {
        unknown.push(name);
        continue;
      }
      paths.set(name, path);
    }
    for (const [name, path] of paths) {
      opts.signal?.throwIfAborted();
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
    if (unknown.length) throw new UnknownPackageError(unknown, this.description);
    const roots = [...paths.values()];
    if (substituters.length) await new Substituter(store, substituters).realise(roots);
    return roots;
  }
}
