// Nix package images built on demand: the ManifestSource behind `docker pull HOST/shell/git/htop`.
//
// A request (repository, tag) becomes an image key: the sorted package list and architecture from the name
// (image-names.ts), the resolver's revision for the tag (`latest` = current revision; other tags are pins),
// and the build settings (layering strategy, layer limit, compression). Then:
//   - cache: storage.root/nix-images/<sha256 of the key>.json = {digest, mediaType, packages, revision, arch,
//     createdAt, ...}, written atomically and kept in memory too, so a cached image survives restarts and is
//     answered (HEAD or GET) without resolving or building: only `latest` costs a revision check
//     (resolver.currentRevision(), cached by the resolver for a few seconds).
//   - miss: resolve the packages to store paths (building or substituting them), buildImage() with the
//     registry's storage root as the layer cache directory, so layers and config land directly in the
//     registry's blob store, where every image shares them; the manifest goes there too. The server then
//     records the manifest by digest in the repository. Tags are never stored: `latest` must follow the
//     revision, and the cache answers any tag cheaply.
//   - single flight: concurrent requests for the same key (even under different names: git/htop, htop/git)
//     share one build ("coalesced"). Different images build concurrently, at most maxConcurrentBuilds (2) at a
//     time; at most maxQueuedBuilds (32) more wait for a slot, beyond that the answer is 429 TOOMANYREQUESTS
//     (with Retry-After). A build runs to completion even when every client that asked has gone (a client's
//     abort signal only stops its own wait), so the next pull is a cache hit.
//   - limits: a build taking longer than buildTimeoutMs (10 min) fails with 504 UNKNOWN ("timed out"); its nix
//     processes are killed and its slot freed. Work already done (nix builds, substituted paths, layers) is
//     kept, so a retry continues from there. Failures are not cached.
//   - errors: unknown packages -> 404 NAME_UNKNOWN naming all of them, each with a "did you mean" among the
//     set's names that a repository name can spell (`unknown package "helo" (did you mean hello?)`); an
//     architecture the resolver gives no packages for (Nix cannot build for it) -> 404 NAME_UNKNOWN naming it; a
//     pinned revision the resolver cannot serve -> 404 MANIFEST_UNKNOWN naming it; a name that is not a package
//     list -> 400 NAME_INVALID; a failed evaluation or build -> 500 UNKNOWN with a one-line cause. A repository
//     with pushed content (tags) that is asked for a tag it lacks gets the server's usual 404 instead of the
//     404s above (undefined is returned).
//   - tags lists: a name that would resolve lists `latest`, the current revision, and the other revisions it
//     was built for that still pull (the resolver serves them and the image is cached), found without building:
//     the resolver only checks that the set has the packages. A name that would not resolve gets the pull's
//     404.
// The image: the packages' closure in store layers plus the customisation layer (a symlink farm of the
// packages at /, /tmp, /etc/passwd...), PATH reaching /bin, labels dev.nixoci.packages and dev.nixoci.revision,
// no entrypoint, and Cmd ["/bin/sh"] when one of the packages has bin/sh (otherwise no Cmd: `docker run IMAGE
// CMD` names the program). Created is the epoch (reproducible): the same key gives the same digest anywhere.
// Multi-platform: a name without an architecture prefix whose packages the resolver has for two or more
// architectures (an index's per-system entries, a Nix file taking `system`, Nix with extra platforms) is an OCI
// image index of one image per architecture, for a client that accepts an index (Docker, containerd, skopeo all
// do; the platform's image is then pulled by digest). Each image is the one its prefixed name gives
// (`arm64/NAME`): built, cached and coalesced the same way; the index itself is made from their digests, cheap
// and deterministic, so it needs no cache of its own. A client that accepts image manifests only gets the
// image for the server's own architecture, as it did before; a prefixed name is always the plain manifest.
import { createHash } from "node:crypto";
import { statSync } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { buildImage } from "../../image/build.js";
import { encodersIdentity, type GzipEncoderSetting } from "../../image/layer-encoder.js";
import { TAR_FORMAT_VERSION } from "../../image/layer-tar.js";
import { defaultArch, emptySpec, type ImageSpec } from "../../image/spec.js";
import type { LayerTarFormatName } from "../../image/tar-header.js";
import type { LayeringStrategy } from "../../image/types.js";
import { isDigest, type Digest } from "../../oci/digest.js";
import { indexOf } from "../../oci/index.js";
import { DOCKER_MANIFEST_LIST, OCI_INDEX, type LayerCompression } from "../../oci/media-types.js";
import { compareTags, NAME_COMPONENT_RE } from "../../oci/reference.js";
import {
  describeUnknownPackages,
  RevisionUnavailableError,
  suggestPackages,
  UnknownPackageError,
  type PackageResolver,
  type ResolveOptions,
} from "../../resolve/resolver.js";
import type { LocalStore } from "../../store/local-store.js";
import { oneLine } from "../../util/errors.js";
import { makeDirs, writeFileAtomic } from "../../util/fs.js";
import { RegistryError, registryError } from "./errors.js";
import {
  DEFAULT_META_PACKAGES,
  namesArchitecture,
  parseImageName,
  recordedImageName,
  prefixArchitectures,
  parseImageReference,
  type ImageRequest,
} from "./image-names.js";
import type { ManifestSource, StoredManifest } from "./manifest-source.js";
import type { RegistryStorage } from "./storage.js";
import { isStorageFull } from "../../util/fs-errors.js";

