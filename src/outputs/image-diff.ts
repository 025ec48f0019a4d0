// What changed between two images, at the level users ask about: store paths added, removed and changed (paired
// by package name as Nix's parseDrvName splits it: a new version, or the same version rebuilt with another hash),
// layers added and removed (by digest, with their store paths), and the config fields a user sets (entrypoint,
// cmd, env, user, workdir, labels, exposed ports, platform). The result is the JSON `nixoci diff --json` prints;
// its shape is documented in the README ("Comparing images") and kept stable.
import { parseDrvName } from "../nix/drv-name.js";
import { formatPlatform } from "../image/platforms.js";
import type { ImageSource } from "./image-source.js";
import { imageStorePaths, type LayerPaths } from "./image-store-paths.js";

export interface ImageSide {
  ref: string;
  manifest: string;
  config: string;
  platform: string;
}

export interface ChangedPath {
  /** The package name (parseDrvName's name). */
  name: string;
  from: string;
  to: string;
  fromVersion: string;
  toVersion: string;
  /** Same name and version, another hash. */
  rebuilt: boolean;
}

export interface LayerEntry {
  digest: string;
  mediaType: string;
  size: number;
  storePaths: string[];
}

export interface ConfigChange {
  /** entrypoint, cmd, user, workdir, os, architecture, variant: the whole value; env, label, port: one key. */
  field: string;
  key?: string;
  /** null when absent on that side. */
  from: unknown;
  to: unknown;
}

export interface ImageDiff {
  from: ImageSide;
  to: ImageSide;
  /** True when anything below differs. */
  differ: boolean;
  storePaths: { added: string[]; removed: string[]; changed: ChangedPath[]; unchanged: number };
  layers: { added: LayerEntry[]; removed: LayerEntry[]; unchanged: number };
  /** `otherChanges`: the configs differ in fields not listed (created, history, ...). */
  config: { changes: ConfigChange[]; otherChanges: boolean };
}

export interface DiffInput {
  image: ImageSource;
  layers: LayerPaths[];
}

function baseName(p: string): string {
  return p.slice(p.lastIndexOf("/") + 1);
}
/** The store path name without its hash. */
export function pathName(p: string): string {
  return baseName(p).slice(33);
}

/** Pairs removed and added paths of the same package: same version first (rebuilt), then one old with one new. */
function pairPaths(
  removed: string[],
  added: string[],
): { changed: ChangedPath[]; removed: string[]; added: string[] } {
  const byName = (paths: string[]): Map<string, string[]> => {
    const m = new Map<string, string[]>();
    for (const p of paths) {
      const n = parseDrvName(pathName(p)).name;
      m.set(n, [...(m.get(n) ?? []), p]);
    }
    return m;
  };
  const olds = byName(removed);
  const news = byName(added);
  const changed: ChangedPath[] = [];
  const pairedOld = new Set<string>();
  const pairedNew = new Set<string>();
  const pair = (name: string, from: string, to: string): void => {
    const fromVersion = parseDrvName(pathName(from)).version;
    const toVersion = parseDrvName(pathName(to)).version;
    changed.push({ name, from, to, fromVersion, toVersion, rebuilt: fromVersion === toVersion });
    pairedOld.add(from);
    pairedNew.add(to);
  };
  for (const [name, o] of olds) {
    const n = news.get(name);
    if (!n) continue;
    for (const from of o) {
      const to = n.find((x) => !pairedNew.has(x) && pathName(x) === pathName(from));
      if (to) pair(name, from, to);
    }
    const oLeft = o.filter((x) => !pairedOld.has(x));
    const nLeft = n.filter((x) => !pairedNew.has(x));
    if (oLeft.length === 1 && nLeft.length === 1) pair(name, oLeft[0], nLeft[0]);
  }
  changed.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.from < b.from ? -1 : 1));
  return {
    changed,
    removed: removed.filter((p) => !pairedOld.has(p)),
    added: added.filter((p) => !pairedNew.has(p)),
  };
}

type Json = Record<string, unknown>;

function section(config: Json): Json {
  const c = config.config;
  return typeof c === "object" && c !== null && !Array.isArray(c) ? (c as Json) : {};
}

function envMap(v: unknown): Map<string, string> {
  const m = new Map<string, string>();
  if (Array.isArray(v))
    for (const e of v)
      if (typeof e === "string") {
        const i = e.indexOf("=");
        m.set(i < 0 ? e : e.slice(0, i), i < 0 ? "" : e.slice(i + 1));
      }
  return m;
}

