// Output references in skopeo's transport syntax, and writing an image to one:
//   oci:DIR[:TAG]                 an OCI image layout directory (created, or added to)
//   oci-archive:FILE[:TAG]        a tar of an OCI image layout
//   docker-archive:FILE[:NAME[:TAG]]  what `docker load` reads; FILE "-" is standard output; NAME may start with
//                                 a registry host (with a port): the tag is what follows the last ':' after the
//                                 last '/', as in Docker references
//   -                             docker-archive on standard output
//   docker://HOST/NAME[:TAG|@DIGEST]  a registry push (HOST is required: no implicit Docker Hub)
//   nix:[NAME]                    an image description in the local Nix store (oci/nix-image.ts), named NAME
//                                 (default nixoci-image); pods use it as nix:0/nix/store/<hash>-NAME
// Repository names and tags are checked with the OCI distribution grammar.
// Output writers are imported when an output of their kind is written: registry pushes and archives load
// modules (HTTP clients, tar writers) a build to an OCI layout never needs (issue 17: fixed costs).
import { NixociError, quote } from "../util/errors.js";
import { errnoWords, FileSystemError, isInside, PERMISSION } from "../util/fs-errors.js";
import { ownerName } from "../util/fs.js";
import { isDigest } from "../oci/digest.js";
import { isIndex, type BuiltTarget } from "../oci/index.js";
import { writeOciLayout } from "./layout.js";
import { checkNixImageName, nixImageRef, storeNotWritable, writeNixImage } from "./nix-image.js";
import type { LocalStore } from "../store/local-store.js";
import { MAX_NAME_LENGTH, NAME_RE, normalizeImageRef, TAG_RE } from "../oci/reference.js";
import type { PushEvent } from "./push.js";
import { referrerDescriptor, type BuiltReferrer } from "../oci/referrer.js";

export type { PushEvent } from "./push.js";

export type OutputRef =
  | { kind: "oci"; dir: string; tag?: string }
  | { kind: "oci-archive"; file: string; tag?: string }
  | { kind: "docker-archive"; file: string; name?: string; tag?: string } // "-" file = stdout
  | { kind: "docker"; registry: string; repository: string; tag?: string; digest?: string }
  | { kind: "nix"; name?: string };

/** A registry host as Docker references allow it: DNS name or IPv4, or [IPv6], with an optional port. */
const DOMAIN_RE =
  /^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$/;

const TRANSPORTS = "oci:, oci-archive:, docker-archive:, docker://, nix: or -";

/** True when the first path component of a reference is a registry host (Docker's rule). */
function looksLikeHost(component: string): boolean {
  return (
    component.includes(".") ||
    component.includes(":") ||
    component === "localhost" ||
    component.toLowerCase() !== component ||
    component.startsWith("[")
  );
}

function checkTag(ref: string, tag: string): string {
  if (tag === "") throw new NixociError(ref, "empty tag");
  if (!TAG_RE.test(tag))
    throw new NixociError(ref, `invalid tag ${quote(tag)} (allowed: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127})`);
  return tag;
}

function checkRepository(ref: string, repo: string): void {
  if (repo === "") throw new NixociError(ref, "empty repository name");
  if (!NAME_RE.test(repo)) {
    const hint = repo.toLowerCase() !== repo ? " (repository names must be lowercase)" : "";
    throw new NixociError(
      ref,
      `invalid repository name ${quote(repo)}${hint}: components of [a-z0-9] separated by '.', '_', '__' or '-'`,
    );
  }
}

/**
 * Splits a Docker reference NAME[:TAG][@DIGEST] into host (if the first component is one), repository path,
 * tag and digest, validating each.
 */