export type NixImageEventType =
  | "cache-hit"
  | "cache-miss"
  | "build-start"
  | "build-done"
  | "build-failed"
  | "coalesced"
  | "rejected"
  /** A multi-platform index was answered; arch lists its architectures (comma-separated). */
  | "index";

export interface NixImageEvent {
  type: NixImageEventType;
  /** The image key's id (sha256 hex of the key; also the cache file's name). */
  key: string;
  repo: string;
  /** build-done/build-failed: seconds the build ran. */
  seconds?: number;
  /** build-failed/rejected: the one-line error. */
  error?: string;
  /** Package list, revision and architecture of the key. */
  packages?: string[];
  revision?: string;
  arch?: string;
}

export interface NixImageSourceOptions {
  storage: RegistryStorage;
  resolver: PackageResolver;
  store: LocalStore;
  /** Meta-packages (name -> packages); default DEFAULT_META_PACKAGES ({ shell: [bashInteractive, coreutils] }). */
  metaPackages?: Readonly<Record<string, readonly string[]>>;
  /** Architecture of names without an architecture prefix; default this machine's. */
  defaultArch?: string;
  /** Default "nixery" (Nixery's grouping, which shares layers well across many images). */
  layering?: LayeringStrategy;
  /** Default 100 (store layers plus the customisation layer). */
  maxLayers?: number;
  /** Default gzip. */
  compression?: LayerCompression;
  compressionLevel?: number;
  /** gzip's encoder (layer-encoder.ts); default auto. */
  gzipEncoder?: GzipEncoderSetting;
  /** The layers' tar headers (tar-header.ts); default "standard". */
  tarFormat?: LayerTarFormatName;
  /** Default 10 minutes. */
  buildTimeoutMs?: number;
  /** Default 2. */
  maxConcurrentBuilds?: number;
  /** Builds waiting for a slot; default 32. Beyond that: 429 TOOMANYREQUESTS. */
  maxQueuedBuilds?: number;
  /** Layer-building parallelism inside one build (default: cores). */
  parallelism?: number;
  onEvent?: (e: NixImageEvent) => void;
}

/** What the cache file holds. */
export interface NixImageRecord {
  digest: Digest;
  mediaType: string;
  packages: string[];
  revision: string;
  arch: string;
  layering: LayeringStrategy;
  maxLayers: number;
  compression: LayerCompression;
  /** The resolved store paths (the image's roots). */
  paths: string[];
  createdAt: string;
}

interface Flight {
  promise: Promise<StoredManifest>;
}

export const DEFAULT_BUILD_TIMEOUT_MS = 10 * 60 * 1000;

