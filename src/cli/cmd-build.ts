// nixoci build: Nix closures to layered, reproducible OCI images, written to every output asked for.
import { availableParallelism } from "node:os";
import { buildImage, type BuildResult, type LayerReport } from "../image/build.js";
import { defaultCacheDir, LayerCache } from "../image/layer-cache.js";
import { GZIP_ENCODERS, isGzipEncoderSetting, layerLevelProblem } from "../image/layer-encoder.js";
import { parseOwnerId, parsePermRule } from "../image/permissions.js";
import { emptySpec, readSpecFile, validateSpec, type ImageSpec } from "../image/spec.js";
import type { LayeringStrategy } from "../image/types.js";
import { formatPlatform } from "../image/platforms.js";
import { buildIndex, isIndex, type BuiltTarget } from "../oci/index.js";
import type { OpenedBase } from "../outputs/base-image.js";
import {
  compressionForReaders,
  formatOutputRef,
  holdsReferrers,
  parseOutputRef,
  writeOutput,
  type OutputRef,
} from "../outputs/outputs.js";
import { checkCacheDir, checkOutput, layerCacheError } from "../outputs/preflight.js";
import type { LayerCompression } from "../oci/media-types.js";
import { buildNixAttrs } from "../resolve/installables.js";
import { LocalStore } from "../store/local-store.js";
import type { Store } from "../store/store.js";
import { NixociError, quote } from "../util/errors.js";
import { stdoutCarriesProduct } from "./stdout-product.js";
import { asUsageError, helpHint, intOption, parse, printHelp, UsageError } from "./args.js";
import { BUILD } from "./help-texts.js";
import { BuildProgress } from "./build-progress.js";
import { buildPlatforms } from "./build-platforms.js";
import { isSbomFormat, SBOM_FORMATS, type SbomFormat } from "../image/sbom/formats.js";
import type { BuiltReferrer } from "../oci/referrer.js";
import { packageVersion } from "../util/package-files.js";
import { tarFormatOption } from "./shared-options.js";
import { removeTemporariesOnSignals } from "./interrupt.js";
import { Progress } from "./progress.js";
import { openStore, resolveStorePathArg, trustOptions } from "./stores.js";

const LAYERINGS: LayeringStrategy[] = ["size", "popularity", "nixery"];
const COMPRESSIONS: LayerCompression[] = ["gzip", "zstd", "none"];

/** `--entrypoint`/`--cmd`: a JSON array, or words separated by spaces. */
function commandList(value: string, flag: string): string[] {
  if (value.trim().startsWith("[")) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(value);
    } catch {
      throw new NixociError(flag, `malformed JSON array ${quote(value)}`);
    }
    if (!Array.isArray(parsed) || parsed.some((x) => typeof x !== "string"))
      throw new NixociError(flag, "must be a JSON array of strings");
    return parsed as string[];
  }
  return value.split(/\s+/).filter(Boolean);
}

function keyValues(values: string[] | undefined, flag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values ?? []) {
    const i = v.indexOf("=");
    if (i <= 0) throw new NixociError(flag, `${quote(v)} is not KEY=VALUE`);
    out[v.slice(0, i)] = v.slice(i + 1);
  }
  return out;
}

/** One flag's values checked on their own as the spec field they set: a bad one is a usage error naming the flag. */
function checkFlag(flag: string, fields: Partial<ImageSpec>): void {
  asUsageError(() => validateSpec({ ...emptySpec(), ...fields }, `--${flag}`));
}