function parseDockerReference(
  ref: string,
  s: string,
): { host?: string; repository: string; tag?: string; digest?: string } {
  let rest = s;
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!isDigest(digest))
      throw new NixociError(ref, `invalid digest ${quote(digest)} (expected sha256:<64 hex>)`);
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(":");
  if (colon > rest.lastIndexOf("/")) {
    tag = checkTag(ref, rest.slice(colon + 1));
    rest = rest.slice(0, colon);
  }
  if (rest === "") throw new NixociError(ref, "empty image name");
  let host: string | undefined;
  const slash = rest.indexOf("/");
  if (slash >= 0 && looksLikeHost(rest.slice(0, slash))) {
    host = rest.slice(0, slash);
    rest = rest.slice(slash + 1);
    if (!DOMAIN_RE.test(host)) throw new NixociError(ref, `invalid registry host ${quote(host)}`);
    const port = /:(\d+)$/.exec(host)?.[1];
    if (port !== undefined && (Number(port) < 1 || Number(port) > 65535))
      throw new NixociError(ref, `registry port ${port} is out of range (1..65535)`);
  }
  checkRepository(ref, rest);
  if ((host ? host.length + 1 : 0) + rest.length > MAX_NAME_LENGTH)
    throw new NixociError(ref, `image name longer than ${MAX_NAME_LENGTH} characters`);
  return { host, repository: rest, tag, digest };
}

/**
 * `--compression auto`: the layer compression every reader of these outputs takes. zstd when every output is a
 * `nix:` description (read by nixoci's CRI image service and snapshotter through containerd, which reads zstd
 * since 1.5; nixoci's node setup needs 1.6); gzip otherwise: `docker load` of Docker 20.10 and umoci 0.4.7 read
 * no zstd, and a registry's or a layout's readers are not known.
 */
export function compressionForReaders(outputs: readonly OutputRef[]): "gzip" | "zstd" {
  return outputs.length > 0 && outputs.every((o) => o.kind === "nix") ? "zstd" : "gzip";
}

/** PATH[:TAG] for oci: and oci-archive: (the path ends at the first ':', as in skopeo). */
function splitPathTag(ref: string, body: string): { path: string; tag?: string } {
  const i = body.indexOf(":");
  const path = i < 0 ? body : body.slice(0, i);
  if (path === "") throw new NixociError(ref, "empty path");
  if (i < 0) return { path };
  return { path, tag: checkTag(ref, body.slice(i + 1)) };
}

export function parseOutputRef(s: string): OutputRef {
  if (s === "") throw new NixociError("output reference", `empty (expected ${TRANSPORTS})`);
  if (s === "-") return { kind: "docker-archive", file: "-" };
  // eslint-disable-next-line no-control-regex -- rejecting control characters is the point
  if (/[\x00-\x1f\x7f]/.test(s))
    throw new NixociError(quote(s), "control characters in the output reference");
  const colon = s.indexOf(":");
  if (colon < 0) throw new NixociError(s, `no transport (expected ${TRANSPORTS})`);
  const transport = s.slice(0, colon);
  const body = s.slice(colon + 1);
  switch (transport) {
    case "oci": {
      const { path, tag } = splitPathTag(s, body);
      return tag === undefined ? { kind: "oci", dir: path } : { kind: "oci", dir: path, tag };
    }
    case "oci-archive": {
      const { path, tag } = splitPathTag(s, body);
      return tag === undefined
        ? { kind: "oci-archive", file: path }
        : { kind: "oci-archive", file: path, tag };
    }
    case "docker-archive": {
      const i = body.indexOf(":");
      const file = i < 0 ? body : body.slice(0, i);
      if (file === "") throw new NixociError(s, "empty path");
      if (i < 0) return { kind: "docker-archive", file };
      const named = body.slice(i + 1);
      if (named === "") throw new NixociError(s, "empty image name after the path");
      if (named.startsWith("@"))
        throw new NixociError(
          s,
          "an @INDEX selects an image when reading an archive; an output needs NAME[:TAG]",
        );
      const r = parseDockerReference(s, named);
      if (r.digest) throw new NixociError(s, "a docker-archive name cannot have a digest; use NAME:TAG");
      const name = r.host ? `${r.host}/${r.repository}` : r.repository;
      return r.tag === undefined
        ? { kind: "docker-archive", file, name }
        : { kind: "docker-archive", file, name, tag: r.tag };
    }
    case "docker": {
      if (!body.startsWith("//")) throw new NixociError(s, "expected docker://HOST/NAME[:TAG|@DIGEST]");
      const rest = body.slice(2);
      const slash = rest.indexOf("/");
      const first = slash < 0 ? rest : rest.slice(0, slash);
      // docker://USER:PASSWORD@HOST/... would otherwise read as NAME@DIGEST.
      if (first.includes("@"))
        throw new NixociError(
          s.replace(/^(docker:\/\/[^/@:]*):[^/@]*@/, "$1:***@"),
          "credentials in the reference are not taken (they would end up in logs): use --creds USER:PASSWORD or `docker login`",
        );
      if (slash < 0 && /^(?:localhost|[^:@]*\.[^:@]*|\[[^\]]*\]|[^:@]+:\d+)(?::\d+)?$/.test(first))
        throw new NixociError(s, "no repository name after the registry host (docker://HOST/NAME[:TAG])");
      if (slash < 0 || !looksLikeHost(first))
        throw new NixociError(
          s,
          "no registry host: write docker://HOST[:PORT]/NAME (e.g. docker://localhost:5000/app:latest or docker://docker.io/library/app)",
        );
      const r = parseDockerReference(s, rest);
      if (!r.host) throw new NixociError(s, "no registry host");
      if (r.tag !== undefined && r.digest !== undefined)
        throw new NixociError(s, "both a tag and a digest: push to one of them");
      const out: OutputRef = { kind: "docker", registry: r.host, repository: r.repository };
      if (r.tag !== undefined) out.tag = r.tag;
      if (r.digest !== undefined) out.digest = r.digest;
      // Docker Hub's one-component names live under library/.
      if ((r.host === "docker.io" || r.host === "index.docker.io") && !r.repository.includes("/"))
        out.repository = `library/${r.repository}`;
      return out;
    }
    case "nix":
      if (body === "") return { kind: "nix" };
      checkNixImageName(body, s);
      return { kind: "nix", name: body };
    default:
      if (!/^[A-Za-z][A-Za-z0-9-]*$/.test(transport))
        throw new NixociError(s, `no transport (expected ${TRANSPORTS})`);
      throw new NixociError(s, `unknown transport ${quote(transport)} (expected ${TRANSPORTS})`);
  }
}