export class NixImageSource implements ManifestSource {
  private readonly storage: RegistryStorage;
  private readonly resolver: PackageResolver;
  private readonly metaPackages: Readonly<Record<string, readonly string[]>>;
  private readonly defaultArch: string;
  private readonly layering: LayeringStrategy;
  private readonly maxLayers: number;
  private readonly compression: LayerCompression;
  private readonly buildTimeoutMs: number;
  private readonly maxConcurrent: number;
  private readonly maxQueued: number;
  private readonly cacheDir: string;
  /** Key id -> record and manifest bytes (recently used; the files are the truth). */
  private readonly memory = new Map<string, { record: NixImageRecord; bytes: Buffer }>();
  private readonly flights = new Map<string, Flight>();
  private running = 0;
  private readonly waiting: Array<() => void> = [];
  /** The encoders' identity (which gzip encoder, its version), part of every image key; found once. */
  private encoders?: Promise<string>;
  /** arch \0 packages -> revisions with a cache record under this source's settings (loaded on first need). */
  private built?: Promise<Map<string, Set<string>>>;

  constructor(private readonly opts: NixImageSourceOptions) {
    this.storage = opts.storage;
    this.resolver = opts.resolver;
    this.metaPackages = opts.metaPackages ?? DEFAULT_META_PACKAGES;
    this.defaultArch = opts.defaultArch ?? defaultArch();
    this.layering = opts.layering ?? "nixery";
    this.maxLayers = opts.maxLayers ?? 100;
    this.compression = opts.compression ?? "gzip";
    this.buildTimeoutMs = opts.buildTimeoutMs ?? DEFAULT_BUILD_TIMEOUT_MS;
    this.maxConcurrent = Math.max(1, opts.maxConcurrentBuilds ?? 2);
    this.maxQueued = Math.max(0, opts.maxQueuedBuilds ?? 32);
    this.cacheDir = join(this.storage.root, "nix-images");
  }

  /** The running builds' controllers: a server that stops aborts them (their nix processes with them). */
  private readonly controllers = new Set<AbortController>();

  /**
   * Stops every running build (the server is shutting down and will answer no one): their nix processes are
   * killed, work they finished is kept. Returns how many were running.
   */
  abortBuilds(): number {
    const n = this.controllers.size;
    for (const c of this.controllers)
      c.abort(registryError("UNKNOWN", { status: 503, message: "the server is shutting down; try again" }));
    return n;
  }

  /** Builds running and waiting for a slot (for metrics). */
  get activeBuilds(): { running: number; queued: number } {
    return { running: this.running, queued: this.waiting.length };
  }

  async resolve(
    repo: string,
    reference: string,
    ctx: { method: "GET" | "HEAD"; accept: string[]; signal: AbortSignal },
  ): Promise<StoredManifest | undefined> {
    const ref = parseImageReference(reference);
    // A digest the storage does not have for this repository was never served from it: nothing to build.
    if (ref.kind === "digest") return undefined;
    const request = parseImageName(repo, { metaPackages: this.metaPackages, defaultArch: this.defaultArch });
    try {
      await this.checkArchitecture(request.arch);
    } catch (err) {
      if (await this.isPushed(repo)) return undefined;
      throw err;
    }

    let revision: string;
    try {
      if (ref.kind === "latest") revision = await this.resolver.currentRevision();
      else {
        revision = ref.revision;
        if (!(await this.resolver.servesRevision(revision)))
          throw new RevisionUnavailableError(revision, `is not available from ${this.resolver.description}`);
      }
    } catch (err) {
      if (err instanceof RevisionUnavailableError && (await this.isPushed(repo))) return undefined;
      throw this.registryError(err, repo);
    }

    if (!namesArchitecture(repo) && acceptsIndex(ctx.accept)) {
      const architectures = await this.indexArchitectures(request, revision, repo, ctx.signal);
      if (architectures.length >= 2) return this.index(repo, request, architectures, revision, ctx.signal);
    }
    return this.image(repo, request, revision, ctx.signal);
  }

  /**
   * The architectures an index of `request` lists: those with a name prefix (amd64, arm64) the resolver gives
   * every package for (none when it serves fewer than two).
   */
  private async indexArchitectures(
    request: ImageRequest,
    revision: string,
    repo: string,
    signal: AbortSignal,
  ): Promise<string[]> {
    // Only architectures a name can also ask for by prefix: Nix's implicit extra platforms (i686-linux on
    // x86_64) would otherwise double every build for a platform nobody pulls.
    const all = prefixArchitectures((await this.resolver.architectures()) ?? []);
    if (all.length < 2) return [];
    const complete: string[] = [];
    try {
      for (const arch of all) {
        const missing = await this.resolver.missingPackages(request.packages, { revision, arch, signal });
        if (!missing.length) complete.push(arch);
      }
    } catch (err) {
      throw this.registryError(err, repo, "finding the platforms of");
    }
    return complete;
  }

