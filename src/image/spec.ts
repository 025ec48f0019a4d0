// The image specification: what `nixoci build` flags and `--spec FILE` (JSON or YAML) say about the image.
// Both are parsed into one validated value; flags override the file. Unknown keys in a spec file are errors,
// so a typo does not silently build a different image.
import { isRfc3339Time } from "../oci/timestamp.js";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { parseTaggedName } from "../oci/reference.js";
import { parseOwnerId, parsePermRule } from "./permissions.js";
import { didYouMean } from "../util/did-you-mean.js";
import { NixociError, quote } from "../util/errors.js";
import { errnoWords } from "../util/fs-errors.js";

export interface ImageSpec {
  packages: string[];
  /** The base image reference (`--from`): its layers go under the Nix layers. */
  from?: string;
  entrypoint?: string[];
  cmd?: string[];
  env: string[];
  workdir?: string;
  user?: string;
  expose: string[];
  labels: Record<string, string>;
  arch: string;
  /** The CPU variant (arm64's v8, arm's v7, …), when the platform names one (`--platform linux/arm/v7`). */
  variant?: string;
  os: string;
  created: string;
  tags: string[];
  substituters: string[];
  trustedPublicKeys: string[];
  layering?: string;
  maxLayers?: number;
  compression?: string;
  compressionLevel?: number;
  /** The layers' tar headers: "standard" or "docker20" (tar-header.ts). */
  tarFormat?: string;
  /** Ownership and mode rules, `REGEX=MODE[:UID[:GID]]` (permissions.ts). */
  perms?: string[];
  /** Owner of every store path entry. */
  uid?: number;
  gid?: number;
  /**
   * A multi-platform image: `OS/ARCH[/VARIANT]` -> that platform's packages (platforms.ts checks the keys). Every
   * other setting applies to each platform's image.
   */
  platforms?: Record<string, string[]>;
}

/** The YAML parser, loaded only when a YAML spec is read (it is a noticeable share of the CLI's start-up). */
function parseYaml(text: string): unknown {
  const yaml = createRequire(import.meta.url)("yaml") as typeof import("yaml");
  return yaml.parse(text);
}

export const DEFAULT_CREATED = "1970-01-01T00:00:01Z";

/** The architectures an OCI image config may name (Go's GOARCH values). */
export const ARCHITECTURES: readonly string[] = [
  "amd64",
  "arm64",
  "arm",
  "386",
  "ppc64le",
  "ppc64",
  "s390x",
  "riscv64",
  "loong64",
  "mips64le",
  "mips64",
  "mipsle",
  "mips",
  "wasm",
];

/** Go/OCI architecture names from Node's. */
export function defaultArch(): string {
  const map: Record<string, string> = {
    x64: "amd64",
    arm64: "arm64",
    arm: "arm",
    ia32: "386",
    ppc64: "ppc64le",
    s390x: "s390x",
    riscv64: "riscv64",
  };
  return map[process.arch] ?? process.arch;
}

export function emptySpec(): ImageSpec {
  return {
    packages: [],
    env: [],
    expose: [],
    labels: {},
    arch: defaultArch(),
    os: "linux",
    created: DEFAULT_CREATED,
    tags: [],
    substituters: [],
    trustedPublicKeys: [],
  };
}

// Each documented key before its alias: "did you mean" picks the first of equally close keys (tagz -> tags).
const KEYS = new Set([
  "packages",
  "from",
  "entrypoint",
  "cmd",
  "env",
  "workdir",
  "workingDir",
  "user",
  "expose",
  "exposedPorts",
  "labels",
  "arch",
  "architecture",
  "os",
  "created",
  "tags",
  "tag",
  "substituters",
  "trustedPublicKeys",
  "trusted-public-keys",
  "layering",
  "maxLayers",
  "max-layers",
  "compression",
  "compressionLevel",
  "compression-level",
  "tarFormat",
  "tar-format",
  "perms",
  "uid",
  "gid",
  "platforms",
]);

/** Reads a spec file: JSON when it parses as JSON, YAML otherwise (YAML is a superset anyway). */
export function readSpecFile(file: string): Partial<ImageSpec> {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (err) {
    throw new NixociError(file, `cannot read spec file: ${errnoWords(err)}`);
  }
  let doc: unknown;
  try {
    doc = file.endsWith(".json") ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    throw new NixociError(
      file,
      `not valid ${file.endsWith(".json") ? "JSON" : "YAML"}: ${(err as Error).message.split("\n")[0]}`,
    );
  }
  return specFromObject(doc, file);
}