/** The reference in the syntax parseOutputRef reads. */
export function formatOutputRef(ref: OutputRef): string {
  switch (ref.kind) {
    case "oci":
      return `oci:${ref.dir}${ref.tag !== undefined ? `:${ref.tag}` : ""}`;
    case "oci-archive":
      return `oci-archive:${ref.file}${ref.tag !== undefined ? `:${ref.tag}` : ""}`;
    case "docker-archive":
      if (ref.file === "-" && ref.name === undefined) return "-";
      return `docker-archive:${ref.file}${ref.name !== undefined ? `:${ref.name}` : ""}${ref.tag !== undefined ? `:${ref.tag}` : ""}`;
    case "docker":
      return `docker://${ref.registry}/${ref.repository}${ref.digest ? `@${ref.digest}` : ref.tag !== undefined ? `:${ref.tag}` : ""}`;
    case "nix":
      return `nix:${ref.name ?? ""}`;
  }
}

export interface OutputOptions {
  /** USER:PASS for registries. */
  creds?: string;
  /** Plain HTTP for registries other than localhost/127.0.0.1/[::1]. */
  insecure?: boolean;
  /** The tag used when the reference has none (registries: else "latest"; layouts: else untagged). */
  defaultTag?: string;
  /** The image's name (NAME of --tag NAME[:TAG]): an oci-archive records it in full for importers. */
  defaultName?: string;
  onEvent?: (e: PushEvent) => void;
  /** Repositories of the same registry that may already hold the blobs (tried as cross-repository mounts). */
  mountFrom?: string[];
  /** The local store nix: outputs are written into. */
  store?: LocalStore;
  /**
   * Documents about the image's manifests (SBOMs), written beside it where the output can hold referrers
   * (holdsReferrers); other outputs leave them out.
   */
  referrers?: readonly BuiltReferrer[];
}

/** Outputs that hold one image and no index: a multi-platform image cannot be written to them. */
export function holdsIndex(ref: OutputRef): boolean {
  return ref.kind === "oci" || ref.kind === "oci-archive" || ref.kind === "docker";
}

/** Outputs that can carry referrers (OCI 1.1 artifacts about an image): layouts, their archives and registries. */
export function holdsReferrers(ref: OutputRef): boolean {
  return ref.kind === "oci" || ref.kind === "oci-archive" || ref.kind === "docker";
}