  /** The index of the images of `request` for each of `architectures` (built as their prefixed names are). */
  private async index(
    repo: string,
    request: ImageRequest,
    architectures: string[],
    revision: string,
    signal: AbortSignal,
  ): Promise<StoredManifest | undefined> {
    const images = await Promise.all(
      architectures.map((arch) => this.image(repo, { ...request, arch }, revision, signal)),
    );
    const children: StoredManifest[] = [];
    for (const image of images) {
      if (!image) return undefined; // a pushed repository's own 404
      children.push(image);
    }
    const { index } = indexOf(
      children.map((m, i) => ({
        manifest: { mediaType: m.mediaType, digest: m.digest, size: m.bytes.length },
        platform: { architecture: architectures[i], os: "linux" },
      })),
    );
    this.emit({
      type: "index",
      key: index.digest.slice(7),
      repo,
      packages: request.packages,
      revision,
      arch: architectures.join(","),
    });
    return { digest: index.digest, mediaType: index.mediaType, bytes: index.bytes, children };
  }

  /** The image of `request` for its one architecture: from the cache, a build already running, or a new build. */
  private async image(
    repo: string,
    request: ImageRequest,
    revision: string,
    signal: AbortSignal,
  ): Promise<StoredManifest | undefined> {
    const key = await this.keyOf(request, revision);
    const id = createHash("sha256").update(key).digest("hex");
    const base = { key: id, repo, packages: request.packages, revision, arch: request.arch };

    let flight = this.flights.get(id);
    if (!flight) {
      const hit = await this.lookup(id);
      if (hit) {
        this.emit({ type: "cache-hit", ...base });
        return hit;
      }
      // Names the set does not have are a 404 now (a typo is the usual one), not a build that waits for a slot
      // to find out, or a 429 when the queue is full; found without building anything.
      const opts: ResolveOptions = { revision, arch: request.arch, signal };
      let missing: string[];
      try {
        missing = await this.resolver.missingPackages(request.packages, opts);
      } catch (err) {
        // An evaluation that fails (the package set's own error): a 500 with its cause, logged as a failed build.
        const e = this.registryError(err, repo, "checking the packages of");
        if (!(err instanceof RevisionUnavailableError))
          this.emit({ type: "build-failed", ...base, seconds: 0, error: e.message });
        throw e;
      }
      if (missing.length) {
        if (await this.isPushed(repo)) return undefined;
        throw await this.unknownPackages(missing, opts);
      }
      flight = this.flights.get(id); // another request may have started it while we looked
    }
    if (flight) {
      this.emit({ type: "coalesced", ...base });
    } else {
      if (this.running >= this.maxConcurrent && this.waiting.length >= this.maxQueued) {
        const message = `too many images are being built (${this.running} building, ${this.waiting.length} queued); try again later`;
        this.emit({ type: "rejected", ...base, error: message });
        throw registryError("TOOMANYREQUESTS", { message, headers: { "Retry-After": "30" } });
      }
      this.emit({ type: "cache-miss", ...base });
      const promise = this.build(id, request, revision, repo);
      flight = { promise };
      this.flights.set(id, flight);
      const done = () => {
        if (this.flights.get(id) === flight) this.flights.delete(id);
      };
      promise.then(done, done);
    }
    try {
      return await waitFor(flight.promise, signal);
    } catch (err) {
      if (err instanceof RegistryError && err.code === "NAME_UNKNOWN" && (await this.isPushed(repo)))
        return undefined;
      throw err;
    }
  }

  recordedUnder(repo: string): string {
    return recordedImageName(repo);
  }

