// nixoci serve: the on-demand registry. A thin adapter: the distribution API over filesystem storage, Nix
// package names resolved and built by the same pipeline as `nixoci build` (layers land in the registry's own
// blob store), the local store served as a Nix binary cache, and health, metrics, logs and a help page.
import { readdirSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { GZIP_ENCODERS, isGzipEncoderSetting, layerLevelProblem } from "../image/layer-encoder.js";
import type { LayeringStrategy } from "../image/types.js";
import type { LayerCompression } from "../oci/media-types.js";
import { parseAuthSpec } from "../servers/registry/auth.js";
import { binaryCacheRoutes } from "../servers/registry/binary-cache-endpoint.js";
import { NarFileCache } from "../servers/registry/nar-file-cache.js";
import { createLogger } from "../util/logger.js";
import { registryMetrics } from "../servers/registry/metrics.js";
import { NixImageSource, type NixImageEvent, type NixImageRecord } from "../servers/registry/nix-images.js";
import { opsRoutes, requestObserver, type RecentImage } from "../servers/registry/ops.js";
import { TrustedProxies } from "../servers/registry/client-address.js";
import { createRegistryServer } from "../servers/registry/server.js";
import { RegistryStorage } from "../servers/registry/storage.js";
import { createResolver } from "../resolve/create-resolver.js";
import { describeUnknownPackages } from "../resolve/resolver.js";
import { prefixArchitectures } from "../servers/registry/image-names.js";
import { settleMetaPackages } from "../servers/registry/meta-packages.js";
import { LocalStore } from "../store/local-store.js";
import type { Store } from "../store/store.js";
import { NixociError } from "../util/errors.js";
import { errnoWords } from "../util/fs-errors.js";
import { proveWritableDir } from "../util/fs.js";
import { didYouMean, intOption, parse, printHelp, UsageError } from "./args.js";
import { ARCHITECTURES, defaultArch } from "../image/spec.js";
import { NAME_COMPONENT_RE } from "../oci/reference.js";
import { packageVersion } from "../util/package-files.js";
import { logFormatOption, logLevelOption, tarFormatOption } from "./shared-options.js";
import { SERVE } from "./help-texts.js";
import { serveBanner } from "./serve-banner.js";
import { openStore, readSecretKeyFile, trustOptions } from "./stores.js";

/** `dir` can be created and written (else one line naming it and the flag). */
async function checkWritableDir(dir: string, flag: string): Promise<void> {
  try {
    await proveWritableDir(dir);
  } catch (err) {
    throw new NixociError(dir, `${flag}: cannot write here (${errnoWords(err)}); give a writable directory`);
  }
}

/** The state directory: $XDG_STATE_HOME/nixoci, or ~/.local/state/nixoci. */
function defaultStorage(): string {
  return join(process.env.XDG_STATE_HOME || join(homedir(), ".local", "state"), "nixoci", "registry");
}

function parseListen(s: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(s) ?? /^()()(\d+)$/.exec(s);
  if (!m || Number(m[3]) > 65535)
    throw new UsageError(`--listen must be ADDR:PORT or PORT, got ${JSON.stringify(s)}`);
  return { host: m[1] || m[2] || "127.0.0.1", port: Number(m[3]) };
}

function parseMeta(values: string[] | undefined): Record<string, string[]> | undefined {
  if (!values?.length) return undefined;
  const meta: Record<string, string[]> = {};
  for (const v of values) {
    const i = v.indexOf("=");
    if (i <= 0) throw new UsageError(`--meta must be NAME=PKG,PKG..., got ${JSON.stringify(v)}`);
    meta[v.slice(0, i)] = v
      .slice(i + 1)
      .split(",")
      .filter(Boolean);
  }
  return meta;
}

/** Images the server has built, from its manifest cache, newest first (for the page at /). */
function recordedImages(root: string): RecentImage[] {
  const dir = join(root, "nix-images");
  const out: RecentImage[] = [];
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith(".json"));
  } catch {
    return out;
  }
  for (const n of names) {
    try {
      const r = JSON.parse(readFileSync(join(dir, n), "utf8")) as NixImageRecord;
      out.push({
        name: r.packages.join("/"),
        tag: r.revision,
        digest: r.digest,
        builtAt: r.createdAt,
        packages: r.paths,
      });
    } catch {
      /* a record being written or corrupt: not worth listing */
    }
  }
  return out.sort((a, b) => (a.builtAt < b.builtAt ? 1 : -1));
}

