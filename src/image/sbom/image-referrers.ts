// The documents `nixoci build --sbom` attaches to an image it built: one referrer per format, each about the
// image's manifest, rendered from the closure the image was built of. The document time and the referrer's
// creation time are the image's own `created`, so rebuilding the same image gives the same referrers.
import type { BuiltImage } from "../../oci/image.js";
import { buildReferrer, type BuiltReferrer } from "../../oci/referrer.js";
import type { PathInfo } from "../../store/path-info.js";
import { NixociError } from "../../util/errors.js";
import { closureSbomInput, documentTime, type SbomFacts } from "./closure-model.js";
import { renderSbom, type SbomFormat } from "./formats.js";

export interface ImageSbomOptions {
  formats: readonly SbomFormat[];
  /** The closure the image holds and the roots it was built of. */
  closure: ReadonlyMap<string, PathInfo>;
  roots: readonly string[];
  toolVersion: string;
  /** The image's name, as the documents call it (else they name its roots). */
  name?: string;
  caches?: SbomFacts["caches"];
}

export async function imageSbomReferrers(
  image: BuiltImage,
  opts: ImageSbomOptions,
): Promise<BuiltReferrer[]> {
  const created = imageCreated(image);
  const input = closureSbomInput(
    opts.closure,
    { roots: opts.roots, paths: [...opts.closure.keys()] },
    {
      toolVersion: opts.toolVersion,
      created,
      ...(opts.caches?.length ? { caches: opts.caches } : {}),
      image: { ...(opts.name ? { name: opts.name } : {}), manifestDigest: image.manifest.digest },
    },
  );
  const formats = [...new Set(opts.formats)];
  const docs = await Promise.all(formats.map((format) => renderSbom(format, input)));
  return docs.map((doc) => {
    return buildReferrer({
      subject: {
        mediaType: image.manifest.mediaType,
        digest: image.manifest.digest,
        size: image.manifest.size,
      },
      mediaType: doc.mediaType,
      document: doc.text,
      title: doc.fileName,
      created,
    });
  });
}

/** The config's `created`, normalised as the documents write times. */
function imageCreated(image: BuiltImage): string {
  let created: unknown;
  try {
    created = (JSON.parse(image.config.bytes.toString("utf8")) as { created?: unknown }).created;
  } catch {
    created = undefined;
  }
  if (typeof created !== "string")
    throw new NixociError(image.manifest.digest, "the image config has no creation time for its SBOM");
  return documentTime(created);
}