  async tags(repo: string, ctx: { signal: AbortSignal }): Promise<string[] | undefined> {
    try {
      const request = parseImageName(repo, {
        metaPackages: this.metaPackages,
        defaultArch: this.defaultArch,
      });
      await this.checkArchitecture(request.arch);
      const revision = await this.resolver.currentRevision();
      const opts: ResolveOptions = { revision, arch: request.arch, signal: ctx.signal };
      const missing = await this.resolver.missingPackages(request.packages, opts);
      if (missing.length) throw await this.unknownPackages(missing, opts);
      const tags = new Set(["latest", revision]);
      for (const r of (await this.builtRevisions()).get(builtKey(request)) ?? []) {
        if (tags.has(r) || !(await this.resolver.servesRevision(r))) continue;
        const id = createHash("sha256")
          .update(await this.keyOf(request, r))
          .digest("hex");
        if (await this.lookup(id)) tags.add(r);
      }
      return [...tags].sort(compareTags);
    } catch (err) {
      const e = this.registryError(err, repo, "listing the tags of");
      // A pushed repository's own tags are listed whatever this source makes of its name.
      if (e.status < 500 && (await this.isPushed(repo))) return undefined;
      throw e;
    }
  }

  /** 404 NAME_UNKNOWN for an architecture the resolver gives no packages for (Nix cannot build for it). */
  private async checkArchitecture(arch: string): Promise<void> {
    const architectures = await this.resolver.architectures();
    if (!architectures || architectures.includes(arch)) return;
    throw registryError("NAME_UNKNOWN", {
      message: `this server builds no images for ${arch} (it builds for ${architectures.join(", ") || "no architecture"})`,
      detail: { architecture: arch, architectures },
    });
  }

  /**
   * The 404 for packages the set does not have, each with the set's name it is a near miss of, among the names
   * a repository name can spell (meta-packages included).
   */
  private async unknownPackages(packages: string[], opts: ResolveOptions): Promise<RegistryError> {
    let names: string[] | undefined;
    try {
      names = await this.resolver.packageNames(opts);
    } catch {
      // the suggestions are a help, the error stands without them
    }
    const spellable = names && [
      ...names.filter((n) => NAME_COMPONENT_RE.test(n)),
      ...Object.keys(this.metaPackages),
    ];
    // Packages of another architecture only (an --index entry for aarch64-linux alone): say which prefix has them.
    let elsewhere: string | undefined;
    try {
      for (const arch of prefixArchitectures((await this.resolver.architectures()) ?? []))
        if (
          arch !== opts.arch &&
          !(await this.resolver.missingPackages(packages, { ...opts, arch })).length
        ) {
          elsewhere = arch;
          break;
        }
    } catch {
      // a help too
    }
    return this.unknownPackagesError(packages, suggestPackages(packages, spellable), elsewhere);
  }

  private unknownPackagesError(
    packages: string[],
    suggestions: Record<string, string>,
    elsewhere?: string,
  ): RegistryError {
    const sorted = [...new Set(packages)].sort();
    return registryError("NAME_UNKNOWN", {
      message:
        elsewhere === undefined
          ? describeUnknownPackages(sorted, suggestions)
          : `${describeUnknownPackages(sorted)} for this architecture; the set has ${sorted.length === 1 ? "it" : "them"} for ${elsewhere}: ask for ${elsewhere}/NAME`,
      detail: {
        packages: sorted,
        ...(Object.keys(suggestions).length ? { suggestions } : {}),
        source: redactServerPaths(this.resolver.description),
      },
    });
  }

  /** Revisions recorded in the image cache per package list and architecture, for this source's settings. */
  private builtRevisions(): Promise<Map<string, Set<string>>> {
    this.built ??= (async () => {
      const map = new Map<string, Set<string>>();
      let files: string[];
      try {
        files = (await readdir(this.cacheDir)).filter((n) => n.endsWith(".json"));
      } catch {
        return map;
      }
      for (const file of files) {
        try {
          const r = JSON.parse(await readFile(join(this.cacheDir, file), "utf8")) as NixImageRecord;
          if (r.layering !== this.layering || r.maxLayers !== this.maxLayers) continue;
          if (r.compression !== this.compression) continue;
          addBuilt(map, r);
        } catch {
          // a record being written, or not one: the tag it would add is found by its next build
        }
      }
      return map;
    })();
    return this.built;
  }

  /**
   * A repository with pushed content (it has tags: images served from here are recorded by digest only), for
   * which a name that is no package set, or a tag that is no revision, gets the usual 404 from the server.
   */
  private async isPushed(repo: string): Promise<boolean> {
    return (await this.storage.listTags(repo)).length > 0;
  }