/** Validates a parsed spec document (also used by the BuildKit frontend and the registry). */
export function specFromObject(doc: unknown, input: string): Partial<ImageSpec> {
  if (typeof doc !== "object" || doc === null || Array.isArray(doc))
    throw new NixociError(input, "spec must be a mapping of keys to values");
  const o = doc as Record<string, unknown>;
  for (const k of Object.keys(o))
    if (!KEYS.has(k)) {
      const guess = didYouMean(k, [...KEYS]);
      throw new NixociError(input, `unknown key ${quote(k)}${guess ? ` (did you mean ${guess}?)` : ""}`);
    }
  const str = (k: string, v: unknown): string => {
    if (typeof v !== "string") throw new NixociError(input, `${k} must be a string`);
    return v;
  };
  const strList = (k: string, v: unknown): string[] => {
    if (typeof v === "string") return [v];
    if (!Array.isArray(v) || v.some((x) => typeof x !== "string" && typeof x !== "number")) {
      throw new NixociError(input, `${k} must be a list of strings`);
    }
    return v.map(String);
  };
  const int = (k: string, v: unknown): number => {
    if (typeof v !== "number" || !Number.isInteger(v))
      throw new NixociError(input, `${k} must be an integer`);
    return v;
  };
  const spec: Partial<ImageSpec> = {};
  const pick = (...names: string[]): unknown => names.map((n) => o[n]).find((v) => v !== undefined);
  if (o.packages !== undefined) spec.packages = strList("packages", o.packages);
  if (o.from !== undefined) spec.from = str("from", o.from);
  if (o.entrypoint !== undefined) spec.entrypoint = strList("entrypoint", o.entrypoint);
  if (o.cmd !== undefined) spec.cmd = strList("cmd", o.cmd);
  if (o.env !== undefined) {
    if (typeof o.env === "object" && o.env !== null && !Array.isArray(o.env)) {
      // A YAML mapping's numbers and booleans are written as YAML spelled them (as docker compose does); null, a
      // list or a mapping has no one spelling ("null", "[object Object]"), so it is refused.
      spec.env = Object.entries(o.env as Record<string, unknown>).map(([k, v]) => {
        if (typeof v !== "string" && typeof v !== "number" && typeof v !== "boolean")
          throw new NixociError(
            input,
            `env ${quote(k)}: expected a string, number or boolean, got ${v === null ? "null" : Array.isArray(v) ? "a list" : typeof v}`,
          );
        return `${k}=${String(v)}`;
      });
    } else spec.env = strList("env", o.env);
  }
  const workdir = pick("workdir", "workingDir");
  if (workdir !== undefined) spec.workdir = str("workdir", workdir);
  if (o.user !== undefined) spec.user = str("user", typeof o.user === "number" ? String(o.user) : o.user);
  const expose = pick("expose", "exposedPorts");
  if (expose !== undefined) spec.expose = strList("expose", expose);
  if (o.labels !== undefined) {
    if (typeof o.labels !== "object" || o.labels === null || Array.isArray(o.labels))
      throw new NixociError(input, "labels must be a mapping");
    spec.labels = Object.fromEntries(
      Object.entries(o.labels as Record<string, unknown>).map(([k, v]) => [k, String(v)]),
    );
  }
  const arch = pick("arch", "architecture");
  if (arch !== undefined) spec.arch = str("arch", arch);
  if (o.os !== undefined) spec.os = str("os", o.os);
  if (o.created !== undefined)
    spec.created = str("created", o.created instanceof Date ? o.created.toISOString() : o.created);
  const tags = pick("tags", "tag");
  if (tags !== undefined) spec.tags = strList("tags", tags);
  if (o.substituters !== undefined) spec.substituters = strList("substituters", o.substituters);
  const keys = pick("trustedPublicKeys", "trusted-public-keys");
  if (keys !== undefined) spec.trustedPublicKeys = strList("trustedPublicKeys", keys);
  if (o.layering !== undefined) spec.layering = str("layering", o.layering);
  const maxLayers = pick("maxLayers", "max-layers");
  if (maxLayers !== undefined) spec.maxLayers = int("maxLayers", maxLayers);
  if (o.compression !== undefined) spec.compression = str("compression", o.compression);
  const level = pick("compressionLevel", "compression-level");
  if (level !== undefined) spec.compressionLevel = int("compressionLevel", level);
  const tarFormat = pick("tarFormat", "tar-format");
  if (tarFormat !== undefined) spec.tarFormat = str("tarFormat", tarFormat);
  if (o.perms !== undefined) spec.perms = permList(o.perms, input);
  for (const k of ["uid", "gid"] as const)
    if (o[k] !== undefined) spec[k] = parseOwnerId(String(int(k, o[k])), k, input);
  if (o.platforms !== undefined) {
    if (typeof o.platforms !== "object" || o.platforms === null || Array.isArray(o.platforms))
      throw new NixociError(input, "platforms must be a mapping of OS/ARCH[/VARIANT] to lists of packages");
    spec.platforms = Object.fromEntries(
      Object.entries(o.platforms as Record<string, unknown>).map(([k, v]) => [
        k,
        strList(`platforms.${k}`, v),
      ]),
    );
  }
  return spec;
}