export async function buildCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, BUILD);
  if (values.help) return printHelp(BUILD);

  // The spec file first, then flags on top of it.
  const fromFile = values.spec ? readSpecFile(values.spec) : {};
  const spec: ImageSpec = { ...emptySpec(), ...fromFile };
  // A malformed flag value is a usage error (exit 2) naming the flag, checked on its own before it is merged.
  if (values.env) checkFlag("env", { env: values.env });
  if (values.expose) checkFlag("expose", { expose: values.expose });
  if (values.created) checkFlag("created", { created: values.created });
  if (values.arch) checkFlag("arch", { arch: values.arch });
  if (values.tag) checkFlag("tag", { tags: values.tag });
  if (values.user !== undefined) checkFlag("user", { user: values.user });
  asUsageError(() => {
    if (values.entrypoint !== undefined) spec.entrypoint = commandList(values.entrypoint, "--entrypoint");
    if (values.cmd !== undefined) spec.cmd = commandList(values.cmd, "--cmd");
    if (values.env) spec.env = [...spec.env, ...values.env];
    if (values.workdir !== undefined) spec.workdir = values.workdir;
    if (values.user !== undefined) spec.user = values.user;
    if (values.perm) spec.perms = [...(spec.perms ?? []), ...values.perm.map((r) => parsePermRule(r).source)];
    if (values.uid !== undefined) spec.uid = parseOwnerId(values.uid, "uid");
    if (values.gid !== undefined) spec.gid = parseOwnerId(values.gid, "gid");
    if (values.expose) spec.expose = [...spec.expose, ...values.expose];
    if (values.label) spec.labels = { ...spec.labels, ...keyValues(values.label, "--label") };
    if (values.from !== undefined) spec.from = values.from;
    if (values.arch) spec.arch = values.arch;
    if (values.os) spec.os = values.os;
    if (values.created) spec.created = values.created;
    if (values.tag) spec.tags = [...spec.tags, ...values.tag];
    if (values.substituter) spec.substituters = [...spec.substituters, ...values.substituter];
    if (values["trusted-public-key"])
      spec.trustedPublicKeys = [...spec.trustedPublicKeys, ...values["trusted-public-key"]];
  });
  validateSpec(spec, values.spec ?? "build");

  const layering = (values.layering ?? spec.layering ?? "size") as LayeringStrategy;
  if (!LAYERINGS.includes(layering))
    throw new UsageError(`--layering must be one of ${LAYERINGS.join(", ")}`);
  const requested = values.compression ?? spec.compression ?? "gzip";
  if (requested !== "auto" && !COMPRESSIONS.includes(requested as LayerCompression))
    throw new UsageError(`--compression must be one of ${COMPRESSIONS.join(", ")}, auto`);
  const maxLayers = intOption(values["max-layers"], "max-layers", spec.maxLayers ?? 100, 2);
  const gzipEncoder = values["gzip-encoder"] ?? "auto";
  if (!isGzipEncoderSetting(gzipEncoder))
    throw new UsageError(`--gzip-encoder must be one of ${GZIP_ENCODERS.join(", ")}`);
  const tarFormat =
    values["tar-format"] !== undefined
      ? tarFormatOption(values["tar-format"])
      : tarFormatOption(spec.tarFormat, `${values.spec}: tarFormat`);
  const level =
    values["compression-level"] !== undefined
      ? intOption(values["compression-level"], "compression-level", 0, 0)
      : spec.compressionLevel;
  // -o DEST... and a bare "-" (stdout), as given.
  const outputArgs = [...(values.output ?? []), ...positionals.filter((p) => p === "-")];
  const outputs: OutputRef[] = outputArgs.map((o) => parseOutputRef(o));
  // auto: what every reader of the outputs takes (zstd for nix: descriptions only).
  const compression = requested === "auto" ? compressionForReaders(outputs) : (requested as LayerCompression);
  // A level given on the command line for uncompressed layers is a mistake worth naming (a spec's level is not: the
  // command line's --compression none overrides the spec's compression, and its level with it).
  const levelFromSpec = values["compression-level"] === undefined;
  if (compression === "none" && !levelFromSpec)
    throw new UsageError("--compression-level: uncompressed layers (--compression none) take no level");
  // A spec giving both itself is as wrong, and names the spec's keys.
  if (compression === "none" && level !== undefined && values.compression === undefined)
    throw new NixociError(
      `${values.spec}`,
      "compressionLevel: uncompressed layers (compression: none) take no level",
    );
  // An encoder of gzip for layers that are not gzip is a mistake worth naming (auto may choose gzip: accepted).
  if (values["gzip-encoder"] !== undefined && requested !== "auto" && compression !== "gzip")
    throw new UsageError(
      `--gzip-encoder: ${compression === "none" ? "uncompressed" : compression} layers are not gzip`,
    );
  const levelProblem = level === undefined ? undefined : layerLevelProblem(compression, level, gzipEncoder);
  if (levelProblem && levelFromSpec)
    throw new NixociError(`${values.spec}`, `compressionLevel: ${levelProblem}`);
  if (levelProblem) throw new UsageError(`--compression-level: ${levelProblem}`);

  // No destination: like `docker save` refusing a terminal, say what the choices are before any work, rather than
  // build into the layer cache alone and exit 0 with an image nobody can use. --json alone is the explicit way to
  // build into the cache and get the report.
  if (!outputs.length && !values.json)
    throw new UsageError(
      "no output given: add -o DEST (oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG], " +
        "docker://HOST/NAME[:TAG], nix:[NAME], or - for a docker-archive on stdout), or --json to build into the " +
        `layer cache and print the report; ${helpHint(BUILD)}`,
    );
  const toStdout = outputs.filter((o) => o.kind === "docker-archive" && o.file === "-").length;
  // Two archives one after the other on stdout are no archive any reader takes.
  if (toStdout > 1) throw new UsageError("standard output (-o -) is given more than once");
  const twice = outputArgs.find((o, i) => o !== "-" && outputArgs.indexOf(o) !== i);
  if (twice !== undefined) throw new UsageError(`-o ${twice} is given more than once`);
  const stdoutTaken = toStdout > 0;
  if (stdoutTaken && process.stdout.isTTY)
    throw new UsageError(
      "refusing to write a docker-archive to a terminal: redirect stdout (> image.tar, | docker load) or give " +
        "-o docker-archive:FILE",
    );
  if (stdoutTaken) stdoutCarriesProduct();
  const sbomFormats = sbomOption(values.sbom);
  // Refused before any work, like an index for an output that cannot hold one: a build whose SBOM would go
  // nowhere is a mistake, not something to find out afterwards.
  if (sbomFormats.length && !outputs.some(holdsReferrers))
    throw new UsageError(
      `--sbom: only oci:, oci-archive: and docker:// outputs carry referrers${
        outputs.length ? `, not ${outputs.map(formatOutputRef).join(", ")}` : ": add -o DEST"
      }`,
    );
  if (values["no-cache"] && values["cache-dir"] !== undefined)
    throw new UsageError("--no-cache and --cache-dir contradict each other: give one");
  const installables = positionals.filter((p) => p !== "-");
  const platforms = buildPlatforms({
    flags: values.platform ?? [],
    fromFile,
    specInput: values.spec ?? "build",
    installables,
    file: values.file,
    attrs: Boolean(values.attr?.length),
    arch: values.arch,
    os: values.os,
    outputs,
  });

  const trust = trustOptions(spec.trustedPublicKeys, values["no-check-sigs"]);
  const store = new LocalStore(values.store ? { dir: values.store } : {});
  const substituters: Store[] = [];
  const progress = new Progress(values.quiet || (values.json && !process.stderr.isTTY));
  const report = new BuildProgress(progress);
  const cacheDir = values["no-cache"] ? undefined : (values["cache-dir"] ?? defaultCacheDir());
  // Ctrl-C or SIGTERM from here on leaves no half-written layer, archive, layout or store path behind.
  const uninstall = removeTemporariesOnSignals(() => progress.done());
  /** The first package: the image's name when --tag gives none. */
  let firstRoot = "";
  /** --from's base, opened for each platform built (the same index resolves to each platform's image). */
  const bases: OpenedBase[] = [];
  try {
    // Every destination and the layer cache are checked before any work: a registry that is down or an archive
    // directory that does not exist is reported in a second, not after every layer was built.
    for (const o of outputs) await checkOutput(o, { creds: values.creds, insecure: values.insecure, store });
    if (cacheDir) await checkCacheDir(cacheDir);
    // The base is resolved and checked (manifest, config, platform) before any layer is built.
    if (spec.from !== undefined)
      for (const platform of platforms?.map((p) => p.platform) ?? [
        { os: spec.os, architecture: spec.arch, ...(spec.variant ? { variant: spec.variant } : {}) },
      ])
        bases.push(
          // Loaded with --from only: image reading and registry clients are not a plain build's.
          await (
            await import("../outputs/base-image.js")
          ).openBaseImage(spec.from, {
            platform,
            creds: values.creds,
            insecure: values.insecure,
            storeDir: store.storeDir,
          }),
        );
    for (const url of spec.substituters) substituters.push(await openStore(url, trust));
    // One build per platform (a plain build is one with the spec's platform), into the same layer cache.
    const builds = platforms?.map((p) => ({
      ...p,
      roots: p.packages.map((pkg) => resolveStorePathArg(pkg, store)),
    })) ?? [{ platform: undefined, roots: await plainRoots() }];
    firstRoot = builds[0].roots[0];

    // What killed builds left: half-written layers in the cache, and (for nix: outputs) descriptions cut short
    // in the store directory. Only temporaries whose writer is gone go.
    if (cacheDir) await new LayerCache(cacheDir).sweepTemporaries();
    if (outputs.some((o) => o.kind === "nix")) await store.sweepTemporaries();

    const results: BuildResult[] = [];
    try {
      for (const [i, b] of builds.entries()) {
        if (b.platform && builds.length > 1) report.platform(formatPlatform(b.platform));
        const platformSpec = b.platform
          ? { ...spec, os: b.platform.os, arch: b.platform.architecture, variant: b.platform.variant }
          : spec;
        const uniqueRoots = [...new Set(b.roots)];
        results.push(
          await buildImage({
            roots: uniqueRoots,
            spec: platformSpec,
            store,
            substituters,
            layering,
            maxLayers,
            compression,
            compressionLevel: level,
            gzipEncoder,
            tarFormat,
            cacheDir,
            parallelism: intOption(values.jobs, "jobs", availableParallelism()),
            base: bases[i]?.base,
            onEvent: (e) => report.onBuildEvent(e),
          }).catch((err) => {
            // A layer cache that refuses writes or is full: say so, with the flags that avoid it.
            throw layerCacheError(cacheDir, err);
          }),
        );
      }
      // One document per format about each platform's manifest (not the index: the closures differ).
      // (The SBOM writers are loaded only for --sbom.)
      const sbom = sbomFormats.length ? await import("../image/sbom/image-referrers.js") : undefined;
      const referrers = sbom
        ? (
            await Promise.all(
              results.map((r, i) =>
                sbom.imageSbomReferrers(r.image, {
                  formats: sbomFormats,
                  closure: r.closure,
                  roots: [...new Set(builds[i].roots)],
                  toolVersion: packageVersion(),
                  name: spec.tags[0] ?? repositoryName(firstRoot),
                  caches: spec.substituters,
                }),
              ),
            )
          ).flat()
        : [];
      return await writeOutputs(results, referrers);
    } finally {
      for (const r of results) await r.cleanup();
    }
  } finally {
    progress.done();
    for (const b of bases) await b.close();
    store.close();
    substituters.forEach((s) => s.close());
    uninstall();
  }

  async function plainRoots(): Promise<string[]> {
    const roots: string[] = [];
    if (values.file) roots.push(...(await buildNixAttrs(values.file, values.attr ?? [])));
    else if (values.attr?.length) throw new UsageError("-A needs -f FILE.nix");
    for (const p of [...spec.packages, ...installables]) roots.push(resolveStorePathArg(p, store));
    return roots;
  }

  /** Writes every output; prints the digest (the index's, for several platforms) or the report. */
  async function writeOutputs(results: BuildResult[], referrers: BuiltReferrer[]): Promise<number> {
    const multi = results.length > 1;
    const target: BuiltTarget = multi ? buildIndex(results.map((r) => r.image)) : results[0].image;
    // --tag NAME[:TAG] names the image where an output does not: the tag for oci layouts and registries,
    // NAME:TAG for docker-archive's RepoTags (so `docker load` tags it).
    const [defaultName, defaultTag] = splitImageName(spec.tags[0] ?? repositoryName(firstRoot));
    const uploaded = new Set<string>();
    const pushed = outputs.some((o) => o.kind === "docker");
    const outputReports: Record<string, unknown>[] = [];
    const storePaths: string[] = [];
    for (const [i, ref] of outputs.entries()) {
      const label = (values.output ?? [])[i] ?? "-";
      const named =
        ref.kind === "docker-archive" && ref.name === undefined ? { ...ref, name: defaultName } : ref;
      report.writing(label, results, ref.kind === "docker");
      if (referrers.length && !holdsReferrers(ref))
        progress.line(`note: ${label} cannot carry referrers: the SBOM goes to the other outputs only`);
      if (ref.kind === "docker-archive" && compression === "zstd")
        progress.line(`note: ${label} has zstd layers: docker load before Docker 23 cannot read them`);
      const r = await writeOutput(target, named, {
        creds: values.creds,
        insecure: values.insecure,
        defaultTag,
        // Only a name the user gave (--tag, a spec's tags) is recorded in full for importers: without one, ctr's
        // --base-name still names an imported archive.
        defaultName: spec.tags.length ? defaultName : undefined,
        store,
        onEvent: (e) => report.onPushEvent(e),
        referrers,
      });
      r.uploaded?.forEach((d) => uploaded.add(d));
      outputReports.push({ output: label, ...r });
      if (r.storePath) storePaths.push(r.storePath);
      report.wrote(label, r);
    }
    progress.done();
    // The digest reaches stderr when stdout carries the archive: in the summary, or alone under -q.
    const digest = isIndex(target) ? target.index.digest : target.manifest.digest;
    const allLayers = results.flatMap((r) => r.layers);
    progress.line(report.summary(digest, allLayers, pushed ? uploaded : undefined));
    if (stdoutTaken && values.quiet && !values.json) process.stderr.write(`${digest}\n`);
    const imageReport = (result: BuildResult) => ({
      manifestDigest: result.image.manifest.digest,
      configDigest: result.image.config.digest,
      ...(result.base
        ? {
            base: {
              ref: result.base.ref,
              manifestDigest: result.base.manifestDigest,
              layers: result.base.layers.map((d) => ({
                digest: d.digest,
                size: d.size,
                mediaType: d.mediaType,
                fetched: result.base!.fetched.some((f) => f === d.digest),
                uploaded: uploaded.has(d.digest),
              })),
            },
          }
        : {}),
      layers: result.layers.map((l: LayerReport) => ({
        digest: l.digest,
        diffId: l.diffId,
        size: l.size,
        mediaType: l.mediaType,
        paths: l.paths,
        status: l.status,
        uploaded: uploaded.has(l.digest),
      })),
    });
    // Several platforms: the index digest, then each platform's report as a single build gives it.
    const summary = multi
      ? {
          indexDigest: digest,
          platforms: results.map((r) => ({ platform: formatPlatform(r.image.platform), ...imageReport(r) })),
          outputs: outputReports,
        }
      : { ...imageReport(results[0]), outputs: outputReports };
    if (values.json)
      (stdoutTaken ? process.stderr : process.stdout).write(JSON.stringify(summary, null, 2) + "\n");
    else if (!stdoutTaken)
      // The digest, then the store path of each nix: output (what `nixoci k8s pod` and pod specs take).
      process.stdout.write([digest, ...storePaths].join("\n") + "\n");
    return 0;
  }
}

