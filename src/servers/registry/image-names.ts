// Image names of `nixoci serve`: the repository name says which packages the image holds, the tag which
// revision of the package set.
//
// Repository names.  `HOST/shell/git/htop` is an image with the packages shell (a meta-package), git and htop:
//   - every path component is a package name, resolved by the configured resolver (attribute names of the Nix
//     file / nixpkgs / flake, names in the package index, or literal store path base names);
//   - order and repetition do not matter: `git/htop`, `htop/git` and `git/htop/git` are the same image (the
//     package list is sorted and deduplicated, and images are cached by that list);
//   - the FIRST component may name the architecture: amd64 or x86_64, arm64 or aarch64 (also the Nix systems
//     x86_64-linux, aarch64-linux): `HOST/arm64/git` is git for arm64. Only with at least one package after
//     it; anywhere else, or alone, it is a package name. Without it the image is for the server's default
//     architecture (the host's) — or, for a client that accepts an index, an index of the images for every
//     architecture that has all the packages, when two or more do (nix-images.ts). An architecture the resolver
//     gives no packages for (Nix cannot build for it) is a 404 (nix-images.ts), and the page at / offers only the
//     others;
//   - meta-packages expand to several packages: the built-in `shell` is a usable interactive shell, a shell and
//     the core utilities: bashInteractive + coreutils where the package set has them, else the alternatives in
//     BUILTIN_META_PACKAGES (meta-packages.ts settles them against the set when the server starts). They are
//     configurable (serve's metaPackages); an expansion may name packages that cannot be written in a
//     repository name (upper case, like bashInteractive), so meta-packages double as aliases:
//     { "python-requests": ["python3Packages.requests"] };
//   - names follow the distribution spec (lower case letters, digits, and . _ __ - between them); a dotted
//     component such as `python3packages.requests` is an attribute path for the Nix resolvers.
//
// Tags.
//   - `latest` is the resolver's current revision, looked up on every request (a cheap, cached check: the hash
//     of the Nix file, git HEAD of the nixpkgs checkout, the index's "revision"; at most a few seconds stale).
//     When the package set changes, `latest` becomes a new image on its next pull; the old one stays cached.
//   - any other tag pins a revision: `HOST/git:2026-11-29.1`, `HOST/git:<nixpkgs commit>`. It must be a
//     revision the resolver can serve (a nixpkgs git checkout: any of its commits, by full id; a Nix file,
//     flake or index: only the current revision; literal store paths: any tag). Otherwise the answer is 404
//     MANIFEST_UNKNOWN naming the revision.
//   - a digest reference (`@sha256:...`) is whatever the registry recorded for that repository when it served
//     the manifest by tag; it never triggers a build.
// An image, once built, is cached forever under (sorted packages, revision, architecture, layering strategy,
// layer limit, compression): the same request is answered from the cache without resolving or building.
import { isValidTag, NAME_COMPONENT_RE } from "../../oci/reference.js";
import { registryError, type RegistryError } from "./errors.js";

/**
 * The built-in meta-packages, each a list of parts, each part the packages that can play it in order of
 * preference: `shell` is a shell (nixpkgs' bashInteractive, else a plain bash, else busybox's) and the core
 * utilities (coreutils, else busybox's), so package sets without nixpkgs' names (a small Nix file, an index)
 * still get one.
 */
export const BUILTIN_META_PACKAGES: Readonly<Record<string, readonly (readonly string[])[]>> = Object.freeze({
  shell: Object.freeze([
    Object.freeze(["bashInteractive", "bash", "busybox"]),
    Object.freeze(["coreutils", "busybox"]),
  ]),
});

/** Meta-packages when none are configured: the built-in ones with their first choices (nixpkgs' names). */
export const DEFAULT_META_PACKAGES: Readonly<Record<string, readonly string[]>> = Object.freeze(
  Object.fromEntries(
    Object.entries(BUILTIN_META_PACKAGES).map(([name, parts]) => [name, parts.map((p) => p[0])]),
  ),
);

/** Architecture prefixes (first repository component) and the OCI architecture they mean. */
export const ARCH_PREFIXES: Readonly<Record<string, string>> = Object.freeze({
  amd64: "amd64",
  x86_64: "amd64",
  "x86_64-linux": "amd64",
  arm64: "arm64",
  aarch64: "arm64",
  "aarch64-linux": "arm64",
});