/**
 * `perms:` entries: `REGEX=MODE[:UID[:GID]]` strings, or mappings `{path: REGEX, mode: "0700", uid: 1000,
 * gid: 1000}` (a YAML mode written 0700 arrives as the number 448, so numbers are taken as written in octal only
 * when quoted: an unquoted mode is refused rather than misread).
 */
function permList(v: unknown, input: string): string[] {
  if (!Array.isArray(v)) throw new NixociError(input, "perms must be a list of REGEX=MODE[:UID[:GID]] rules");
  return v.map((item, i) => {
    if (typeof item === "string") return item;
    if (typeof item !== "object" || item === null || Array.isArray(item))
      throw new NixociError(input, `perms[${i}] must be a REGEX=MODE[:UID[:GID]] string or a mapping`);
    const r = item as Record<string, unknown>;
    for (const k of Object.keys(r))
      if (!["path", "mode", "uid", "gid"].includes(k))
        throw new NixociError(input, `perms[${i}]: unknown key ${quote(k)} (path, mode, uid, gid)`);
    if (typeof r.path !== "string" || r.path === "")
      throw new NixociError(input, `perms[${i}]: path must be a regular expression string`);
    if (typeof r.mode !== "string")
      throw new NixociError(input, `perms[${i}]: mode must be an octal string such as "0755" (quote it)`);
    const owner = [r.uid, r.gid].map((x) => (x === undefined ? "" : String(x)));
    return `${r.path}=${r.mode}${owner[0] || owner[1] ? `:${owner[0]}${owner[1] ? `:${owner[1]}` : ""}` : ""}`;
  });
}

/** Checks values whose syntax the image config fixes: env entries, ports, the creation time. */
export function validateSpec(spec: ImageSpec, input = "spec"): ImageSpec {
  for (const e of spec.env) {
    if (!/^[^=\s]+=/.test(e)) throw new NixociError(input, `env entry ${quote(e)} is not NAME=VALUE`);
  }
  for (const p of spec.expose) {
    if (!/^\d{1,5}(\/(tcp|udp|sctp))?$/.test(p) || Number(p.split("/")[0]) > 65535) {
      throw new NixociError(input, `exposed port ${quote(p)} is not PORT[/tcp|udp|sctp]`);
    }
  }
  if (!isRfc3339Time(spec.created)) {
    throw new NixociError(input, `created ${quote(spec.created)} is not an RFC 3339 time`);
  }
  if (!ARCHITECTURES.includes(spec.arch))
    throw new NixociError(
      input,
      `architecture ${quote(spec.arch)} is not one of ${ARCHITECTURES.join(", ")} (Go's names, as in OCI images)`,
    );
  for (const t of spec.tags)
    if (!parseTaggedName(t))
      throw new NixociError(
        input,
        `tag ${quote(t)} is not [HOST[:PORT]/]NAME[:TAG] (lowercase name components, a tag of A-Z a-z 0-9 _ . -)`,
      );
  if (!/^[a-z0-9_]+$/.test(spec.os)) throw new NixociError(input, `os ${quote(spec.os)} is malformed`);
  if (spec.user !== undefined && !/^[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?$/.test(spec.user)) {
    throw new NixociError(input, `user ${quote(spec.user)} is not NAME[:GROUP] or UID[:GID]`);
  }
  for (const r of spec.perms ?? []) parsePermRule(r, input);
  return spec;
}
