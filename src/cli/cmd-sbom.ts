// nixoci sbom [--format cyclonedx|spdx|provenance] [-o FILE] [--created TIME] [--store URL] [trust flags] PATH...|IMAGE
// The closure's path infos from the store (the same stores `nixoci closure` reads), rendered as one document. An
// image's store paths come from its layers (annotations, else a scan: image-store-paths.ts), its roots from
// nixoci's closure-root annotations (else the paths nothing else in the image refers to).
import { NIX_CLOSURE_ROOT_ANNOTATION, storePathsFromAnnotations } from "../image/annotations.js";
import { parsePlatform } from "../image/platforms.js";
import { openImage, type ImageSource } from "../outputs/image-source.js";
import { imageStorePaths, layerPathsOf } from "../outputs/image-store-paths.js";
import { isSbomFormat, renderSbom, SBOM_FORMATS } from "../image/sbom/formats.js";
import { closureSbomInput, documentTime } from "../image/sbom/closure-model.js";
import { BinaryCacheStore } from "../store/binary-cache.js";
import { computeClosure } from "../store/closure.js";
import { NixociError } from "../util/errors.js";
import { writeFileAtomic } from "../util/fs.js";
import { needPositionals, parse, printHelp, UsageError } from "./args.js";
import { SBOM } from "./help-texts.js";
import { packageVersion } from "../util/package-files.js";
import { openStore, resolveStorePathArg, trustOptions } from "./stores.js";

export async function sbomCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, SBOM);
  if (values.help) return printHelp(SBOM);
  needPositionals(positionals, 1, SBOM);
  const format = values.format ?? "cyclonedx";
  if (!isSbomFormat(format))
    throw new UsageError(`--format: unknown format ${JSON.stringify(format)} (${SBOM_FORMATS.join(", ")})`);
  const imageRef = positionals.find(isImageRef);
  if (imageRef !== undefined && positionals.length > 1)
    throw new UsageError(
      `give one image, or store paths, not both (${JSON.stringify(imageRef)} is an image)`,
    );
  if (
    imageRef === undefined &&
    (values.platform !== undefined || values.creds !== undefined || values.insecure)
  )
    throw new UsageError("--platform, --creds and --insecure are for an IMAGE argument");
  let platform;
  try {
    platform = values.platform !== undefined ? parsePlatform(values.platform, "--platform") : undefined;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const store = await openStore(
    values.store,
    trustOptions(values["trusted-public-key"], values["no-check-sigs"]),
  );
  let text: string;
  let image: ImageSource | undefined;
  try {
    let roots: string[];
    let paths: string[];
    if (imageRef !== undefined) {
      image = await openImage(imageRef, {
        platform,
        insecure: values.insecure,
        creds: values.creds,
        storeDir: store.storeDir,
      });
      paths = imageStorePaths(await layerPathsOf(image, store.storeDir));
      if (!paths.length) throw new NixociError(imageRef, "holds no store paths");
      const annotated = image.layers.find((l) => l.storePaths.length)?.descriptor.annotations;
      roots = annotated ? storePathsFromAnnotations(annotated, NIX_CLOSURE_ROOT_ANNOTATION) : [];
    } else {
      roots = [...new Set(positionals.map((p) => resolveStorePathArg(p, store)))];
      paths = roots;
    }
    const closure = await computeClosure(store, paths);
    text = (
      await renderSbom(
        format,
        closureSbomInput(
          closure,
          { roots, paths },
          {
            toolVersion: packageVersion(),
            created: createdOption(values.created, imageCreated(image)),
            caches: store instanceof BinaryCacheStore ? [store.url] : [],
            ...(image ? { image: { name: imageRef, manifestDigest: image.manifest.digest } } : {}),
          },
        ),
      )
    ).text;
  } finally {
    store.close();
    await image?.close();
  }
  // Nothing is written until the whole document exists; a file appears complete or not at all.
  if (values.output === undefined || values.output === "-") process.stdout.write(text);
  else await writeFileAtomic(values.output, text);
  return 0;
}

/** An image reference (the transports `nixoci diff` and build's outputs name), not a store path or a link to one. */
function isImageRef(arg: string): boolean {
  return /^(oci|oci-archive|docker-archive|nix):|^docker:\/\//.test(arg);
}

/** The image config's `created`, the default time of its document. */
function imageCreated(image: ImageSource | undefined): string | undefined {
  const created = image?.config.json.created;
  return typeof created === "string" ? created : undefined;
}

/**
 * --created, else SOURCE_DATE_EPOCH (the reproducible-builds convention), else the image's creation time, else
 * now; checked and normalised.
 */
function createdOption(flag: string | undefined, imageTime?: string): string {
  if (flag !== undefined) {
    try {
      return documentTime(flag);
    } catch {
      throw new UsageError(`--created: ${JSON.stringify(flag)} is not an RFC 3339 time`);
    }
  }
  const epoch = process.env.SOURCE_DATE_EPOCH;
  if (epoch !== undefined && epoch !== "") {
    if (!/^\d+$/.test(epoch))
      throw new NixociError("SOURCE_DATE_EPOCH", `${JSON.stringify(epoch)} is not a number of seconds`);
    const time = new Date(Number(epoch) * 1000);
    if (Number.isNaN(time.getTime()))
      throw new NixociError("SOURCE_DATE_EPOCH", `${epoch} seconds is beyond the dates a time can hold`);
    return documentTime(time.toISOString());
  }
  return documentTime(imageTime ?? new Date().toISOString());
}
