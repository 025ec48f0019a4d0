// `nixoci build`'s core, shared by the CLI, the registry and the BuildKit frontend: a closure in, an image out.
//   roots -> (substitute what is missing) -> closure -> layer plan -> layers (cache hit, or one-pass build,
//   in parallel) -> customisation layer -> config + manifest -> BuiltImage
import { availableParallelism } from "node:os";
import type { Descriptor } from "../oci/descriptor.js";
import type { Digest } from "../oci/digest.js";
import type { BuiltImage } from "../oci/image.js";
import { OCI_CONFIG, OCI_MANIFEST, type LayerCompression } from "../oci/media-types.js";
import { computeClosure } from "../store/closure.js";
import type { LocalStore } from "../store/local-store.js";
import type { PathInfo } from "../store/path-info.js";
import type { Store } from "../store/store.js";
import type { SubstituteEvent } from "../store/substituter.js";
import { allSettledOrThrow, Limiter } from "../util/concurrency.js";
import { NixociError } from "../util/errors.js";
import { makeTempWorkDir, removeTree } from "../util/fs.js";
import type { BaseImage } from "./base-image.js";
import type { BaseTree } from "./base-tree.js";
import { imageConfigJson, manifestJson } from "./config.js";
import { customisationLayer } from "./customisation.js";
import type { LayerFactory, LayerSource } from "./layer-factory.js";
import { layerEncoders, type GzipEncoderSetting, type LayerEncoder } from "./layer-encoder.js";
import { LayerCache, layerIdentity, type CachedLayer } from "./layer-cache.js";
import { TAR_FORMAT_VERSION } from "./layer-tar.js";
import { LAYER_TAR_FORMATS, type LayerTarFormatName } from "./tar-header.js";
import { planLayers } from "./layering.js";
import { ownershipIdentity, parsePermRule, type Ownership } from "./permissions.js";
import type { ImageSpec } from "./spec.js";
import { NIX_CLOSURE_ROOT_ANNOTATION, NIX_STORE_PATH_ANNOTATION } from "./annotations.js";
import type { LayeringStrategy, PlannedLayer } from "./types.js";

export interface BuildOptions {
  /** Store paths the image is made of (its packages), in priority order for the symlink farm. */
  roots: string[];
  spec: ImageSpec;
  /** Where the closure lives (and where missing paths are substituted to). */
  store: LocalStore;
  /** Binary caches to substitute missing paths from. */
  substituters?: Store[];
  layering: LayeringStrategy;
  maxLayers: number;
  compression: LayerCompression;
  compressionLevel?: number;
  /** gzip's encoder (layer-encoder.ts); default auto: ISA-L for large layers where installed. */
  gzipEncoder?: GzipEncoderSetting;
  /** The layers' tar headers (tar-header.ts); default "standard", containerd's and Docker >= 23's. */
  tarFormat?: LayerTarFormatName;
  /** The layer cache directory; undefined means a throw-away cache (--no-cache). */
  cacheDir?: string;
  parallelism?: number;
  /** The image to build on (`--from`): its layers go first, its config is merged with the spec's. */
  base?: BaseImage;
  onEvent?: (e: BuildEvent) => void;
}

export type LayerStatus = "reused" | "built";

export interface LayerReport {
  digest: Digest;
  diffId: Digest;
  size: number;
  mediaType: string;
  paths: string[];
  status: LayerStatus;
  /** Ownership rules changed some of its headers: not the store's own tar of its paths. */
  rewritten?: boolean;
}

// Layer events carry the layer's index in the image (the customisation layer is the last); builds run in
// parallel, so they come in any order. narSize is the layer's store paths' NAR size (0 for the customisation
// layer): about the bytes its tar has, which is what "layer-progress" counts.
export type BuildEvent =
  | { type: "substitute"; event: SubstituteEvent }
  | { type: "planned"; layers: number; paths: number; narSize: number }
  /** A layer the cache lacks starts building. */
  | { type: "layer-start"; index: number; paths: string[]; narSize: number }
  /** Tar bytes of a building layer read so far. */
  | { type: "layer-progress"; index: number; bytes: number }
  /** A layer is ready: reused from the cache or built. */
  | { type: "layer"; index: number; report: LayerReport; narSize: number }
  | { type: "warning"; message: string }
  /** The base image's layer blobs are in the cache: `fetched` of them had to be downloaded. */
  | { type: "base"; ref: string; layers: number; fetched: number };