/**
 * The architectures among `architectures` that a name can ask for with a prefix (amd64, arm64), sorted; an
 * architecture the server cannot build for is no prefix worth showing.
 */
export function prefixArchitectures(architectures: readonly string[]): string[] {
  return [...new Set(Object.values(ARCH_PREFIXES))].filter((a) => architectures.includes(a)).sort();
}

/** A package name an expansion may give (attribute paths, store path base names, index keys). */
const PACKAGE_RE = /^[A-Za-z0-9_][A-Za-z0-9._+'?=-]*$/;

export interface ImageRequest {
  /** OCI architecture (amd64, arm64, ...). */
  arch: string;
  /** Package names, sorted and unique, meta-packages expanded. */
  packages: string[];
}

function invalid(repo: string, why: string): RegistryError {
  return registryError("NAME_INVALID", {
    message: `invalid image name ${JSON.stringify(repo)}: ${why}`,
    detail: { name: repo },
  });
}

/**
 * Parses a repository name into an image request (see the file comment). Throws RegistryError 400 NAME_INVALID
 * for a name that is not a package list.
 */
export function parseImageName(
  repo: string,
  opts: { metaPackages: Readonly<Record<string, readonly string[]>>; defaultArch: string },
): ImageRequest {
  const components = repo.split("/");
  for (const c of components) {
    if (!NAME_COMPONENT_RE.test(c)) throw invalid(repo, `${JSON.stringify(c)} is not a valid name component`);
  }
  let arch = opts.defaultArch;
  if (namesArchitecture(repo)) {
    arch = ARCH_PREFIXES[components[0]];
    components.shift();
  }
  const packages = new Set<string>();
  for (const c of components) {
    const expansion = Object.hasOwn(opts.metaPackages, c) ? opts.metaPackages[c] : undefined;
    if (!expansion) {
      packages.add(c);
      continue;
    }
    for (const p of expansion) {
      if (!PACKAGE_RE.test(p))
        throw invalid(repo, `meta-package ${c} expands to the invalid name ${JSON.stringify(p)}`);
      packages.add(p);
    }
  }
  if (!packages.size) throw invalid(repo, "names no packages");
  return { arch, packages: [...packages].sort() };
}

/**
 * The one spelling of an image name that the registry records its manifests and blob links under, whatever order
 * and repetition a client used (`htop/git/git` and `git/htop` are recorded as `git/htop`; `x86_64/git` as
 * `amd64/git`): without it, each spelling an anonymous client asks for became a repository of its own on disk.
 * Components are sorted and deduplicated as they are written (meta-packages unexpanded), the architecture prefix
 * named by its OCI architecture. A name whose sorted components would begin with an architecture prefix it did not
 * have (`git/amd64`: the package amd64) keeps its spelling, which no other image's can take.
 */
export function recordedImageName(repo: string): string {
  const components = repo.split("/");
  const prefix = namesArchitecture(repo) ? [ARCH_PREFIXES[components.shift()!]] : [];
  const rest = [...new Set(components)].sort();
  if (!prefix.length && rest.length > 1 && Object.hasOwn(ARCH_PREFIXES, rest[0])) return repo;
  return [...prefix, ...rest].join("/");
}

/** Whether the repository name begins with an architecture prefix (the rule parseImageName applies). */
export function namesArchitecture(repo: string): boolean {
  const components = repo.split("/");
  return components.length > 1 && Object.hasOwn(ARCH_PREFIXES, components[0]);
}

export type ImageReference =
  { kind: "latest" } | { kind: "revision"; revision: string } | { kind: "digest"; digest: string };

/** A manifest reference: `latest`, a pinned revision (any other tag), or a digest (`algorithm:hex`). */
export function parseImageReference(reference: string): ImageReference {
  if (reference === "latest") return { kind: "latest" };
  if (reference.includes(":")) return { kind: "digest", digest: reference };
  if (!isValidTag(reference))
    throw registryError("MANIFEST_UNKNOWN", {
      message: `invalid tag ${JSON.stringify(reference)}`,
      detail: { tag: reference },
    });
  return { kind: "revision", revision: reference };
}