  /** The image key: everything that decides the image's bytes. */
  private async keyOf(request: ImageRequest, revision: string): Promise<string> {
    this.encoders ??= encodersIdentity({
      compression: this.compression,
      level: this.opts.compressionLevel,
      gzipEncoder: this.opts.gzipEncoder,
      cacheDir: this.storage.root,
    });
    return JSON.stringify({
      v: 1,
      packages: request.packages,
      revision,
      arch: request.arch,
      layering: this.layering,
      maxLayers: this.maxLayers,
      compression: this.compression,
      compressionLevel: this.opts.compressionLevel ?? null,
      encoders: await this.encoders,
      tar: [TAR_FORMAT_VERSION, this.opts.tarFormat ?? "standard"],
    });
  }

  private recordFile(id: string): string {
    return join(this.cacheDir, `${id}.json`);
  }

  /** A cached image whose manifest blob is still in the blob store. */
  private async lookup(id: string): Promise<StoredManifest | undefined> {
    let entry = this.memory.get(id);
    if (!entry) {
      let record: NixImageRecord;
      try {
        record = JSON.parse(await readFile(this.recordFile(id), "utf8")) as NixImageRecord;
      } catch {
        return undefined;
      }
      if (typeof record !== "object" || record === null || !isDigest(String(record.digest))) return undefined;
      let bytes: Buffer;
      try {
        bytes = await readFile(this.storage.blobs.path(record.digest));
      } catch {
        return undefined; // garbage-collected: build it again
      }
      if (createHash("sha256").update(bytes).digest("hex") !== record.digest.slice(7)) return undefined;
      entry = { record, bytes };
      this.remember(id, entry);
    } else if (!(await this.storage.blobs.has(entry.record.digest))) {
      this.memory.delete(id);
      return undefined;
    }
    return { digest: entry.record.digest, mediaType: entry.record.mediaType, bytes: entry.bytes };
  }

  private remember(id: string, entry: { record: NixImageRecord; bytes: Buffer }): void {
    this.memory.delete(id);
    this.memory.set(id, entry);
    while (this.memory.size > 1000) this.memory.delete(this.memory.keys().next().value!);
  }