export interface BuildResult {
  image: BuiltImage;
  layers: LayerReport[];
  closure: Map<string, PathInfo>;
  /** The base image's layers (under nixoci's) and which of them this build downloaded. */
  base?: { ref: string; manifestDigest: Digest; layers: Descriptor[]; fetched: Digest[] };
  /** Removes the throw-away cache of a --no-cache build, once the outputs are written. */
  cleanup(): Promise<void>;
}

/** What of a layer's encoder its identity holds: the codec, the encoder with its version, the level. */
function encoderIdentity(e: LayerEncoder): Record<string, unknown> {
  return { compression: e.compression, encoder: e.name, level: e.level ?? null };
}

/** Requested packages below this NAR size count as "small roots" (see planStoreLayers). */
const SMALL_ROOT = 1 << 20;

/**
 * The layering strategy's plan, with one refinement: small requested packages (wrappers, scripts, profiles:
 * the top of an application's closure, which changes on every rebuild) go into a layer of their own on top,
 * so a change to them does not re-tar the unrelated paths a strategy grouped them with. Big roots stay
 * where the strategy put them.
 */
export function planStoreLayers(
  strategy: LayeringStrategy,
  roots: string[],
  closure: ReadonlyMap<string, PathInfo>,
  limit: number,
): PlannedLayer[] {
  const small = new Set(roots.filter((r) => (closure.get(r)?.narSize ?? Infinity) < SMALL_ROOT));
  if (!small.size || limit < 2) return planLayers(strategy, { roots, infos: closure }, limit);
  const plan = planLayers(strategy, { roots, infos: closure }, limit - 1)
    .map((l) => ({ paths: l.paths.filter((p) => !small.has(p)) }))
    .filter((l) => l.paths.length);
  return [...plan, { paths: [...small].sort() }];
}

/**
 * The closure without the store paths the base image already has (its tree has /nix/store/HASH-NAME: store
 * paths are immutable, so it is the same content), references to them dropped, for the layer plan.
 */
function withoutBasePaths(closure: Map<string, PathInfo>, base: BaseTree): Map<string, PathInfo> {
  const inBase = (p: string): boolean => base.entries.has(p.replace(/^\/+/, ""));
  const out = new Map<string, PathInfo>();
  for (const [p, info] of closure)
    if (!inBase(p)) out.set(p, { ...info, references: info.references.filter((r) => !inBase(r)) });
  return out;
}

/** The roots to plan from: the requested ones left, or (all in the base) the layered paths nothing refers to. */
function layeredRoots(roots: string[], layered: Map<string, PathInfo>): string[] {
  const left = roots.filter((r) => layered.has(r));
  if (left.length) return left;
  const referred = new Set([...layered.values()].flatMap((i) => i.references.filter((r) => r !== i.path)));
  return [...layered.keys()].filter((p) => !referred.has(p)).sort();
}

/** The bin directories ("/bin", "/usr/bin", ...) the customisation layer has: a base's PATH must reach them. */
function farmBinDirs(entries: { path: string }[]): Set<string> {
  return new Set(entries.map((e) => `/${e.path}`).filter((p) => /^\/(usr\/)?(local\/)?s?bin$/.test(p)));
}

