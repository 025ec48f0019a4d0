// The image config of an image built on a base (`--from`): the base's config merged with the spec's, the way a
// Dockerfile's `FROM` followed by ENV/ENTRYPOINT/CMD/... behaves (README: "Building on a base image"):
//   Env          by variable name, the spec's (then nixoci's own, such as SSL_CERT_FILE) over the base's;
//                PATH: the spec's if it sets one, else the base's with the symlink farm's bin directories it
//                lacks appended, else nixoci's default PATH
//   Entrypoint   the spec's, else the base's; a spec entrypoint without a cmd drops the base's Cmd
//   Cmd          the spec's, else the base's (unless the entrypoint was replaced)
//   User, WorkingDir  the spec's, else the base's
//   ExposedPorts, Labels  the union, the spec winning on a label's value
//   Volumes, StopSignal, Healthcheck, Shell  the base's, as they are
//   history      the base's entries, then one per nixoci layer; rootfs.diff_ids the base's, then nixoci's
// Built with a fixed key order, like config.ts, so the same base and inputs give the same bytes.
import type { Digest } from "../oci/digest.js";
import { NixociError } from "../util/errors.js";
import { DEFAULT_PATH } from "./config.js";
import type { BaseImage } from "./base-image.js";
import type { ImageSpec } from "./spec.js";

/** Directories of nixoci's default PATH, in its order: the farm's ones a base's PATH lacks are appended. */
const FARM_BIN_DIRS = DEFAULT_PATH.split(":");
/** Runtime-config keys of the base kept as they are (nothing in a spec sets them). */
const KEPT_KEYS = ["Volumes", "StopSignal", "Healthcheck", "Shell"];

const envName = (e: string): string => e.slice(0, e.indexOf("="));

function stringList(v: unknown): string[] | undefined {
  return Array.isArray(v) && v.every((x) => typeof x === "string") ? (v as string[]) : undefined;
}

function stringMap(v: unknown): Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

/** Env: the base's, overridden by name with the spec's, then nixoci's extras where neither sets the name. */
export function mergeEnv(
  baseEnv: string[],
  specEnv: string[],
  extraEnv: string[],
  farmDirs: ReadonlySet<string>,
): string[] {
  const env = new Map<string, string>();
  for (const e of baseEnv) if (e.includes("=")) env.set(envName(e), e);
  const specNames = new Set(specEnv.map(envName));
  for (const e of specEnv) env.set(envName(e), e);
  if (!specNames.has("PATH")) {
    const base = env.get("PATH");
    if (base === undefined) env.set("PATH", `PATH=${DEFAULT_PATH}`);
    else {
      // An empty entry is the working directory to a shell: an empty PATH is no directory, not that one.
      const dirs = base
        .slice(5)
        .split(":")
        .filter((d, _, all) => d !== "" || all.length > 1);
      const missing = FARM_BIN_DIRS.filter((d) => farmDirs.has(d) && !dirs.includes(d));
      if (missing.length) env.set("PATH", `PATH=${[...dirs, ...missing].join(":")}`);
    }
  }
  for (const e of extraEnv) if (!env.has(envName(e))) env.set(envName(e), e);
  // The base's order, then new names in the order they were given: what `docker inspect` users read.
  return [...env.values()];
}

export function mergedRuntimeConfig(
  spec: ImageSpec,
  base: Record<string, unknown>,
  extraEnv: string[],
  farmDirs: ReadonlySet<string>,
): Record<string, unknown> {
  const c: Record<string, unknown> = {};
  const user = spec.user ?? (typeof base.User === "string" && base.User ? base.User : undefined);
  if (user !== undefined) c.User = user;
  const ports = [
    ...new Set([
      ...Object.keys(stringMap(base.ExposedPorts)),
      ...spec.expose.map((p) => (p.includes("/") ? p : `${p}/tcp`)),
    ]),
  ].sort();
  if (ports.length) c.ExposedPorts = Object.fromEntries(ports.map((p) => [p, {}]));
  c.Env = mergeEnv(stringList(base.Env) ?? [], spec.env, extraEnv, farmDirs);
  const entrypoint = spec.entrypoint ?? stringList(base.Entrypoint);
  // As in a Dockerfile: a new ENTRYPOINT drops the base's CMD, which was written for the old one.
  const cmd = spec.cmd ?? (spec.entrypoint ? undefined : stringList(base.Cmd));
  if (entrypoint) c.Entrypoint = entrypoint;
  if (cmd) c.Cmd = cmd;
  const workdir =
    spec.workdir ?? (typeof base.WorkingDir === "string" && base.WorkingDir ? base.WorkingDir : undefined);
  if (workdir !== undefined) c.WorkingDir = workdir;
  const labels: Record<string, string> = {};
  for (const [k, v] of Object.entries(stringMap(base.Labels))) if (typeof v === "string") labels[k] = v;
  Object.assign(labels, spec.labels);
  const names = Object.keys(labels).sort();
  if (names.length) c.Labels = Object.fromEntries(names.map((k) => [k, labels[k]]));
  for (const k of KEPT_KEYS) if (base[k] !== undefined && base[k] !== null) c[k] = base[k];
  return c;
}

/** Refuses a base whose platform is not the image's: its binaries would not run beside the closure's. */
export function checkBasePlatform(
  base: Pick<BaseImage, "ref" | "os" | "architecture">,
  spec: ImageSpec,
): void {
  if (base.os !== spec.os || base.architecture !== spec.arch)
    throw new NixociError(
      base.ref,
      `the base image is ${base.os}/${base.architecture}, the image being built is ${spec.os}/${spec.arch} ` +
        `(give --arch ${base.architecture}, or a base for ${spec.os}/${spec.arch} with --platform)`,
    );
}

/** The history: the base's entries (one made up per layer when it has none), then one per nixoci layer. */
function history(spec: ImageSpec, base: BaseImage, ownLayers: number): unknown[] {
  const kept = Array.isArray(base.config.history)
    ? (base.config.history as unknown[])
    : base.layers.map(() => ({ created: spec.created, created_by: `base image ${base.manifestDigest}` }));
  return [
    ...kept,
    ...Array.from({ length: ownLayers }, () => ({ created: spec.created, created_by: "nixoci" })),
  ];
}

export function baseImageConfigJson(
  spec: ImageSpec,
  base: BaseImage,
  ownDiffIds: Digest[],
  extraEnv: string[],
  farmDirs: ReadonlySet<string>,
): Buffer {
  const config: Record<string, unknown> = {
    created: spec.created,
    architecture: spec.arch,
    os: spec.os,
  };
  const variant = spec.variant ?? (typeof base.config.variant === "string" ? base.config.variant : undefined);
  if (variant !== undefined) config.variant = variant;
  config.config = mergedRuntimeConfig(spec, stringMap(base.config.config), extraEnv, farmDirs);
  config.rootfs = { type: "layers", diff_ids: [...base.layers.map((l) => l.diffId), ...ownDiffIds] };
  config.history = history(spec, base, ownDiffIds.length);
  return Buffer.from(JSON.stringify(config));
}