export async function serveCommand(argv: string[]): Promise<number> {
  const { values } = parse(argv, SERVE);
  if (values.help) return printHelp(SERVE);
  const { host, port } = parseListen(values.listen ?? "127.0.0.1:5000");
  const level = logLevelOption(values["log-level"]);
  const logger = createLogger({ level, format: logFormatOption(values["log-format"]) });
  const layering = values.layering as LayeringStrategy | undefined;
  if (layering && !["size", "popularity", "nixery"].includes(layering))
    throw new UsageError("--layering must be size, popularity or nixery");
  const compression = values.compression as LayerCompression | undefined;
  if (compression && !["gzip", "zstd", "none"].includes(compression))
    throw new UsageError("--compression must be gzip, zstd or none");
  if (values.arch !== undefined && !ARCHITECTURES.includes(values.arch)) {
    const guess = didYouMean(values.arch, ARCHITECTURES);
    throw new UsageError(
      `--arch ${JSON.stringify(values.arch)} is not one of ${ARCHITECTURES.join(", ")}${guess ? ` (did you mean ${guess}?)` : ""}`,
    );
  }
  const gzipEncoder = values["gzip-encoder"] ?? "auto";
  if (!isGzipEncoderSetting(gzipEncoder))
    throw new UsageError(`--gzip-encoder must be one of ${GZIP_ENCODERS.join(", ")}`);
  // Every number checked before the storage is touched or anything listens: a level the layers cannot be made
  // with would otherwise fail every pull with a 500.
  const compressionLevel = values["compression-level"]
    ? intOption(values["compression-level"], "compression-level", 0, 0)
    : undefined;
  if (compressionLevel !== undefined) {
    const problem =
      compression === "none"
        ? "uncompressed layers (--compression none) take no level"
        : layerLevelProblem(compression ?? "gzip", compressionLevel, gzipEncoder);
    if (problem) throw new UsageError(`--compression-level: ${problem}`);
  }
  const maxLayers = values["max-layers"] ? intOption(values["max-layers"], "max-layers", 100, 2) : undefined;
  const buildTimeoutMs = values["build-timeout"]
    ? intOption(values["build-timeout"], "build-timeout", 600) * 1000
    : undefined;
  const maxConcurrentBuilds = values["max-builds"]
    ? intOption(values["max-builds"], "max-builds", 2)
    : undefined;
  const maxQueuedBuilds = values["max-queue"]
    ? intOption(values["max-queue"], "max-queue", 32, 0)
    : undefined;
  // Read before the storage is made: a missing or malformed password file is refused first.
  const auth = values.auth
    ? parseAuthSpec(values.auth, { requirePull: Boolean(values["auth-pull"]) })
    : undefined;
  const sources = (["nix-file", "nixpkgs", "flake", "index"] as const).filter((k) => values[k] !== undefined);
  if (sources.length > 1)
    throw new UsageError(
      `give one package source: ${sources.map((k) => `--${k}`).join(" and ")} were both given`,
    );
  const tarFormat = tarFormatOption(values["tar-format"]);
  const cacheCompression = (values["cache-compression"] ?? "zstd") as "zstd" | "xz" | "none";
  if (!["zstd", "xz", "none"].includes(cacheCompression))
    throw new UsageError("--cache-compression must be zstd, xz or none");
  const signKey = values["sign-key"] ? readSecretKeyFile(values["sign-key"]) : undefined;
  // --auth-pull alone would leave everything open while looking closed.
  if (values["auth-pull"] && !values.auth) throw new UsageError("--auth-pull needs --auth");
  let trustedProxies: TrustedProxies;
  try {
    trustedProxies = new TrustedProxies(values["trusted-proxy"] ?? []);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }

  const storageDir = values.storage ?? defaultStorage();
  await checkWritableDir(storageDir, "--storage");
  const storage = new RegistryStorage(storageDir, {
    uploadTtlMs: values["upload-ttl"]
      ? intOption(values["upload-ttl"], "upload-ttl", 3600) * 1000
      : undefined,
  });
  const store = new LocalStore(values.store ? { dir: values.store } : {});
  const swept = await store.sweepTemporaries();
  if (swept.length)
    logger.info("removed abandoned store temporaries", { store: store.realDir, removed: swept });
  const trust = trustOptions(values["trusted-public-key"], values["no-check-sigs"]);
  const substituters: Store[] = [];
  for (const url of values.substituter ?? []) substituters.push(await openStore(url, trust));
  const resolver = await createResolver({
    nixFile: values["nix-file"],
    nixpkgs: values.nixpkgs,
    flake: values.flake,
    indexFile: values.index,
    store,
    substituters,
  });
  // Fail now, not at the first pull, on a package source that cannot be read (a missing --nix-file or --index, a
  // nixpkgs path that is no checkout): its current revision is what every `latest` needs first.
  const revision = await resolver.currentRevision();
  // An --arch the package set has nothing for would fail every pull; so would a --meta naming packages it lacks.
  const arch = values.arch ?? defaultArch();
  const architectures = await resolver.architectures();
  if (architectures && !architectures.includes(arch)) {
    const problem = `${resolver.description} gives no packages for ${arch} here (only for ${architectures.join(", ") || "no architecture"})`;
    if (values.arch !== undefined)
      throw new UsageError(
        `--arch ${arch}: ${problem}; give one of those (Nix builds for its system, extra-platforms and builders)`,
      );
    logger.warn("no packages for this machine's architecture: give --arch", { problem });
  }
  const resolverGiven = Boolean(values["nix-file"] ?? values.nixpkgs ?? values.flake ?? values.index);
  const settled = await settleMetaPackages(resolver, { user: parseMeta(values.meta), revision, arch });
  const bad = settled.unknown[0];
  if (bad)
    throw new UsageError(
      `--meta ${bad.name}=${bad.packages.join(",")}: ${describeUnknownPackages(bad.missing, bad.suggestions)} in ${resolver.description}; give --meta ${bad.name}=PKG,... with packages it has`,
    );
  const example = await exampleImage(resolver, settled.metaPackages, { revision, arch });
  // Leftovers of killed builds and pushes (temporaries, idle upload sessions): removed now and then regularly.
  storage.startMaintenance((r) => (r.error ? logger.warn : logger.info)("storage upkeep", { ...r }));

  const metrics = registryMetrics();
  const onImageEvent = (e: NixImageEvent) => {
    if (e.type === "cache-hit") metrics.imageCache.inc({ result: "hit" });
    if (e.type === "cache-miss") metrics.imageCache.inc({ result: "miss" });
    if (e.type === "coalesced") metrics.imageCache.inc({ result: "coalesced" });
    if (e.type === "build-start") metrics.buildsInProgress.inc();
    if (e.type === "build-done" || e.type === "build-failed") {
      metrics.buildsInProgress.dec();
      metrics.imageBuilds.inc({ result: e.type === "build-done" ? "success" : "failure" });
      if (e.seconds !== undefined) metrics.imageBuildDuration.observe({}, e.seconds);
    }
    const fields = {
      key: e.key.slice(0, 16),
      repo: e.repo,
      packages: e.packages,
      revision: e.revision,
      arch: e.arch,
      seconds: e.seconds,
      error: e.error,
    };
    if (e.type === "build-failed" || e.type === "rejected") logger.warn(e.type, fields);
    else logger.info(e.type, fields);
  };
  const source = new NixImageSource({
    storage,
    resolver,
    store,
    metaPackages: settled.metaPackages,
    defaultArch: arch,
    layering,
    maxLayers,
    compression,
    compressionLevel,
    gzipEncoder,
    tarFormat,
    buildTimeoutMs,
    maxConcurrentBuilds,
    maxQueuedBuilds,
    onEvent: onImageEvent,
  });

  const routes = [];
  if (!values["no-binary-cache"]) {
    routes.push(
      binaryCacheRoutes({
        store,
        signKey,
        compression: cacheCompression,
        narCache: new NarFileCache(
          join(storageDir, "nar-cache"),
          intOption(values["nar-cache-mib"], "nar-cache-mib", 2048, 0) * 1024 * 1024,
        ),
        maxNarStreams: values["max-nar-streams"]
          ? intOption(values["max-nar-streams"], "max-nar-streams", 4)
          : undefined,
        onServed: (bytes) => metrics.binaryCacheBytes.inc({}, bytes),
        onError: (err, path) => logger.error("binary cache error", { path, error: (err as Error).message }),
      }),
    );
  }
  routes.push(
    opsRoutes({
      metrics,
      health: () => ({ ok: true, details: { builds: source.activeBuilds } }),
      recentImages: () => recordedImages(storageDir),
      host: values["public-host"],
      publicKey: signKey?.publicKey.toString(),
      binaryCache: !values["no-binary-cache"],
      credentials: Boolean(values["auth-pull"]),
      naming: {
        metaPackages: settled.metaPackages,
        prefixArchitectures: architectures ? prefixArchitectures(architectures) : [],
        defaultArch: arch,
        example,
      },
    }),
  );
  const server = createRegistryServer({
    storage,
    manifestSource: source,
    auth,
    routes,
    onRequest: requestObserver({ metrics, logger }),
    trustedProxies,
  });

  await new Promise<void>((resolve, reject) => {
    server.once("error", (err) =>
      reject(new NixociError(values.listen!, `cannot listen: ${(err as Error).message}`)),
    );
    server.listen(port, host, () => resolve());
  });
  const addr = server.address();
  const bound =
    typeof addr === "object" && addr
      ? `${addr.address.includes(":") ? `[${addr.address}]` : addr.address}:${addr.port}`
      : `${host}:${port}`;
  // A person at a terminal gets the banner; the "listening" record is written in any case (it is the log's).
  if (process.stderr.isTTY) {
    const wildcard = typeof addr === "object" && addr !== null && ["0.0.0.0", "::"].includes(addr.address);
    process.stderr.write(
      serveBanner({
        version: packageVersion(),
        address: bound,
        host: values["public-host"] ?? (wildcard ? `127.0.0.1:${port}` : bound),
        resolver: resolver.description,
        revision,
        storage: storageDir,
        store: store.realDir,
        binaryCache: !values["no-binary-cache"],
        publicKey: signKey?.publicKey.toString(),
        auth: values.auth ? (values["auth-pull"] ? "all" : "push") : undefined,
        example,
      }),
    );
  }
  logger.info("listening", {
    address: bound,
    storage: storageDir,
    resolver: resolver.description,
    binaryCache: !values["no-binary-cache"],
  });
  // The built-in meta-packages as the set allows (meta-packages.ts), after the banner so a terminal shows them
  // under it. With no package source names are store paths, and a meta-package has nothing to stand for.
  for (const f of settled.fallbacks)
    logger.info(`meta-package ${f.name} falls back to packages the set has`, {
      packages: f.packages,
      lacking: f.missing,
    });
  if (resolverGiven)
    for (const off of settled.off)
      logger.warn(`meta-package ${off.name} is off: the set has none of its packages`, {
        lacking: off.missing,
        fix: `--meta ${off.name}=PKG,...`,
      });

  // Graceful shutdown: stop accepting, let requests in flight (and the builds they wait for) finish for a
  // while, then exit. Blobs are only ever renamed into place complete, so an abandoned build leaves nothing
  // half-written visible.
  return await new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        logger.warn("second signal: exiting now", { signal });
        process.exit(1);
      }
      stopping = true;
      logger.info("shutting down", { signal, builds: source.activeBuilds });
      const grace = setTimeout(() => {
        logger.warn("grace period over: abandoning requests in flight", {
          builds: source.abortBuilds(), // their nix processes killed: nothing of the server outlives it
        });
        server.closeAllConnections();
      }, 30_000);
      grace.unref();
      server.close(() => {
        clearTimeout(grace);
        // Builds nobody waits for any more (their clients went away) stop too.
        const orphans = source.abortBuilds();
        if (orphans) logger.info("builds stopped", { builds: orphans });
        store.close();
        logger.info("stopped", {});
        resolve(0);
      });
      server.closeIdleConnections();
    };
    process.once("SIGINT", () => stop("SIGINT"));
    process.once("SIGTERM", () => stop("SIGTERM"));
  });
}

/**
 * The image the banner and the page suggest trying, one the set really makes: `shell/hello` where it can, else the
 * shell or hello alone, else the set's first package a name can spell; undefined when names are store paths.
 */
async function exampleImage(
  resolver: { packageNames(opts: { revision: string; arch: string }): Promise<string[] | undefined> },
  meta: Readonly<Record<string, readonly string[]>>,
  opts: { revision: string; arch: string },
): Promise<string | undefined> {
  const names = await resolver.packageNames(opts).catch(() => undefined);
  if (!names) return undefined;
  const shell = Object.hasOwn(meta, "shell");
  const hello = names.includes("hello");
  if (shell) return hello ? "shell/hello" : "shell";
  if (hello) return "hello";
  return [...names].sort().find((n) => NAME_COMPONENT_RE.test(n));
}
