// The work of nixoci's BuildKit frontend that runs inside BuildKit's ExecOps (in the frontend's own image, with
// the network the build allows), as `nixoci frontend plan|fetch|custom`. Each step writes only its outputs, so
// BuildKit caches it by its inputs: a fetch step is keyed by its exact store paths and caches, so an unchanged
// layer is never fetched again.
//   plan:   the spec's closure from the binary caches' narinfos (no NAR downloaded) and the layer plan -> JSON;
//   fetch:  exactly the given store paths (not their references) from the caches, signatures checked, NARs
//           restored as canonical trees under OUT/nix/store (mtime 1, Nix's modes, no hard links), with OUT/nix
//           and OUT/nix/store at 0755, mtime 1 -- the same entries nixoci's layer tar writes; or several layers
//           at once, each under OUT/<its directory> (a batch: one container start for many layers);
//   custom: the customisation layer (symlink farm, /etc/passwd, ...) from the fetched layers, written as a tree.
import { createHash } from "node:crypto";
import { chmod, lstat, lutimes, symlink, utimes, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { parseHash } from "../../nix/hash.js";
import { dumpPath } from "../../nix/nar-writer.js";
import { parseStorePath, type StorePath } from "../../nix/store-path.js";
import type { Readable } from "node:stream";
import { planStoreLayers } from "../../image/build.js";
import { customisationLayer, listingFiles } from "../../image/customisation.js";
import type { NarListing, NarListingNode } from "../../nix/nar-listing.js";
import type { TreeEntry } from "../../image/layer-tar.js";
import type { LayeringStrategy } from "../../image/types.js";
import { BinaryCacheStore, type TrustOptions } from "../../store/binary-cache.js";
import { MetadataLog } from "../../store/metadata-cache.js";
import { computeClosure } from "../../store/closure.js";
import { restoreVerifiedNar } from "../../store/nar-verify.js";
import type { PathInfo } from "../../store/path-info.js";
import type { Store } from "../../store/store.js";
import { mapLimit } from "../../util/concurrency.js";
import { NixociError } from "../../util/errors.js";
import { makeDirs } from "../../util/fs.js";
import { chooseBatches, readLedger, recordBatches, type StepLayer } from "./fetch-batches.js";

export type { StepLayer };

export const PLAN_VERSION = 3;

export interface Plan {
  version: number;
  /** The spec's packages, in order (the symlink farm's priority). */
  roots: string[];
  /** Store layers, bottom first. */
  layers: Array<{ paths: string[]; narSize: number }>;
  storeDir: string;
  /**
   * The fetch steps, each its exact layers in order (fetch-batches.ts): every planned layer is in one of them,
   * under layerDir(paths); a batch repeated from an earlier build may hold layers this plan does not have.
   */
  batches: StepLayer[][];
  /**
   * Set when the plan step made the customisation layer itself, from the caches' NAR listings (`--custom DIR`):
   * its env and warnings (the tree is in DIR). Absent: the custom step makes it from the fetched layers.
   */
  custom?: { env: string[]; warnings: string[] };
}

/** How a plan step chooses its fetch batches (fetch-batches.ts). */
export interface Batching {
  /** The ledger directory (a cache mount); none: new batches only. */
  ledger?: string;
  /** Records are matched within one scope: the steps' kind, image and sources. */
  scope: string;
  /** New batches at most. */
  maxNew: number;
  /** Whether a recorded batch's layers that this plan lacks can still be made (e.g. the caches still have them). */
  canMake?: (layers: StepLayer[]) => Promise<boolean>;
}

/** The first of `stores` that has each path (in order); a store path none has is an error naming the caches. */
class CacheChain implements Store {
  readonly url: string;
  readonly priority = 0;
  constructor(
    private readonly stores: BinaryCacheStore[],
    readonly storeDir: string,
    /** The metadata cache's logs, one per cache (none without a metadata cache). */
    private readonly logs: MetadataLog[] = [],
  ) {
    this.url = stores.map((s) => s.url).join(", ");
  }
  /** Which cache answered for a path (its listing and NAR come from there, without asking again). */
  private readonly owners = new Map<string, BinaryCacheStore>();
  async queryPathInfo(path: string): Promise<PathInfo | undefined> {
    for (const s of this.stores) {
      const info = await s.queryPathInfo(path);
      if (info) {
        this.owners.set(path, s);
        return info;
      }
    }
    return undefined;
  }
  private async owner(path: string): Promise<BinaryCacheStore | undefined> {
    if (!this.owners.has(path)) await this.queryPathInfo(path);
    return this.owners.get(path);
  }
  /** The NAR listing of a path from the first cache that has the path; undefined when that cache has none. */
  async narListing(path: string): Promise<NarListing | undefined> {
    return (await this.owner(path))?.narListing(path);
  }
  async narFromPath(info: PathInfo) {
    const s = await this.owner(info.path);
    if (s) return s.narFromPath(info);
    throw new NixociError(info.path, `not in ${this.url}`);
  }
  close(): void {
    this.stores.forEach((s) => s.close());
  }
  /** Writes the narinfos and listings fetched to the metadata cache (if any); a failure is only a warning. */
  async flushMetadata(warn: (msg: string) => void): Promise<void> {
    for (const log of this.logs)
      await log.flush().catch((e: Error) => warn(`${log.file}: not written (${e.message})`));
  }
  /** What the metadata cache answered ("R remembered, A asked for"), or undefined without one. */
  metadataStats(): string | undefined {
    if (!this.logs.length) return undefined;
    const sum = (k: "remembered" | "missing") => this.logs.reduce((n, l) => n + l.stats[k], 0);
    return `${sum("remembered")} remembered, ${sum("missing")} asked for`;
  }
}

/** The binary caches at `urls`, in order; with `metadataDir`, their narinfos and listings remembered there. */
export async function openCaches(
  urls: string[],
  trust: TrustOptions,
  storeDir: string,
  metadataDir?: string,
): Promise<CacheChain> {
  if (!urls.length)
    throw new NixociError("substituters", "the spec names no binary cache to take store paths from");
  const stores: BinaryCacheStore[] = [];
  const logs: MetadataLog[] = [];
  // Each cache's log is named by its URL as the store shows it (credentials redacted).
  const remember = metadataDir
    ? (url: string) => {
        const log = MetadataLog.open(metadataDir, url);
        logs.push(log);
        return log;
      }
    : undefined;
  for (const url of urls) stores.push(await BinaryCacheStore.open(url, trust, storeDir, remember));
  return new CacheChain(stores, storeDir, logs);
}

export async function planStep(opts: {
  roots: string[];
  caches: CacheChain;
  layering: LayeringStrategy;
  maxLayers: number;
  batching: Batching;
  /** Make the customisation layer here, into `out`, when the caches have every path's NAR listing. */
  custom?: { out: string; user?: string };
}): Promise<Plan> {
  if (!opts.roots.length) throw new NixociError("packages", "the spec lists no packages");
  const caches = opts.caches;
  // With a customisation layer to make, each path's listing is asked for as soon as its narinfo arrived, so the
  // listings come in while the closure is still being walked.
  const listings = new Map<string, Promise<NarListing | undefined>>();
  const listingOf = (p: string): Promise<NarListing | undefined> => {
    let listing = listings.get(p);
    if (!listing) listings.set(p, (listing = caches.narListing(p).catch(() => undefined)));
    return listing;
  };
  const walker: Store = {
    storeDir: caches.storeDir,
    url: caches.url,
    priority: caches.priority,
    queryPathInfo: async (p) => {
      const info = await caches.queryPathInfo(p);
      if (info) void listingOf(p);
      return info;
    },
    narFromPath: (info) => caches.narFromPath(info),
    close: () => undefined,
  };
  const closure = await computeClosure(opts.custom ? walker : caches, opts.roots);
  // A recorded batch is repeated only while the caches still have its other layers' paths: were its step pruned
  // from BuildKit's cache, it would fetch them again.
  const canMake = async (layers: StepLayer[]): Promise<boolean> => {
    for (const p of layers.flatMap((l) => l.paths))
      if (!closure.has(p) && !(await caches.queryPathInfo(p).catch(() => undefined))) return false;
    return true;
  };
  const plan = await planOfClosure(opts.roots, closure, opts.layering, opts.maxLayers, caches.storeDir, {
    canMake,
    ...opts.batching,
  });
  if (opts.custom) {
    const paths = [...closure.keys()];
    const got = await Promise.all(paths.map(listingOf));
    if (got.every((l) => l !== undefined && !hasReplacementChars(l.root))) {
      const src = (p: string) => ({ storePath: p, realPath: p });
      const custom = customisationLayer({
        packages: opts.roots.map(src),
        closure: paths.map(src),
        user: opts.custom.user,
        files: listingFiles(new Map(paths.map((p, i) => [p, got[i]!.root])), caches.storeDir),
      });
      await makeDirs(opts.custom.out);
      await writeTree(custom.entries, opts.custom.out);
      plan.custom = { env: custom.env, warnings: custom.warnings };
    }
  }
  return plan;
}

/**
 * Whether a listing names a file by bytes that were not UTF-8 (JSON cannot carry them exactly: they arrive as
 * U+FFFD). Then, as when a cache lacks a listing, the customisation layer is made from the fetched files instead.
 * Listings are not signed: they shape the symlink farm only, as the fetched (verified) trees would; the layer's
 * bytes are checked against nixoci build's in the tests.
 */
function hasReplacementChars(node: NarListingNode): boolean {
  if (node.type === "symlink") return node.target.includes("\uFFFD");
  if (node.type !== "directory") return false;
  for (const [name, child] of Object.entries(node.entries))
    if (name.includes("\uFFFD") || hasReplacementChars(child)) return true;
  return false;
}

/** The plan of a known closure: nixoci build's layer planning, each layer with its NAR size, and the batches. */
export async function planOfClosure(
  roots: string[],
  closure: ReadonlyMap<string, PathInfo>,
  layering: LayeringStrategy,
  maxLayers: number,
  storeDir: string,
  batching: Batching,
): Promise<Plan> {
  const layers = planStoreLayers(layering, roots, closure, maxLayers - 1).map((l) => ({
    paths: l.paths,
    narSize: l.paths.reduce((n, p) => n + closure.get(p)!.narSize, 0),
  }));
  const planned = layers.map((l) => ({ dir: layerDir(l.paths), ...l }));
  let known = batching.ledger ? readLedger(batching.ledger, batching.scope) : [];
  if (batching.canMake) {
    const wanted = new Set(planned.map((l) => l.dir));
    const ok: typeof known = [];
    for (const r of known)
      if (
        r.layers.some((l) => wanted.has(l.dir)) &&
        (await batching.canMake(r.layers.filter((l) => !wanted.has(l.dir))))
      )
        ok.push(r);
    known = ok;
  }
  const chosen = chooseBatches(planned, known, batching.maxNew);
  if (batching.ledger) recordBatches(batching.ledger, batching.scope, chosen);
  return { version: PLAN_VERSION, roots, layers, storeDir, batches: chosen.map((b) => b.layers) };
}

const MTIME = 1;

/**
 * Restores exactly `paths` (not their references) under OUT/<store dir> as canonical trees (mtime 1, Nix's
 * modes, no hard links), each path's NAR from `nar`; then gives the store directory's ancestors the metadata
 * nixoci's tars have (0755, mtime 1; children first).
 */
async function restorePaths(
  paths: string[],
  storeDir: string,
  out: string,
  nar: (path: StorePath) => Promise<Readable>,
): Promise<void> {
  const dest = join(out, storeDir);
  await makeDirs(dest, 0o755);
  await mapLimit(paths, 4, async (p) => {
    const sp = parseStorePath(p, storeDir);
    // Read to the end, or the verifier of a cache's NAR never checks its NarHash.
    await restoreVerifiedNar(await nar(sp), join(dest, sp.baseName), { input: sp.path, canonicalize: true });
  });
  const parts = storeDir.split("/").filter(Boolean);
  for (let i = parts.length; i >= 1; i--) {
    const d = join(out, ...parts.slice(0, i));
    await chmod(d, 0o755);
    await utimes(d, MTIME, MTIME);
  }
}

const LAYER_DIR = /^[0-9a-f]{1,64}$/;

/**
 * A step's positional arguments as layers: `DIR=PATH,PATH,...` is a layer under OUT/DIR (DIR in lowercase hex:
 * layerDir's names); plain PATHs, one layer under OUT itself. The two forms do not mix.
 */
export function parseStepLayers(args: string[]): StepLayer[] {
  // A store path is absolute (and may hold "="); a layer argument starts with its directory's name.
  const grouped = args.filter((a) => !a.startsWith("/"));
  if (grouped.length === 0) return args.length ? [{ dir: "", paths: args }] : [];
  if (grouped.length !== args.length)
    throw new NixociError(
      args.find((a) => a.startsWith("/"))!,
      "mixes plain store paths with DIR=PATH,... layers",
    );
  return grouped.map((a) => {
    const eq = a.indexOf("=");
    const dir = eq < 0 ? a : a.slice(0, eq);
    const paths =
      eq < 0
        ? []
        : a
            .slice(eq + 1)
            .split(",")
            .filter(Boolean);
    if (!LAYER_DIR.test(dir)) throw new NixociError(a, "a layer's directory must be lowercase hex");
    if (!paths.length) throw new NixociError(a, "a layer with no store paths");
    return { dir, paths };
  });
}

/** A planned layer's directory in a batch step's output: named by its store paths alone, so stable across builds. */
export function layerDir(paths: readonly string[]): string {
  return createHash("sha256")
    .update([...paths].sort().join("\n"))
    .digest("hex")
    .slice(0, 20);
}

/** The layers of a step, each restored under its directory (four NARs at a time within a layer). */
async function restoreLayers(
  layers: StepLayer[],
  storeDir: string,
  out: string,
  nar: (path: StorePath) => Promise<Readable>,
): Promise<void> {
  await mapLimit(layers, 2, (l) => restorePaths(l.paths, storeDir, l.dir ? join(out, l.dir) : out, nar));
}

/** Fetches exactly the layers' paths from the caches, each verified against its narinfo. */
export function fetchStep(layers: StepLayer[], caches: CacheChain, out: string): Promise<void> {
  return restoreLayers(layers, caches.storeDir, out, async (sp) => {
    const info = await caches.queryPathInfo(sp.path);
    if (!info) throw new NixociError(sp.path, `not in ${caches.url}`);
    return caches.narFromPath(info);
  });
}

/**
 * Copies exactly the layers' paths from a store directory mounted at `from` (the build's Nix cache mount, whose
 * store is /nix/store), a NAR dump and restore each.
 */
export function copyStep(
  layers: StepLayer[],
  from: string,
  out: string,
  storeDir = "/nix/store",
): Promise<void> {
  return restoreLayers(layers, storeDir, out, async (sp) => dumpPath(join(from, sp.baseName)));
}

/**
 * `nix path-info --json -r` output as the closure map the layer planner takes. Nix up to 2.18 prints an array of
 * objects each naming its `path` (`"valid": false` for a path that is not valid); 2.19 and later print an object
 * keyed by store path (null for a path that is not valid). Both are read. Both 2.8 and 2.26 spell narHash in SRI
 * form ("sha256-<base64>"); any spelling parseHash takes ("sha256:<nix32>" of older tools too) is accepted, as
 * long as it is sha256. A path without valid information is an error naming it, never a layer with a made-up hash.
 */
export function closureFromNixJson(json: unknown, storeDir: string): Map<string, PathInfo> {
  const what = "nix path-info";
  let entries: Array<[unknown, unknown]>;
  if (Array.isArray(json)) entries = json.map((e) => [(e as { path?: unknown } | null)?.path, e]);
  else if (json !== null && typeof json === "object") entries = Object.entries(json);
  else throw new NixociError(what, "expected a JSON array (Nix < 2.19) or object (Nix >= 2.19)");
  const out = new Map<string, PathInfo>();
  for (const [key, value] of entries) {
    if (typeof key !== "string") throw new NixociError(what, "an entry without a store path");
    const path = parseStorePath(key, storeDir).path;
    const e = value as {
      valid?: unknown;
      narHash?: unknown;
      narSize?: unknown;
      references?: unknown;
    } | null;
    if (e === null || typeof e !== "object" || e.valid === false || e.narHash === undefined)
      throw new NixociError(what, `${path} is not a valid path in the store`);
    const narSize = Number(e.narSize);
    if (!Number.isSafeInteger(narSize) || narSize < 0)
      throw new NixociError(what, `${path}: bad narSize ${JSON.stringify(e.narSize)}`);
    out.set(path, {
      path,
      narHash: parseHash(String(e.narHash), path, "sha256"),
      narSize,
      references: Array.isArray(e.references) ? e.references.map(String) : [],
      sigs: [],
    });
  }
  return out;
}

/** Writes tree entries (a customisation layer) under `out`, with the metadata nixoci's tar gives them. */
export async function writeTree(entries: TreeEntry[], out: string): Promise<void> {
  const dirs: Array<{ path: string; mode: number }> = [];
  const norm = (p: string): string => p.replace(/^(\.\/|\/)+/, "");
  for (const e of [...entries].sort((a, b) => (norm(a.path) < norm(b.path) ? -1 : 1))) {
    const path = join(out, norm(e.path));
    if (e.type === "directory") {
      await makeDirs(path);
      dirs.push({ path, mode: e.mode });
    } else if (e.type === "file") {
      await writeFile(path, e.content, { mode: e.mode });
      await chmod(path, e.mode);
      await utimes(path, MTIME, MTIME);
    } else {
      await symlink(e.target, path);
      await lutimes(path, MTIME, MTIME);
    }
  }
  // Modes and mtimes of directories last (writing their children changed the mtimes), deepest first.
  for (const d of dirs.reverse()) {
    await chmod(d.path, d.mode);
    await utimes(d.path, MTIME, MTIME);
  }
}

/**
 * The customisation layer of `plan` (spec: packages' symlink farm, user), reading the packages from the fetched
 * layers mounted under `layersDir/<i>`; writes the tree to `out` and returns the extra env (SSL_CERT_FILE).
 */
export async function customStep(opts: {
  plan: Plan;
  layersDir: string;
  out: string;
  user?: string;
}): Promise<{ env: string[]; warnings: string[] }> {
  const where = new Map<string, string>();
  for (const [i, layer] of opts.plan.layers.entries())
    for (const p of layer.paths) where.set(p, join(opts.layersDir, String(i), p));
  for (const [p, real] of where)
    if (!(await lstat(real).catch(() => undefined)))
      throw new NixociError(p, "missing from the fetched layers");
  const source = (p: string) => ({ storePath: p, realPath: where.get(p)! });
  const custom = customisationLayer({
    packages: opts.plan.roots.map(source),
    closure: [...where.keys()].map(source),
    user: opts.user,
  });
  await makeDirs(opts.out);
  await writeTree(custom.entries, opts.out);
  return { env: custom.env, warnings: custom.warnings };
}
