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
import { createReadStream } from "node:fs";
import { formatPlatform, type Platform } from "../image/platforms.js";
import { CheckedStream } from "../util/checked-stream.js";
import { open, stat } from "node:fs/promises";
import { join } from "node:path";
import { Readable } from "node:stream";
import { createHash } from "node:crypto";
import { NixociError, quote } from "../util/errors.js";
import { collectBounded } from "../util/streams.js";
import { DEFAULT_STORE_DIR, parseStorePath } from "../nix/store-path.js";
import type { Descriptor } from "../oci/descriptor.js";
import { digestHex, isDigest, sha256Digest, type Digest } from "../oci/digest.js";
import {
  DOCKER_MANIFEST,
  DOCKER_MANIFEST_LIST,
  OCI_CONFIG,
  OCI_INDEX,
  OCI_LAYER,
  OCI_LAYER_GZIP,
  OCI_LAYER_ZSTD,
  OCI_MANIFEST,
} from "../oci/media-types.js";
import { defaultArch } from "../image/spec.js";
import { readTarMembers } from "../image/tar-reader.js";
import { REF_NAME_ANNOTATION } from "./layout.js";
import { layerStorePaths, parseNixImageRef, readNixImage, NIX_IMAGE_REF_PREFIX } from "./nix-image.js";
import { parseOutputRef } from "./outputs.js";
import { RegistryClient } from "./registry-session.js";

/** Manifests, indexes, configs and manifest.json are JSON of at most this size. */
export const MAX_JSON_BYTES = 4 << 20;
/** More layers or index entries than this is not an image anyone built. */
const MAX_ENTRIES = 4096;

/** The platform this machine runs. */
export function hostPlatform(): Platform {
  return { os: "linux", architecture: defaultArch() };
}

export type LayerDescriptor = Descriptor & { digest: Digest };

export interface SourceLayer {
  descriptor: LayerDescriptor;
  /** The config's rootfs.diff_ids entry (the uncompressed tar's digest), when the config has one. */
  diffId?: Digest;
  /** Store paths nixoci's layer annotations name (validated), in annotation order; empty when none. */
  storePaths: string[];
}

export interface ImageSource {
  /** The reference as given (every error names it). */
  readonly ref: string;
  readonly manifest: { digest: Digest; mediaType: string; bytes: Buffer };
  readonly config: { digest: Digest; mediaType: string; bytes: Buffer; json: Record<string, unknown> };
  readonly layers: SourceLayer[];
  readonly platform: Platform;
  /** Layer i's blob, streamed and verified against its descriptor (the stream fails at its end otherwise). */
  openLayer(i: number): Promise<Readable>;
  close(): Promise<void>;
}

export interface OpenImageOptions {
  /** The platform an index resolves to (default: the host's). */
  platform?: Platform;
  /** Registry credentials USER:PASS (default: Docker's config.json). */
  creds?: string;
  /** Plain HTTP to a registry that is not on loopback. */
  insecure?: boolean;
  /** The store directory annotated store paths must be in. */
  storeDir?: string;
  env?: NodeJS.ProcessEnv;
}

/** Where the blobs of one source come from. */
interface BlobAccess {
  /** A blob's bytes, at most `max`; not yet verified. */
  read(d: LayerDescriptor, max: number): Promise<Buffer>;
  /** A blob's stream; not yet verified. */
  stream(d: LayerDescriptor): Promise<Readable>;
  close(): Promise<void>;
}

// ---- validation helpers ----