function objectMap(v: unknown): Map<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) ? new Map(Object.entries(v)) : new Map();
}

const same = (a: unknown, b: unknown): boolean => JSON.stringify(a ?? null) === JSON.stringify(b ?? null);

function keyChanges(
  field: string,
  a: Map<string, unknown>,
  b: Map<string, unknown>,
  out: ConfigChange[],
): void {
  for (const key of [...new Set([...a.keys(), ...b.keys()])].sort())
    if (!a.has(key) || !b.has(key) || !same(a.get(key), b.get(key)))
      out.push({ field, key, from: a.has(key) ? a.get(key) : null, to: b.has(key) ? b.get(key) : null });
}

export function configChanges(a: Json, b: Json): ConfigChange[] {
  const out: ConfigChange[] = [];
  const ca = section(a);
  const cb = section(b);
  for (const [field, key, from, to] of [
    ["os", "os", a, b],
    ["architecture", "architecture", a, b],
    ["variant", "variant", a, b],
    ["entrypoint", "Entrypoint", ca, cb],
    ["cmd", "Cmd", ca, cb],
  ] as const)
    if (!same(from[key], to[key])) out.push({ field, from: from[key] ?? null, to: to[key] ?? null });
  keyChanges("env", envMap(ca.Env), envMap(cb.Env), out);
  for (const [field, key] of [
    ["user", "User"],
    ["workdir", "WorkingDir"],
  ] as const)
    // An empty string and no field mean the same to a runtime.
    if ((ca[key] || "") !== (cb[key] || "")) out.push({ field, from: ca[key] || null, to: cb[key] || null });
  keyChanges("label", objectMap(ca.Labels), objectMap(cb.Labels), out);
  const ports = (v: unknown): Map<string, unknown> => new Map([...objectMap(v).keys()].map((k) => [k, true]));
  keyChanges("port", ports(ca.ExposedPorts), ports(cb.ExposedPorts), out);
  return out;
}

function side(image: ImageSource): ImageSide {
  return {
    ref: image.ref,
    manifest: image.manifest.digest,
    config: image.config.digest,
    platform: formatPlatform(image.platform),
  };
}

function layerEntry(l: LayerPaths): LayerEntry {
  return {
    digest: l.descriptor.digest,
    mediaType: l.descriptor.mediaType,
    size: l.descriptor.size,
    storePaths: l.storePaths,
  };
}

export function diffImages(a: DiffInput, b: DiffInput): ImageDiff {
  const pa = imageStorePaths(a.layers);
  const pb = imageStorePaths(b.layers);
  const sa = new Set(pa);
  const sb = new Set(pb);
  const paired = pairPaths(
    pa.filter((p) => !sb.has(p)),
    pb.filter((p) => !sa.has(p)),
  );
  const da = new Set(a.layers.map((l) => l.descriptor.digest));
  const db = new Set(b.layers.map((l) => l.descriptor.digest));
  const uniq = (ls: LayerPaths[]): LayerPaths[] =>
    ls.filter((l, i) => ls.findIndex((x) => x.descriptor.digest === l.descriptor.digest) === i);
  const layers = {
    added: uniq(b.layers)
      .filter((l) => !da.has(l.descriptor.digest))
      .map(layerEntry),
    removed: uniq(a.layers)
      .filter((l) => !db.has(l.descriptor.digest))
      .map(layerEntry),
    unchanged: uniq(b.layers).filter((l) => da.has(l.descriptor.digest)).length,
  };
  const changes = configChanges(a.image.config.json, b.image.config.json);
  const otherChanges = changes.length === 0 && a.image.config.digest !== b.image.config.digest;
  const storePaths = { ...paired, unchanged: pb.filter((p) => sa.has(p)).length };
  const differ =
    storePaths.added.length + storePaths.removed.length + storePaths.changed.length > 0 ||
    layers.added.length + layers.removed.length > 0 ||
    changes.length > 0 ||
    otherChanges;
  return {
    from: side(a.image),
    to: side(b.image),
    differ,
    storePaths: {
      added: storePaths.added,
      removed: storePaths.removed,
      changed: storePaths.changed,
      unchanged: storePaths.unchanged,
    },
    layers,
    config: { changes, otherChanges },
  };
}