  /** Waits for a slot, then builds with the time limit. Waiters are rejected at the limit; the slot is freed. */
  private async build(
    id: string,
    request: ImageRequest,
    revision: string,
    repo: string,
  ): Promise<StoredManifest> {
    if (this.running >= this.maxConcurrent) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.running++;
    const base = { key: id, repo, packages: request.packages, revision, arch: request.arch };
    const started = Date.now();
    const seconds = () => (Date.now() - started) / 1000;
    this.emit({ type: "build-start", ...base });
    const controller = new AbortController();
    this.controllers.add(controller);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const limit = this.buildTimeoutMs / 1000;
        const err = registryError("UNKNOWN", {
          status: 504,
          message: `building the image ${repo} took longer than ${limit} s and was stopped; try again later (finished work is kept)`,
        });
        controller.abort(err);
        reject(err);
      }, this.buildTimeoutMs);
    });
    const work = this.buildImage(id, request, revision, controller.signal);
    work.catch(() => undefined); // after a timeout nobody waits for it
    try {
      const result = await Promise.race([work, timeout]);
      this.emit({ type: "build-done", ...base, seconds: seconds() });
      return result;
    } catch (err) {
      const e = this.registryError(err, repo);
      this.emit({ type: "build-failed", ...base, seconds: seconds(), error: e.message });
      throw e;
    } finally {
      clearTimeout(timer);
      this.controllers.delete(controller);
      this.running--;
      this.waiting.shift()?.();
    }
  }

  private async buildImage(
    id: string,
    request: ImageRequest,
    revision: string,
    signal: AbortSignal,
  ): Promise<StoredManifest> {
    const opts: ResolveOptions = { revision, arch: request.arch, signal };
    let roots: string[];
    try {
      roots = await this.resolver.resolve(request.packages, opts);
    } catch (err) {
      if (err instanceof UnknownPackageError) throw await this.unknownPackages(err.packages, opts);
      throw err;
    }
    signal.throwIfAborted();
    const { store } = this.opts;
    const hasShell = roots.some((r) => {
      try {
        return statSync(join(store.realPath(r), "bin/sh")).isFile();
      } catch {
        return false;
      }
    });
    const spec: ImageSpec = {
      ...emptySpec(),
      arch: request.arch,
      labels: { "dev.nixoci.packages": request.packages.join(" "), "dev.nixoci.revision": revision },
      ...(hasShell ? { cmd: ["/bin/sh"] } : {}),
    };
    const result = await buildImage({
      roots,
      spec,
      store,
      layering: this.layering,
      maxLayers: this.maxLayers,
      compression: this.compression,
      compressionLevel: this.opts.compressionLevel,
      gzipEncoder: this.opts.gzipEncoder,
      tarFormat: this.opts.tarFormat,
      cacheDir: this.storage.root,
      parallelism: this.opts.parallelism,
    });
    await result.cleanup();
    const { manifest } = result.image;
    const record: NixImageRecord = {
      digest: manifest.digest,
      mediaType: manifest.mediaType,
      packages: request.packages,
      revision,
      arch: request.arch,
      layering: this.layering,
      maxLayers: this.maxLayers,
      compression: this.compression,
      paths: roots,
      createdAt: new Date().toISOString(),
    };
    await makeDirs(this.cacheDir);
    await writeFileAtomic(this.recordFile(id), JSON.stringify(record, null, 2) + "\n");
    this.remember(id, { record, bytes: manifest.bytes });
    if (this.built) addBuilt(await this.built, record);
    return { digest: manifest.digest, mediaType: manifest.mediaType, bytes: manifest.bytes };
  }

  /** The registry's answer for a failure while resolving or building `repo` (or `doing` something else to it). */
  private registryError(err: unknown, repo: string, doing = "building the image"): RegistryError {
    if (err instanceof RegistryError) return err;
    if (err instanceof UnknownPackageError) return this.unknownPackagesError(err.packages, {});
    if (err instanceof RevisionUnavailableError)
      return registryError("MANIFEST_UNKNOWN", {
        // The package source's description names the server's file ("nix file /srv/pkgs.nix"): redacted too.
        message: redactServerPaths(oneLine(err.message)),
        detail: { revision: err.revision },
      });
    const message = redactServerPaths(oneLine(err instanceof Error ? err.message : String(err))).slice(
      0,
      1000,
    );
    // Out of space where the image's blobs go: the server's state, said as uploads say it (507).
    if (isStorageFull(err))
      return registryError("UNKNOWN", {
        status: 507,
        message: `the registry's storage is full: ${doing} ${repo} failed: ${message}`,
      });
    return registryError("UNKNOWN", { message: `${doing} ${repo} failed: ${message}` });
  }

  private emit(e: NixImageEvent): void {
    try {
      this.opts.onEvent?.(e);
    } catch {
      // an event listener's failure is not the request's
    }
  }
}

/** The key of builtRevisions: an image's architecture and packages. */
function builtKey(r: { arch: string; packages: readonly string[] }): string {
  return `${r.arch}\0${r.packages.join(" ")}`;
}

function addBuilt(map: Map<string, Set<string>>, r: NixImageRecord): void {
  if (typeof r.revision !== "string" || !Array.isArray(r.packages) || typeof r.arch !== "string") return;
  const key = builtKey(r);
  const set = map.get(key) ?? new Set<string>();
  set.add(r.revision);
  map.set(key, set);
}

/** Whether a client's Accept list takes an index (none, a wildcard, or an index type). */
function acceptsIndex(accept: readonly string[]): boolean {
  return (
    accept.length === 0 ||
    accept.some((t) => t === "*/*" || t === "application/*" || t === OCI_INDEX || t === DOCKER_MANIFEST_LIST)
  );
}

/** The shared promise, or a rejection when this caller's client goes away (the shared work goes on). */
function waitFor<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason ?? new Error("request aborted"));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason ?? new Error("request aborted"));
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener("abort", onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener("abort", onAbort);
        reject(e);
      },
    );
  });
}

/**
 * The cause of a failed build as a client may see it: the server's own file paths (its Nix file, storage, temporary
 * directories) become "<server path>"; store paths stay, they are public by nature (the binary cache serves them).
 */
export function redactServerPaths(message: string): string {
  return message.replace(/(?<![\w.~:/-])\/(?!nix\/store\/)[^\s'"`:,;()]+/g, "<server path>");
}
