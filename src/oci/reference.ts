// The grammar of image references, one for the whole project: repository names and tags as the OCI distribution
// spec defines them, and digests as the image spec does. Everything that accepts a name, a tag or a digest from
// outside (the registry's routes and storage, `-o` output references, layout and archive tags, resolver
// revisions used as tags) checks it here, so they all agree on what is valid; the order tags are listed in is
// here too. Pure functions: each caller turns a "no" into its own error (a registry status, a CLI message).
import { isDigest } from "./digest.js";

/** One path component of a repository name. */
export const NAME_COMPONENT_RE = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
/** Repository names: components separated by "/". */
export const NAME_RE = /^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$/;
/** Tags: up to 128 of [A-Za-z0-9_.-], not starting with "." or "-". */
export const TAG_RE = /^[\w][\w.-]{0,127}$/;
/** docker-registry's limit (clients limit host + "/" + name to 255 too). */
export const MAX_NAME_LENGTH = 255;
/** The digest grammar of the image spec: algorithm ":" encoded. */
export const DIGEST_GRAMMAR = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

export function isValidName(s: string): boolean {
  return s.length > 0 && s.length <= MAX_NAME_LENGTH && NAME_RE.test(s);
}

export function isValidTag(s: string): boolean {
  return TAG_RE.test(s);
}

/** A registry host as a reference's first component: a dotted name or localhost, with an optional port. */
const DOMAIN_RE =
  /^(?:localhost|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+|[A-Za-z0-9-]+:\d+)(?::\d+)?$/;

/**
 * An image name as docker tags it, `[HOST[:PORT]/]NAME[:TAG]` (what `--tag` and docker-archive RepoTags take): the
 * name and tag (default "latest"), or undefined when it does not follow the grammar.
 */
export function parseTaggedName(ref: string): { name: string; tag: string } | undefined {
  const slash = ref.lastIndexOf("/");
  const colon = ref.lastIndexOf(":");
  const [name, tag] = colon > slash ? [ref.slice(0, colon), ref.slice(colon + 1)] : [ref, "latest"];
  const parts = name.split("/");
  const path = parts.length > 1 && DOMAIN_RE.test(parts[0]) ? parts.slice(1) : parts;
  if (!isValidName(path.join("/")) || name.length > MAX_NAME_LENGTH || !isValidTag(tag)) return undefined;
  return { name, tag };
}

/**
 * "sha256" for the digests this project stores; "unsupported" for well-formed digests of other algorithms
 * (sha512, or unregistered ones such as md5); "invalid" for anything else (sha256 with a wrong length...).
 */
export function classifyDigest(s: string): "sha256" | "unsupported" | "invalid" {
  if (isDigest(s)) return "sha256";
  if (s.length > 1024 || !DIGEST_GRAMMAR.test(s)) return "invalid";
  const [alg, enc] = [s.slice(0, s.indexOf(":")), s.slice(s.indexOf(":") + 1)];
  if (alg === "sha256") return "invalid";
  if (alg === "sha512") return /^[a-f0-9]{128}$/.test(enc) ? "unsupported" : "invalid";
  return "unsupported";
}

/**
 * The order of tag lists, and of their `n`/`last` paging: the spec's "lexical order (i.e. case-insensitive
 * alphanumeric order)", comparing lowercased code units (tags are ASCII, so this is Unicode case folding, which
 * maps to lowercase: "_" sorts before letters); tags equal but for case by plain code units ("A" < "a"), so the
 * order is total and `last=X` continues after exactly X. Repository names are lowercase, so for them it is plain
 * code-unit order.
 */
export function compareTags(a: string, b: string): number {
  const [la, lb] = [a.toLowerCase(), b.toLowerCase()];
  if (la !== lb) return la < lb ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * A Docker reference in full, as BuildKit's docker-image source and containerd's image names want it
 * (NAME -> docker.io/library/NAME:latest, USER/NAME -> docker.io/USER/NAME:latest, HOST/NAME:TAG as it is).
 */
export function normalizeImageRef(ref: string): string {
  let name = ref;
  const first = name.split("/")[0];
  if (!name.includes("/")) name = `docker.io/library/${name}`;
  else if (!(first.includes(".") || first.includes(":") || first === "localhost")) name = `docker.io/${name}`;
  const last = name.slice(name.lastIndexOf("/") + 1);
  if (!last.includes(":") && !name.includes("@")) name += ":latest";
  return name;
}
