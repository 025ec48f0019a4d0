// What every SBOM format is built from: a closure's path infos, its roots, and facts about the run (nixoci's
// version, the document time, the image). The formats only render this; nothing here does I/O, so the same
// inputs always give the same documents.
import { isRfc3339Time } from "../../oci/timestamp.js";
import { createHash } from "node:crypto";
import { parseStorePath } from "../../nix/store-path.js";
import type { PathInfo } from "../../store/path-info.js";
import { NixociError } from "../../util/errors.js";

export interface SbomInput {
  /** Every path of the closure exactly once, with its metadata (order does not matter). */
  infos: readonly PathInfo[];
  /** The paths the closure was taken of (what the image runs). */
  roots: readonly string[];
  /** nixoci's version, named as the tool that wrote the document. */
  toolVersion: string;
  /** The document time (RFC 3339): an image's `created`; with a fixed time the bytes are reproducible. */
  created: string;
  /** The image the closure was packed into, when there is one. */
  image?: { name?: string; manifestDigest: string };
  /** Binary caches the paths were read from (provenance names them as inputs). */
  caches?: readonly string[];
}

/** What a document says about the run, beside the closure: SbomInput without the paths. */
export type SbomFacts = Omit<SbomInput, "infos" | "roots">;

/**
 * The input of every document about a closure, for `nixoci sbom` and `nixoci build --sbom` alike: the closure's
 * path infos, and its roots, which are `roots` when known, else the `paths` nothing else of the closure refers to
 * (what an image was made of, when it does not say).
 */
export function closureSbomInput(
  closure: ReadonlyMap<string, PathInfo>,
  { roots, paths }: { roots: readonly string[]; paths: readonly string[] },
  facts: SbomFacts,
): SbomInput {
  return {
    infos: [...closure.values()],
    roots: roots.length ? [...roots] : unreferenced(closure, paths),
    ...facts,
  };
}

function unreferenced(closure: ReadonlyMap<string, PathInfo>, paths: readonly string[]): string[] {
  const referenced = new Set<string>();
  for (const p of paths) for (const r of closure.get(p)?.references ?? []) if (r !== p) referenced.add(r);
  return paths.filter((p) => !referenced.has(p));
}

/** One store path as the documents describe it. */
export interface SbomPath {
  info: PathInfo;
  /** The store path's name (after `<hash>-`) and its hash part. */
  name: string;
  hashPart: string;
  /** References without the self reference, sorted. */
  dependsOn: string[];
  isRoot: boolean;
  /** The NAR hash as lowercase hex (every format wants SHA-256 hex). */
  narSha256: string;
}

/**
 * The closure sorted by path, checked: every root and every reference is in it (a document that names a
 * dependency it does not describe would be wrong), and every NAR hash is SHA-256.
 */
export function sbomPaths(input: SbomInput): SbomPath[] {
  const byPath = new Map<string, PathInfo>();
  for (const info of input.infos) {
    if (byPath.has(info.path)) throw new NixociError(info.path, "appears twice in the closure");
    byPath.set(info.path, info);
  }
  const roots = new Set(input.roots);
  for (const root of roots)
    if (!byPath.has(root)) throw new NixociError(root, "root is not in the closure given for the SBOM");
  return [...byPath.values()]
    .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0))
    .map((info) => {
      const sp = parseStorePath(info.path, info.path.slice(0, info.path.lastIndexOf("/")), info.path);
      if (info.narHash.algo !== "sha256")
        throw new NixociError(info.path, `NAR hash is ${info.narHash.algo}, not sha256`);
      const dependsOn = info.references.filter((r) => r !== info.path).sort();
      for (const ref of dependsOn)
        if (!byPath.has(ref))
          throw new NixociError(info.path, `references ${ref}, which is not in the closure`);
      return {
        info,
        name: sp.name,
        hashPart: sp.hashPart,
        dependsOn,
        isRoot: roots.has(info.path),
        narSha256: info.narHash.digest.toString("hex"),
      };
    });
}

/**
 * A component's kind: the roots are the applications (what the image is for), everything else is a library.
 * Deliberately not "has a bin/": that needs the file tree, which a binary cache does not list for every path,
 * and the same closure must give the same document whichever store answered.
 */
export function isApplication(p: SbomPath): boolean {
  return p.isRoot;
}

/** `created` as RFC 3339 UTC to the second (SPDX allows no fractions), or an error naming the value. */
export function documentTime(created: string): string {
  const ms = Date.parse(created);
  if (Number.isNaN(ms) || !isRfc3339Time(created)) throw new NixociError(created, "is not an RFC 3339 time");
  return new Date(Math.floor(ms / 1000) * 1000).toISOString().replace(".000Z", "Z");
}

/**
 * A name-based UUID (RFC 4122 version 5 layout over SHA-256 instead of SHA-1, truncated) of `text`: the same
 * content gives the same serial number, so a rebuild does not change the document.
 */
export function contentUuid(text: string): string {
  const b = createHash("sha256").update(text).digest().subarray(0, 16);
  b[6] = (b[6] & 0x0f) | 0x50;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = b.toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** A short name for the document: the image's, else the roots' names. */
export function documentName(input: SbomInput, paths: readonly SbomPath[]): string {
  if (input.image?.name) return input.image.name;
  return paths
    .filter((p) => p.isRoot)
    .map((p) => p.name)
    .join("+");
}