export async function buildImage(opts: BuildOptions): Promise<BuildResult> {
  const { store, spec } = opts;
  if (opts.maxLayers < 2)
    throw new NixociError("--max-layers", "must be at least 2 (one store layer and the customisation layer)");
  if (!opts.roots.length)
    throw new NixociError(
      "build",
      "nothing to put in the image: give store paths, -f FILE -A ATTR, or packages in the spec",
    );
  const emit = (e: BuildEvent) => opts.onEvent?.(e);
  // Substitution and base images load their code only when asked for (start-up is most of a cached rebuild).
  const baseConfig = opts.base && (await import("./base-config.js"));
  if (opts.base && baseConfig) baseConfig.checkBasePlatform(opts.base, spec);

  if (opts.substituters?.length) {
    const { Substituter } = await import("../store/substituter.js");
    await new Substituter(store, opts.substituters, {
      onEvent: (event) => emit({ type: "substitute", event }),
    }).realise(opts.roots);
  }
  const closure = await computeClosure(store, opts.roots).catch((err: Error) => {
    throw opts.substituters?.length
      ? err
      : new NixociError(
          err instanceof NixociError ? err.input : "build",
          `${err.message.replace(/^[^:]*: /, "")} (no --substituter given to fetch it)`,
        );
  });
  // Named after this process, so a later build removes it should this one be killed.
  const tempCache = opts.cacheDir ? undefined : await makeTempWorkDir("nixoci-nocache");
  const cache = new LayerCache(opts.cacheDir ?? tempCache!);

  // The base's blobs go into the cache by digest (a second build with the same base downloads nothing), so
  // every output takes them from there like nixoci's own layers; its tree is read for the farm and accounts,
  // and store paths it already has are not layered again.
  let baseTree: BaseTree | undefined;
  let fetched: Digest[] = [];
  if (opts.base) {
    try {
      fetched = await opts.base.fetchInto(cache.blobs);
      emit({ type: "base", ref: opts.base.ref, layers: opts.base.layers.length, fetched: fetched.length });
      baseTree = await (await import("./base-tree.js")).readBaseTree(cache.blobs, opts.base.layers);
    } catch (err) {
      if (tempCache) await removeTree(tempCache);
      throw err;
    }
  }
  const layered = baseTree ? withoutBasePaths(closure, baseTree) : closure;
  const plan = layered.size
    ? planStoreLayers(opts.layering, layeredRoots(opts.roots, layered), layered, opts.maxLayers - 1)
    : [];
  emit({
    type: "planned",
    layers: plan.length + 1,
    paths: layered.size,
    narSize: [...layered.values()].reduce((n, i) => n + i.narSize, 0),
  });
  const encoderFor = await layerEncoders({
    compression: opts.compression,
    level: opts.compressionLevel,
    gzipEncoder: opts.gzipEncoder,
    cacheDir: opts.cacheDir,
  });
  const parallelism = opts.parallelism ?? Math.max(1, availableParallelism());
  const limiter = new Limiter(parallelism);
  // A layer's identity holds its tar's version and (when not the default) its header format.
  const tarFormat = opts.tarFormat ?? "standard";
  const tarIdentity = tarFormat === "standard" ? TAR_FORMAT_VERSION : `${TAR_FORMAT_VERSION}-${tarFormat}`;
  // Made on the first cache miss: a build whose layers are all cached never loads the tar writers and encoders.
  let factoryLoading: Promise<LayerFactory> | undefined;
  const layerFactory = () =>
    (factoryLoading ??= import("./layer-factory.js").then(
      (m) => new m.LayerFactory(cache.blobs, parallelism, LAYER_TAR_FORMATS[tarFormat]),
    ));

  // Cache lookups run freely; only builds take one of the limiter's slots. Builds are queued biggest first
  // (by NAR size) so a large changed layer does not start last and leave a core idle at the end.
  const pendingBuilds: { size: number; start: () => void }[] = [];
  let scheduled = false;
  const scheduleBuild = <T>(size: number, job: () => Promise<T>): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      pendingBuilds.push({ size, start: () => limiter.run(job).then(resolve, reject) });
      if (!scheduled) {
        scheduled = true;
        setImmediate(() => {
          pendingBuilds.sort((a, b) => b.size - a.size).forEach((b) => b.start());
          pendingBuilds.length = 0;
          scheduled = false;
        });
      }
    });
  const ownership: Ownership | undefined =
    spec.perms?.length || spec.uid !== undefined || spec.gid !== undefined
      ? { uid: spec.uid, gid: spec.gid, rules: (spec.perms ?? []).map((r) => parsePermRule(r, "perms")) }
      : undefined;
  const owners = ownershipIdentity(ownership);
  const cachedOrBuilt = async (
    index: number,
    identity: string,
    paths: string[],
    narSize: number,
    source: LayerSource,
    encoder: LayerEncoder,
  ): Promise<LayerReport> => {
    const hit = await cache.lookup(identity);
    const report: LayerReport = hit
      ? { ...hit, paths, status: "reused" }
      : await scheduleBuild(narSize, async () => {
          emit({ type: "layer-start", index, paths, narSize });
          const factory = await layerFactory();
          const { rewritten, ...blob } = await factory.make(source, encoder, ownership, (bytes) =>
            emit({ type: "layer-progress", index, bytes }),
          );
          const record: CachedLayer = { ...blob, paths, ...(rewritten ? { rewritten: true } : {}) };
          await cache.record(identity, record);
          return { ...record, status: "built" as const };
        });
    emit({ type: "layer", index, report, narSize });
    return report;
  };

  try {
    const storeLayers = plan.map(async (layer, index) => {
      const narSize = layer.paths.reduce((n, p) => n + layered.get(p)!.narSize, 0);
      const encoder = encoderFor(narSize);
      const identity = layerIdentity({
        kind: "store-paths",
        tar: tarIdentity,
        ...encoderIdentity(encoder),
        paths: layer.paths.map((p) => [p, layered.get(p)!.narHash.toString("nix32")]),
        ...(owners !== undefined ? { owners } : {}),
      });
      return cachedOrBuilt(
        index,
        identity,
        layer.paths,
        narSize,
        {
          kind: "store-paths",
          paths: layer.paths.map((p) => ({ storePath: p, realPath: store.realPath(p) })),
          storeDir: store.storeDir,
        },
        encoder,
      );
    });

    const custom = customisationLayer({
      packages: opts.roots.map((p) => ({ storePath: p, realPath: store.realPath(p) })),
      closure: [...closure.keys()].map((p) => ({ storePath: p, realPath: store.realPath(p) })),
      user: spec.user,
      base: baseTree,
    });
    for (const message of custom.warnings) emit({ type: "warning", message });
    const customEncoder = encoderFor(0);
    const customIdentity = layerIdentity({
      kind: "customisation",
      tar: tarIdentity,
      ...encoderIdentity(customEncoder),
      entries: custom.entries.map((e) =>
        "content" in e ? { ...e, content: e.content.toString("base64") } : e,
      ),
      ...(owners !== undefined ? { owners } : {}),
    });
    const customLayer = cachedOrBuilt(
      plan.length,
      customIdentity,
      [],
      0,
      { kind: "tree", entries: custom.entries },
      customEncoder,
    );

    const layers = await allSettledOrThrow([...storeLayers, customLayer]).finally(() =>
      factoryLoading?.then(
        (f) => f.close(),
        () => {},
      ),
    );
    const descriptors: Descriptor[] = layers.map((l) => {
      const d: Descriptor = { mediaType: l.mediaType, digest: l.digest, size: l.size };
      // A layer whose headers the ownership rules changed is not the store's tar of its paths: without the
      // annotations, the snapshotter and nix: descriptions take it as an ordinary layer.
      if (l.paths.length && !l.rewritten)
        d.annotations = Object.fromEntries([
          ...l.paths.map((p, i) => [`${NIX_STORE_PATH_ANNOTATION}.${i}`, p]),
          ...opts.roots.map((p, i) => [`${NIX_CLOSURE_ROOT_ANNOTATION}.${i}`, p]),
        ]);
      return d;
    });
    const ownDiffIds = layers.map((l) => l.diffId);
    const baseDescriptors: Descriptor[] = (opts.base?.layers ?? []).map((l) => ({ ...l.descriptor }));
    const configBytes =
      opts.base && baseConfig
        ? baseConfig.baseImageConfigJson(spec, opts.base, ownDiffIds, custom.env, farmBinDirs(custom.entries))
        : imageConfigJson(spec, ownDiffIds, custom.env);
    const config = await cache.blobs.putBytes(configBytes);
    const manifestBytes = manifestJson(config, [...baseDescriptors, ...descriptors]);
    const manifest = await cache.blobs.putBytes(manifestBytes);
    if (opts.cacheDir)
      await cache.recordImage(manifest.digest, [
        config.digest,
        ...baseDescriptors.map((d) => d.digest as Digest),
        ...layers.map((l) => l.digest),
      ]);
    const diffIds = [...(opts.base?.layers.map((l) => l.diffId) ?? []), ...ownDiffIds];

    const image: BuiltImage = {
      blobs: cache.blobs,
      manifest: { ...manifest, bytes: manifestBytes, mediaType: OCI_MANIFEST },
      config: { ...config, bytes: configBytes, mediaType: OCI_CONFIG },
      layers: [...baseDescriptors, ...descriptors],
      diffIds,
      platform: { architecture: spec.arch, os: spec.os, ...(spec.variant ? { variant: spec.variant } : {}) },
    };
    return {
      image,
      layers,
      closure,
      ...(opts.base
        ? {
            base: {
              ref: opts.base.ref,
              manifestDigest: opts.base.manifestDigest,
              layers: baseDescriptors,
              fetched,
            },
          }
        : {}),
      cleanup: async () => {
        if (tempCache) await removeTree(tempCache);
      },
    };
  } catch (err) {
    if (tempCache) await removeTree(tempCache);
    throw err;
  }
}