/**
 * `--sbom` values: formats, repeated or separated by commas. Each once, in SBOM_FORMATS' order whatever order they
 * were given in, so the outputs list the referrers the same way for the same set.
 */
function sbomOption(values: readonly string[] | undefined): SbomFormat[] {
  const chosen = new Set<string>();
  for (const name of (values ?? []).flatMap((v) => v.split(",")).map((v) => v.trim())) {
    if (!isSbomFormat(name))
      throw new UsageError(`--sbom: unknown format ${JSON.stringify(name)} (${SBOM_FORMATS.join(", ")})`);
    chosen.add(name);
  }
  return SBOM_FORMATS.filter((f) => chosen.has(f));
}

/** An image name from a store path's name ("hello-2.12" -> "hello-2.12"), lowercased into the registry's alphabet. */
function repositoryName(storePath: string): string {
  const name = storePath
    .slice(storePath.indexOf("-") + 1)
    .toLowerCase()
    .replace(/[^a-z0-9._-]+/g, "-");
  return name.replace(/^[^a-z0-9]+|[^a-z0-9]+$/g, "") || "image";
}

/** "name:tag" -> [name, tag]; a colon inside a registry host's port ("host:5000/name") is not a tag. */
function splitImageName(ref: string): [string, string] {
  const slash = ref.lastIndexOf("/");
  const colon = ref.lastIndexOf(":");
  return colon > slash ? [ref.slice(0, colon), ref.slice(colon + 1)] : [ref, "latest"];
}
