// The image config and manifest JSON, built with a fixed key order so that the same inputs always give the
// same bytes (and so the same digests) on every machine.
import type { Descriptor } from "../oci/descriptor.js";
import type { Digest } from "../oci/digest.js";
import { OCI_CONFIG, OCI_MANIFEST } from "../oci/media-types.js";
import type { ImageSpec } from "./spec.js";

export const DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** The `config` section: what the runtime uses to start the container. */
export function runtimeConfig(spec: ImageSpec, extraEnv: string[] = []): Record<string, unknown> {
  const env = [...spec.env];
  const names = new Set(env.map((e) => e.slice(0, e.indexOf("="))));
  // A PATH that reaches the symlink farm's /bin, unless the user set one (Docker only adds it on `run`).
  if (!names.has("PATH")) env.unshift(`PATH=${DEFAULT_PATH}`);
  for (const e of extraEnv) if (!names.has(e.slice(0, e.indexOf("=")))) env.push(e);
  const c: Record<string, unknown> = {};
  if (spec.user !== undefined) c.User = spec.user;
  if (spec.expose.length) {
    const ports = [...new Set(spec.expose.map((p) => (p.includes("/") ? p : `${p}/tcp`)))].sort();
    c.ExposedPorts = Object.fromEntries(ports.map((p) => [p, {}]));
  }
  c.Env = env;
  if (spec.entrypoint) c.Entrypoint = spec.entrypoint;
  if (spec.cmd) c.Cmd = spec.cmd;
  if (spec.workdir !== undefined) c.WorkingDir = spec.workdir;
  const labels = Object.keys(spec.labels).sort();
  if (labels.length) c.Labels = Object.fromEntries(labels.map((k) => [k, spec.labels[k]]));
  return c;
}

export function imageConfigJson(spec: ImageSpec, diffIds: Digest[], extraEnv: string[] = []): Buffer {
  const config = {
    created: spec.created,
    architecture: spec.arch,
    ...(spec.variant ? { variant: spec.variant } : {}),
    os: spec.os,
    config: runtimeConfig(spec, extraEnv),
    rootfs: { type: "layers", diff_ids: diffIds },
    history: diffIds.map(() => ({ created: spec.created, created_by: "nixoci" })),
  };
  return Buffer.from(JSON.stringify(config));
}

export function manifestJson(config: { digest: Digest; size: number }, layers: Descriptor[]): Buffer {
  const manifest = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: OCI_CONFIG, digest: config.digest, size: config.size },
    layers: layers.map((l) => {
      const d: Record<string, unknown> = { mediaType: l.mediaType, digest: l.digest, size: l.size };
      if (l.annotations && Object.keys(l.annotations).length) d.annotations = l.annotations;
      return d;
    }),
  };
  return Buffer.from(JSON.stringify(manifest));
}