/** Writes an image, or a multi-platform image (an index) to an output that can hold one (holdsIndex). */
export async function writeOutput(
  image: BuiltTarget,
  ref: OutputRef,
  opts: OutputOptions = {},
): Promise<{
  manifestDigest: string;
  uploaded?: string[];
  skipped?: string[];
  mounted?: string[];
  storePath?: string;
  reference?: string;
  /** The referrer manifests written, by digest. */
  referrers?: string[];
  /** Tag-schema fallback tags a registry without the referrers API got. */
  referrersTags?: string[];
}> {
  if (opts.defaultTag !== undefined) checkTag("default tag", opts.defaultTag);
  if (isIndex(image) && !holdsIndex(ref))
    throw new NixociError(
      formatOutputRef(ref),
      "holds one platform's image, not a multi-platform index (write it to oci:, oci-archive: or docker://)",
    );
  const referrers = holdsReferrers(ref) ? (opts.referrers ?? []) : [];
  const written = referrers.length ? { referrers: referrers.map((r) => referrerDescriptor(r).digest) } : {};
  switch (ref.kind) {
    case "oci":
      return {
        manifestDigest: await writeOciLayout(image, ref.dir, ref.tag ?? opts.defaultTag, referrers),
        ...written,
      };
    case "oci-archive": {
      const tag = ref.tag ?? opts.defaultTag;
      const name =
        opts.defaultName === undefined
          ? undefined
          : normalizeImageRef(`${opts.defaultName}:${tag ?? "latest"}`);
      return {
        manifestDigest: await (
          await import("./archive.js")
        ).writeOciArchive(image, ref.file, tag, referrers, name),
        ...written,
      };
    }
    case "docker-archive": {
      if (isIndex(image)) throw new Error("unreachable: docker-archive of an index");
      const tags = ref.name !== undefined ? [`${ref.name}:${ref.tag ?? opts.defaultTag ?? "latest"}`] : [];
      return {
        manifestDigest: await (await import("./archive.js")).writeDockerArchive(image, ref.file, tags),
      };
    }
    case "nix": {
      if (isIndex(image)) throw new Error("unreachable: nix: of an index");
      const store = opts.store;
      if (!store) throw new NixociError("nix:", "no local store to write the image description into");
      const storePath = await writeNixImage(image, store, ref.name, opts.defaultTag).catch(async (err) => {
        // The store refused the path (the pre-build check passed, the store changed since): the same advice.
        if (err instanceof FileSystemError && PERMISSION.has(err.code) && isInside(err.path, store.realDir))
          throw storeNotWritable(
            formatOutputRef(ref),
            store.realDir,
            errnoWords(err),
            (await ownerName(store.realDir)) ?? "root",
          );
        throw err;
      });
      return { manifestDigest: image.manifest.digest, storePath, reference: nixImageRef(storePath) };
    }
    case "docker": {
      const target = {
        registry: ref.registry,
        repository: ref.repository,
        tag: ref.digest ? undefined : (ref.tag ?? opts.defaultTag ?? "latest"),
        digest: ref.digest,
      };
      const pushOpts = {
        creds: opts.creds,
        insecure: opts.insecure,
        onEvent: opts.onEvent,
        mountFrom: opts.mountFrom,
      };
      const r = isIndex(image)
        ? await (await import("./push.js")).pushIndex(image, target, pushOpts)
        : await (await import("./push.js")).pushImage(image, target, pushOpts);
      // After the image: a registry that checks subjects finds them, and a reader never sees a referrer
      // about a manifest that is not there yet.
      const { pushReferrers } = await import("./push-referrers.js");
      const pushed = await pushReferrers(referrers, target, { creds: opts.creds, insecure: opts.insecure });
      return {
        manifestDigest: r.manifestDigest,
        uploaded: r.uploaded,
        skipped: r.skipped,
        mounted: r.mounted,
        ...(referrers.length ? { referrers: pushed.referrers } : {}),
        ...(pushed.fallbackTags.length ? { referrersTags: pushed.fallbackTags } : {}),
      };
    }
  }
}
