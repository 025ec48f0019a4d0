// Package names resolved from a package index: a JSON file of prebuilt store paths, realised into the local
// store from binary caches by nixoci's own Substituter (signatures checked by the caches' trust settings). No
// nix binary is involved, so a registry serving an index needs no Nix installation beyond a store directory.
//
// The index:
//   {
//     "revision": "2026-11-29.1",
//     "packages": {
//       "x86_64-linux":  { "hello": "/nix/store/<hash>-hello-2.12", "curl": ["/nix/store/<hash>-curl-bin", ...] },
//       "aarch64-linux": { ... }
//     }
//   }
// Architecture keys are Nix systems (x86_64-linux, aarch64-linux) or OCI names (amd64, arm64); a package is
// one store path or a list of them (e.g. several outputs). The revision is what `latest` stands for and the
// only revision the index serves; it must be a valid tag. The file is re-read when its mtime, size or inode
// changes (replace it atomically: write a new file and rename it over the old one).
import { readFile, stat } from "node:fs/promises";
import { resolve as resolvePath } from "node:path";
import { parseStorePath } from "../nix/store-path.js";
import { isValidTag } from "../oci/reference.js";
import type { LocalStore } from "../store/local-store.js";
import type { Store } from "../store/store.js";
import { Substituter } from "../store/substituter.js";
import { NixociError, quote } from "../util/errors.js";
import { errnoWords } from "../util/fs-errors.js";
import {
  archForName,
  RevisionUnavailableError,
  UnknownPackageError,
  type PackageResolver,
  type ResolveOptions,
} from "./resolver.js";

export interface PackageIndex {
  revision: string;
  /** OCI architecture -> package name -> store paths. */
  packages: Map<string, Map<string, string[]>>;
}

/** Parses and validates an index document (see the file comment). */
export function parsePackageIndex(text: string, input: string, storeDir?: string): PackageIndex {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new NixociError(input, `not valid JSON: ${(err as Error).message}`);
  }
  const isObject = (v: unknown): v is Record<string, unknown> =>
    typeof v === "object" && v !== null && !Array.isArray(v);
  if (!isObject(doc)) throw new NixociError(input, "must be a JSON object");
  if (typeof doc.revision !== "string" || !isValidTag(doc.revision))
    throw new NixociError(input, `"revision" must be a string usable as a tag ([A-Za-z0-9_][A-Za-z0-9._-]*)`);
  if (!isObject(doc.packages)) throw new NixociError(input, `"packages" must be an object of architectures`);
  const packages = new Map<string, Map<string, string[]>>();
  for (const [key, table] of Object.entries(doc.packages)) {
    const arch = archForName(key);
    if (!arch) throw new NixociError(input, `unknown architecture ${quote(key)} in "packages"`);
    if (!isObject(table)) throw new NixociError(input, `packages.${key} must be an object of package names`);
    const names = packages.get(arch) ?? new Map<string, string[]>();
    packages.set(arch, names);
    for (const [name, value] of Object.entries(table)) {
      const list = typeof value === "string" ? [value] : value;
      if (!Array.isArray(list) || !list.length || list.some((p) => typeof p !== "string"))
        throw new NixociError(input, `packages.${key}.${name} must be a store path or a list of them`);
      for (const p of list as string[]) parseStorePath(p, storeDir, `${input}: packages.${key}.${name}`);
      names.set(name, [...new Set([...(names.get(name) ?? []), ...(list as string[])])]);
    }
  }
  return { revision: doc.revision, packages };
}

export class PackageIndexResolver implements PackageResolver {
  readonly description: string;
  private readonly indexFile: string;
  private loaded?: { stamp: string; index: PackageIndex };
  private loading?: { stamp: string; promise: Promise<PackageIndex> };

  constructor(
    private readonly opts: {
      indexFile: string;
      /** Binary caches with their trust settings; empty means the paths must already be in the store. */
      substituters: Store[];
      store: LocalStore;
      /** NARs copied at once (default 4). */
      parallelism?: number;
    },
  ) {
    this.indexFile = resolvePath(opts.indexFile);
    this.description = `package index ${this.indexFile}`;
  }

  /** The index, re-read only when the file changed (one stat per call). */
  async index(): Promise<PackageIndex> {
    let st;
    try {
      st = await stat(this.indexFile);
    } catch (err) {
      throw new NixociError(this.indexFile, `cannot read the package index (${errnoWords(err)})`);
    }
    const stamp = `${st.ino}:${st.size}:${st.mtimeMs}`;
    if (this.loaded?.stamp === stamp) return this.loaded.index;
    if (this.loading?.stamp === stamp) return this.loading.promise;
    const promise = (async () => {
      const text = await readFile(this.indexFile, "utf8");
      const index = parsePackageIndex(text, this.indexFile, this.opts.store.storeDir);
      this.loaded = { stamp, index };
      return index;
    })();
    this.loading = { stamp, promise };
    try {
      return await promise;
    } finally {
      if (this.loading?.promise === promise) this.loading = undefined;
    }
  }

  async currentRevision(): Promise<string> {
    return (await this.index()).revision;
  }

  async servesRevision(revision: string): Promise<boolean> {
    return revision === (await this.currentRevision());
  }

  /** The index's table for the revision (which must be the index's) and architecture; undefined when it has none. */
  private async table(opts: ResolveOptions): Promise<Map<string, string[]> | undefined> {
    const index = await this.index();
    if (opts.revision !== index.revision)
      throw new RevisionUnavailableError(
        opts.revision,
        `not available from ${this.description} (current revision: ${index.revision})`,
      );
    return index.packages.get(opts.arch);
  }

  async missingPackages(packages: string[], opts: ResolveOptions): Promise<string[]> {
    const table = await this.table(opts);
    return [...new Set(packages)].filter((n) => !table?.has(n)).sort();
  }

  async packageNames(opts: ResolveOptions): Promise<string[]> {
    return [...((await this.table(opts))?.keys() ?? [])].sort();
  }

  async architectures(): Promise<string[]> {
    return [...(await this.index()).packages.keys()].sort();
  }

  async resolve(packages: string[], opts: ResolveOptions): Promise<string[]> {
    const table = await this.table(opts);
    const names = [...new Set(packages)].sort();
    if (!names.length) throw new NixociError(this.description, "no packages requested");
    const unknown = names.filter((n) => !table?.has(n));
    if (unknown.length) throw new UnknownPackageError(unknown, `${this.description} for ${opts.arch}`);
    const paths = [...new Set(names.flatMap((n) => table!.get(n)!))];
    opts.signal?.throwIfAborted();

    if (this.opts.substituters.length) {
      await new Substituter(this.opts.store, this.opts.substituters, {
        parallelism: this.opts.parallelism,
      }).realise(paths);
    } else {
      for (const p of paths) {
        if (!(await this.opts.store.queryPathInfo(p)))
          throw new NixociError(p, `is not in ${this.opts.store.url}, and no binary cache is configured`);
      }
    }
    return paths;
  }
}