function parseJsonObject(bytes: Buffer, what: string): Record<string, unknown> {
  try {
    const v = JSON.parse(bytes.toString("utf8")) as unknown;
    if (typeof v === "object" && v !== null && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // below
  }
  throw new Error(`${what} is not a JSON object`);
}

function checkDescriptor(x: unknown, what: string): LayerDescriptor {
  const d = x as Descriptor | null;
  if (
    typeof d !== "object" ||
    d === null ||
    typeof d.mediaType !== "string" ||
    typeof d.digest !== "string" ||
    !isDigest(d.digest) ||
    !Number.isSafeInteger(d.size) ||
    d.size < 0
  )
    throw new Error(`${what} is not a valid descriptor (mediaType, sha256 digest, size)`);
  if (d.annotations !== undefined) {
    const a = d.annotations as unknown;
    if (typeof a !== "object" || a === null || Object.values(a).some((v) => typeof v !== "string"))
      throw new Error(`${what} has malformed annotations`);
  }
  return d as LayerDescriptor;
}

function verify(bytes: Buffer, d: LayerDescriptor, what: string): Buffer {
  if (bytes.length !== d.size)
    throw new Error(`${what} ${d.digest} has ${bytes.length} bytes, its descriptor says ${d.size}`);
  if (sha256Digest(bytes) !== d.digest) throw new Error(`${what} ${d.digest} does not match its digest`);
  return bytes;
}

async function readVerified(access: BlobAccess, d: LayerDescriptor, what: string): Promise<Buffer> {
  if (d.size > MAX_JSON_BYTES)
    throw new Error(`${what} ${d.digest} is ${d.size} bytes (limit ${MAX_JSON_BYTES})`);
  return verify(await access.read(d, d.size), d, what);
}

/** Counts and hashes a blob as it flows; fails at the end (or as soon as it is too long) when it does not match. */
function verifyingStream(d: LayerDescriptor, input: string): CheckedStream {
  return new CheckedStream(
    { algo: "sha256", digest: Buffer.from(d.digest.slice("sha256:".length), "hex"), size: d.size },
    input,
    {
      tooLong: (size) => `blob ${d.digest} is longer than its descriptor's ${size} bytes`,
      wrongSize: (size, got) => `blob ${d.digest} has ${got} bytes, its descriptor says ${size}`,
      wrongDigest: () => `blob ${d.digest} does not match its digest`,
    },
  );
}

function isIndexType(mediaType: string): boolean {
  return mediaType === OCI_INDEX || mediaType === DOCKER_MANIFEST_LIST;
}

function platformOf(d: Descriptor): Platform | undefined {
  const p = d.platform as Partial<Platform> | undefined;
  if (!p || typeof p.os !== "string" || typeof p.architecture !== "string") return undefined;
  return p.variant
    ? { os: p.os, architecture: p.architecture, variant: p.variant }
    : { os: p.os, architecture: p.architecture };
}

function platformMatches(have: Platform, want: Platform): boolean {
  return (
    have.os === want.os &&
    have.architecture === want.architecture &&
    (want.variant === undefined || have.variant === want.variant)
  );
}

/** The index entry for `want`; the error lists the platforms there are. */
function selectPlatform(entries: LayerDescriptor[], want: Platform): LayerDescriptor {
  const manifests = entries.filter((e) => !isIndexType(e.mediaType) && platformOf(e));
  const hit = manifests.find((e) => platformMatches(platformOf(e)!, want));
  if (hit) return hit;
  const there = manifests.map((e) => formatPlatform(platformOf(e)!));
  throw new Error(
    `no ${formatPlatform(want)} image in the index (it has ${there.length ? there.join(", ") : "no platform-specific image"}); choose one with --platform`,
  );
}

// ---- from a manifest to an image ----

interface Resolved {
  digest: Digest;
  mediaType: string;
  bytes: Buffer;
  json: Record<string, unknown>;
}

/** Follows indexes (at most two deep) to the manifest for the platform. */
async function resolveManifest(
  bytes: Buffer,
  digest: Digest,
  mediaTypeHint: string,
  want: Platform,
  fetch: (d: LayerDescriptor) => Promise<Buffer>,
  depth = 0,
): Promise<Resolved> {
  const json = parseJsonObject(bytes, `manifest ${digest}`);
  const mediaType = typeof json.mediaType === "string" ? json.mediaType : mediaTypeHint;
  if (json.schemaVersion !== 2) throw new Error(`manifest ${digest} is not schemaVersion 2`);
  if (isIndexType(mediaType) || (Array.isArray(json.manifests) && json.layers === undefined)) {
    if (depth >= 2) throw new Error(`index ${digest} nests indexes too deep`);
    if (!Array.isArray(json.manifests) || json.manifests.length === 0)
      throw new Error(`index ${digest} lists no manifest`);
    if (json.manifests.length > MAX_ENTRIES) throw new Error(`index ${digest} lists too many manifests`);
    const entries = json.manifests.map((m, i) => checkDescriptor(m, `index ${digest} manifests[${i}]`));
    const pick = selectPlatform(entries, want);
    return resolveManifest(await fetch(pick), pick.digest, pick.mediaType, want, fetch, depth + 1);
  }
  if (mediaType !== OCI_MANIFEST && mediaType !== DOCKER_MANIFEST)
    throw new Error(`manifest ${digest} has media type ${quote(mediaType)}, not an image manifest`);
  return { digest, mediaType, bytes, json };
}

async function buildSource(
  ref: string,
  access: BlobAccess,
  m: Resolved,
  storeDir: string,
): Promise<ImageSource> {
  const configDesc = checkDescriptor(m.json.config, "manifest config");
  if (!Array.isArray(m.json.layers)) throw new Error("the manifest has no layers array");
  if (m.json.layers.length > MAX_ENTRIES)
    throw new Error(`the manifest lists ${m.json.layers.length} layers`);
  const descriptors = m.json.layers.map((l, i) => checkDescriptor(l, `manifest layers[${i}]`));
  const configBytes = await readVerified(access, configDesc, "config");
  const config = parseJsonObject(configBytes, "config");
  const rootfs = config.rootfs as { diff_ids?: unknown } | undefined;
  const diffIds = rootfs?.diff_ids;
  if (
    !Array.isArray(diffIds) ||
    diffIds.length !== descriptors.length ||
    !diffIds.every((d) => typeof d === "string" && isDigest(d))
  )
    throw new Error("config rootfs.diff_ids does not match the manifest's layers");
  const layers: SourceLayer[] = descriptors.map((descriptor, i) => {
    const storePaths = layerStorePaths(descriptor);
    for (const p of storePaths)
      parseStorePath(p, storeDir, `layer ${i} (${descriptor.digest}) store path annotation`);
    return { descriptor, diffId: diffIds[i] as Digest, storePaths };
  });
  const platform: Platform = { os: String(config.os ?? ""), architecture: String(config.architecture ?? "") };
  if (typeof config.variant === "string") platform.variant = config.variant;
  return {
    ref,
    manifest: { digest: m.digest, mediaType: m.mediaType, bytes: m.bytes },
    config: { digest: configDesc.digest, mediaType: configDesc.mediaType, bytes: configBytes, json: config },
    layers,
    platform,
    async openLayer(i: number): Promise<Readable> {
      const d = layers[i].descriptor;
      const raw = await access.stream(d);
      const out = verifyingStream(d, ref);
      raw.on("error", (err) => out.destroy(err));
      out.on("close", () => raw.destroy());
      return raw.pipe(out);
    },
    close: () => access.close(),
  };
}

// ---- OCI layouts (directories and archives) ----

/** Files of a layout: a directory or the members of a tar. */
interface LayoutFiles {
  size(name: string): Promise<number | undefined>;
  stream(name: string): Readable;
}

function dirFiles(dir: string): LayoutFiles {
  return {
    async size(name) {
      const st = await stat(join(dir, name)).catch(() => undefined);
      return st?.isFile() ? st.size : undefined;
    },
    stream: (name) => createReadStream(join(dir, name), { highWaterMark: 1 << 20 }),
  };
}

/** Indexes a tar file's regular members (one pass over its headers), for reads by offset. */
async function archiveFiles(file: string, input: string): Promise<LayoutFiles> {
  const members = new Map<string, { offset: number; size: number }>();
  const fh = await open(file, "r").catch((err: NodeJS.ErrnoException) => {
    throw new Error(err.code === "ENOENT" ? "no such file" : err.message);
  });
  await fh.close();
  const stream = createReadStream(file, { highWaterMark: 1 << 20 });
  try {
    for await (const m of readTarMembers(stream, input)) {
      if (m.type !== "0" && m.type !== "7") continue;
      const name = m.name.replace(/^(\.\/)+/, "").replace(/^\/+/, "");
      members.set(name, { offset: m.dataOffset, size: m.size });
    }
  } finally {
    stream.destroy();
  }
  return {
    size: async (name) => members.get(name)?.size,
    stream(name) {
      const m = members.get(name);
      if (!m) throw new Error(`the archive has no member ${quote(name)}`);
      if (m.size === 0) return Readable.from([]);
      return createReadStream(file, { start: m.offset, end: m.offset + m.size - 1, highWaterMark: 1 << 20 });
    },
  };
}

async function readFileBounded(files: LayoutFiles, name: string, max: number): Promise<Buffer | undefined> {
  const size = await files.size(name);
  if (size === undefined) return undefined;
  if (size > max) throw new Error(`${name} is ${size} bytes (limit ${max})`);
  return collectBounded(files.stream(name), max);
}

function layoutAccess(files: LayoutFiles): BlobAccess {
  const blobName = (d: LayerDescriptor): string => `blobs/sha256/${digestHex(d.digest)}`;
  return {
    async read(d, max) {
      const b = await readFileBounded(files, blobName(d), max);
      if (!b) throw new Error(`blob ${d.digest} is missing`);
      return b;
    },
    async stream(d) {
      if ((await files.size(blobName(d))) === undefined) throw new Error(`blob ${d.digest} is missing`);
      return files.stream(blobName(d));
    },
    close: async () => undefined,
  };
}

async function openLayout(
  ref: string,
  files: LayoutFiles,
  tag: string | undefined,
  o: { storeDir: string; platform: Platform },
): Promise<ImageSource> {
  const layoutFile = await readFileBounded(files, "oci-layout", 4096);
  if (!layoutFile) throw new Error("no oci-layout file (not an OCI image layout)");
  if (parseJsonObject(layoutFile, "oci-layout").imageLayoutVersion !== "1.0.0")
    throw new Error("oci-layout: unsupported imageLayoutVersion");
  const indexBytes = await readFileBounded(files, "index.json", MAX_JSON_BYTES);
  if (!indexBytes) throw new Error("no index.json");
  const index = parseJsonObject(indexBytes, "index.json");
  if (!Array.isArray(index.manifests)) throw new Error("index.json has no manifests array");
  if (index.manifests.length > MAX_ENTRIES) throw new Error("index.json lists too many manifests");
  const entries = index.manifests.map((m, i) => checkDescriptor(m, `index.json manifests[${i}]`));
  const tagOf = (e: Descriptor): string | undefined => e.annotations?.[REF_NAME_ANNOTATION];
  const tags = [...new Set(entries.map(tagOf).filter((t): t is string => t !== undefined))].sort();
  let chosen = entries;
  if (tag !== undefined) {
    chosen = entries.filter((e) => tagOf(e) === tag);
    if (chosen.length === 0)
      throw new Error(
        `no image tagged ${quote(tag)} in index.json (tags: ${tags.length ? tags.join(", ") : "none"})`,
      );
  } else if (entries.length === 0) throw new Error("index.json lists no image");
  const access = layoutAccess(files);
  const fetch = (d: LayerDescriptor): Promise<Buffer> => readVerified(access, d, "manifest");
  let entry: LayerDescriptor;
  if (chosen.length === 1) entry = chosen[0];
  else if (new Set(chosen.map(tagOf)).size > 1 || chosen.some((e) => !platformOf(e)))
    throw new Error(
      `index.json holds ${chosen.length} images; name one as ${ref}:TAG (tags: ${tags.join(", ") || "none"})`,
    );
  else entry = selectPlatform(chosen, o.platform);
  const m = await resolveManifest(await fetch(entry), entry.digest, entry.mediaType, o.platform, fetch);
  return buildSource(ref, access, m, o.storeDir);
}

// ---- docker-archive ----

/** What a docker-archive layer member's name says its digest is (nixoci's and Docker 25's names), if anything. */
function digestFromMemberName(name: string): Digest | undefined {
  const m = /^(?:blobs\/sha256\/)?([a-f0-9]{64})(?:\.tar(?:\.gz|\.zst)?)?$/.exec(name);
  return m ? `sha256:${m[1]}` : undefined;
}

async function sniffMediaType(files: LayoutFiles, name: string): Promise<string> {
  const s = files.stream(name);
  try {
    for await (const c of s) {
      const b = c as Buffer;
      if (b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b) return OCI_LAYER_GZIP;
      if (b.length >= 4 && b.readUInt32LE(0) === 0xfd2fb528) return OCI_LAYER_ZSTD;
      return OCI_LAYER;
    }
    return OCI_LAYER;
  } finally {
    s.destroy();
  }
}

async function hashMember(files: LayoutFiles, name: string): Promise<Digest> {
  const h = createHash("sha256");
  for await (const c of files.stream(name)) h.update(c as Buffer);
  return `sha256:${h.digest("hex")}`;
}

async function openDockerArchive(
  ref: string,
  file: string,
  name: string | undefined,
  o: { storeDir: string },
): Promise<ImageSource> {
  const files = await archiveFiles(file, ref);
  const mBytes = await readFileBounded(files, "manifest.json", MAX_JSON_BYTES);
  if (!mBytes) throw new Error("no manifest.json (not a docker-archive)");
  let list: unknown;
  try {
    list = JSON.parse(mBytes.toString("utf8"));
  } catch {
    throw new Error("manifest.json is not JSON");
  }
  if (!Array.isArray(list) || list.length === 0) throw new Error("manifest.json lists no image");
  const images = list as Array<{ Config?: unknown; RepoTags?: unknown; Layers?: unknown }>;
  const repoTags = (x: (typeof images)[number]): string[] =>
    Array.isArray(x.RepoTags) ? x.RepoTags.filter((t): t is string => typeof t === "string") : [];
  const all = images.flatMap(repoTags).sort();
  let img = images[0];
  if (name !== undefined) {
    const hit = images.find((x) => repoTags(x).includes(name));
    if (!hit)
      throw new Error(`no image named ${quote(name)} in manifest.json (names: ${all.join(", ") || "none"})`);
    img = hit;
  } else if (images.length > 1)
    throw new Error(
      `manifest.json holds ${images.length} images; name one as ${ref}:NAME:TAG (names: ${all.join(", ") || "none"})`,
    );
  if (
    typeof img.Config !== "string" ||
    !Array.isArray(img.Layers) ||
    !img.Layers.every((l) => typeof l === "string")
  )
    throw new Error("manifest.json: an entry needs Config and Layers");
  if (img.Layers.length > MAX_ENTRIES) throw new Error("manifest.json lists too many layers");
  const configName = img.Config.replace(/^(\.\/)+/, "");
  const configSize = await files.size(configName);
  if (configSize === undefined)
    throw new Error(`manifest.json names config ${quote(configName)}, which is not in the archive`);
  const configBytes = await readFileBounded(files, configName, MAX_JSON_BYTES);
  const configDigest = sha256Digest(configBytes!);
  const named = digestFromMemberName(configName.replace(/\.json$/, ""));
  if (named && named !== configDigest)
    throw new Error(`config ${quote(configName)} does not match the digest its name says`);
  // The archive has no manifest: one is made up (OCI media types) from the members, so every source looks alike.
  const members = new Map<Digest, string>();
  const layers: LayerDescriptor[] = [];
  for (const raw of img.Layers as string[]) {
    const member = raw.replace(/^(\.\/)+/, "");
    const size = await files.size(member);
    if (size === undefined)
      throw new Error(`manifest.json names layer ${quote(member)}, which is not in the archive`);
    const digest = digestFromMemberName(member) ?? (await hashMember(files, member));
    members.set(digest, member);
    layers.push({ mediaType: await sniffMediaType(files, member), digest, size });
  }
  const manifestJson = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: OCI_CONFIG, digest: configDigest, size: configBytes!.length },
    layers,
  };
  const bytes = Buffer.from(JSON.stringify(manifestJson));
  const access: BlobAccess = {
    async read(d, max) {
      if (d.digest === configDigest) return configBytes!;
      return collectBounded(files.stream(members.get(d.digest)!), max);
    },
    async stream(d) {
      const member = members.get(d.digest);
      if (!member) throw new Error(`blob ${d.digest} is missing`);
      return files.stream(member);
    },
    close: async () => undefined,
  };
  return buildSource(
    ref,
    access,
    {
      digest: sha256Digest(bytes),
      mediaType: OCI_MANIFEST,
      bytes,
      json: manifestJson as unknown as Record<string, unknown>,
    },
    o.storeDir,
  );
}

