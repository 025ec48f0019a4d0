// Reading an image back: open an image reference (the grammar of build's outputs, outputs.ts) and give its
// manifest, config and layer descriptors, and each layer blob as a stream on demand. Sources:
//   oci:DIR[:TAG]            an OCI layout; TAG picks index.json entries by org.opencontainers.image.ref.name
//   oci-archive:FILE[:TAG]   a tar of one (indexed once, members then read by offset)
//   docker-archive:FILE[:NAME:TAG]  `docker save`'s format (manifest.json; NAME:TAG picks by RepoTags)
//   docker://HOST/NAME[:TAG|@DIGEST]  a registry (registry-session.ts: auth, plain HTTP on loopback/--insecure)
//   nix:/nix/store/<hash>-NAME  an image description in the store (nix-image.ts)
// An index (multi-platform) resolves to the platform asked for, else the host's. Everything read is untrusted:
// manifests and configs are bounded and verified against their digests, descriptors and store paths validated,
// and layer streams verified as they are read (a stream that does not match its descriptor fails at its end,
// before its consumer can take its result for good). Meant for any reader of images: `nixoci diff`, base images.
// One module per transport in image-source/; what they share (the checks, index resolution, the ImageSource made
// from a manifest) in image-source/source.ts.
import { stat } from "node:fs/promises";
import { formatPlatform, platformMatches } from "../image/platforms.js";
import { DEFAULT_STORE_DIR } from "../nix/store-path.js";
import { NixociError } from "../util/errors.js";
import { parseNixImageRef, NIX_IMAGE_REF_PREFIX } from "./nix-image.js";
import { parseOutputRef } from "./outputs.js";
import { openDockerArchive } from "./image-source/docker-archive.js";
import { archiveFiles, dirFiles, openLayout } from "./image-source/layout.js";
import { openNix } from "./image-source/nix.js";
import { openRegistry } from "./image-source/registry.js";
import { hostPlatform, type ImageSource, type OpenImageOptions } from "./image-source/source.js";

export type { ImageSource, LayerDescriptor, OpenImageOptions } from "./image-source/source.js";

/** Opens an image reference for reading. Errors are NixociErrors naming the reference and what is wrong. */
export async function openImage(ref: string, opts: OpenImageOptions = {}): Promise<ImageSource> {
  const img = await openAny(ref, opts);
  // A platform asked for explicitly must be what the image is, index or not.
  if (opts.platform && !platformMatches(img.platform, opts.platform)) {
    await img.close();
    throw new NixociError(
      ref,
      `the image is ${formatPlatform(img.platform)}, not ${formatPlatform(opts.platform)} (and not an index to choose from)`,
    );
  }
  return img;
}

async function openAny(ref: string, opts: OpenImageOptions): Promise<ImageSource> {
  const storeDir = opts.storeDir ?? DEFAULT_STORE_DIR;
  const o = { ...opts, storeDir, platform: opts.platform ?? hostPlatform() };
  if (ref === "")
    throw new NixociError(
      "image reference",
      "empty (expected oci:, oci-archive:, docker-archive:, docker:// or nix:)",
    );
  try {
    if (ref.startsWith("nix:")) {
      const body = ref.slice(4);
      const path = body.startsWith("/")
        ? body
        : body.startsWith(`${NIX_IMAGE_REF_PREFIX.slice(4)}/`)
          ? body.slice(1)
          : undefined;
      if (path === undefined)
        throw new NixociError(
          ref,
          "a nix: image to read is its description's store path (nix:/nix/store/<hash>-NAME)",
        );
      return await openNix(ref, parseNixImageRef(`${NIX_IMAGE_REF_PREFIX}${path}`, storeDir), storeDir);
    }
    if (ref === "-")
      throw new NixociError(ref, "images are not read from standard input; give docker-archive:FILE");
    const r = parseOutputRef(ref);
    switch (r.kind) {
      case "oci": {
        const st = await stat(r.dir).catch(() => undefined);
        if (!st) throw new Error("no such directory");
        if (!st.isDirectory()) throw new Error("not a directory (an oci-archive? write oci-archive:FILE)");
        return await openLayout(ref, dirFiles(r.dir), r.tag, o);
      }
      case "oci-archive":
        return await openLayout(ref, await archiveFiles(r.file, ref), r.tag, o);
      case "docker-archive":
        if (r.file === "-")
          throw new NixociError(ref, "images are not read from standard input; give docker-archive:FILE");
        return await openDockerArchive(
          ref,
          r.file,
          r.name !== undefined ? `${r.name}:${r.tag ?? "latest"}` : undefined,
          o,
        );
      case "docker":
        return await openRegistry(ref, r, o);
      case "nix":
        throw new NixociError(
          ref,
          "a nix: image to read is its description's store path (nix:/nix/store/<hash>-NAME)",
        );
    }
  } catch (err) {
    if (err instanceof NixociError) {
      if (err.input === ref) throw err;
      // The registry client names HOST/REPO, which the reference already says.
      const problem = ref.includes(err.input) ? err.message.slice(err.input.length + 2) : err.message;
      throw new NixociError(ref, problem, { cause: err });
    }
    throw new NixociError(ref, (err as Error).message, { cause: err });
  }
}