// ---- registries ----

const MANIFEST_ACCEPT = [OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST];

async function openRegistry(
  ref: string,
  r: { registry: string; repository: string; tag?: string; digest?: string },
  o: OpenImageOptions & { platform: Platform; storeDir: string },
): Promise<ImageSource> {
  const client = new RegistryClient(r.registry, r.repository, {
    creds: o.creds,
    insecure: o.insecure,
    env: o.env,
  });
  try {
    const getManifest = async (
      reference: string,
    ): Promise<{ bytes: Buffer; mediaType: string; digest: Digest }> => {
      const got = await client.getManifest(reference, MANIFEST_ACCEPT);
      if (got.bytes.length > MAX_JSON_BYTES) throw new Error(`manifest ${reference} is too large`);
      const digest = sha256Digest(got.bytes);
      if (isDigest(reference) && digest !== reference)
        throw new Error(`manifest ${reference} does not match its digest`);
      if (got.digest && got.digest !== digest)
        throw new Error(
          `the registry says manifest ${reference} is ${got.digest}, but its bytes are ${digest}`,
        );
      return { bytes: got.bytes, mediaType: got.mediaType.split(";")[0].trim(), digest };
    };
    const top = await getManifest(r.digest ?? r.tag ?? "latest");
    const fetch = async (d: LayerDescriptor): Promise<Buffer> =>
      verify((await getManifest(d.digest)).bytes, d, "manifest");
    const m = await resolveManifest(top.bytes, top.digest, top.mediaType, o.platform, fetch);
    const access: BlobAccess = {
      read: async (d, max) => collectBounded(await client.openBlob(d.digest), max),
      stream: (d) => client.openBlob(d.digest),
      close: async () => client.close(),
    };
    return await buildSource(ref, access, m, o.storeDir);
  } catch (err) {
    client.close();
    throw err;
  }
}

// ---- nix: descriptions ----

async function openNix(ref: string, storePath: string, storeDir: string): Promise<ImageSource> {
  const img = await readNixImage(storePath, storePath, storeDir);
  const json = JSON.parse(img.manifest.bytes.toString("utf8")) as Record<string, unknown>;
  const byDigest = new Map(img.layers.map((l) => [l.descriptor.digest, l]));
  const access: BlobAccess = {
    async read(d, max) {
      if (d.digest === img.config.digest) return img.config.bytes;
      return collectBounded(await this.stream(d), max);
    },
    async stream(d) {
      const l = byDigest.get(d.digest as Digest);
      if (!l?.blobFile)
        throw new Error(
          `layer ${d.digest} is a store layer: its blob is not in the description (its store paths are)`,
        );
      return createReadStream(l.blobFile, { highWaterMark: 1 << 20 });
    },
    close: async () => undefined,
  };
  return buildSource(
    ref,
    access,
    { digest: img.manifest.digest, mediaType: img.manifest.mediaType, bytes: img.manifest.bytes, json },
    storeDir,
  );
}

// ---- the entry point ----

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
