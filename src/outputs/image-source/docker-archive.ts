// `docker save`'s format as an image source (docker-archive:FILE[:NAME:TAG]; NAME:TAG picks by RepoTags). The
// archive has no manifest: one is made up from manifest.json and the members (OCI media types), so every source
// looks alike to its readers.
import { createHash } from "node:crypto";
import { sha256Digest, type Digest } from "../../oci/digest.js";
import {
  OCI_CONFIG,
  OCI_LAYER,
  OCI_LAYER_GZIP,
  OCI_LAYER_ZSTD,
  OCI_MANIFEST,
} from "../../oci/media-types.js";
import { sniffLayerCompression } from "../../util/compression-formats.js";
import { quote } from "../../util/errors.js";
import { MAX_JSON_BYTES } from "../../util/json.js";
import { collectBounded } from "../../util/streams.js";
import { archiveFiles, readFileBounded, type LayoutFiles } from "./layout.js";
import {
  buildSource,
  MAX_ENTRIES,
  type BlobAccess,
  type ImageSource,
  type LayerDescriptor,
} from "./source.js";

/** What a docker-archive layer member's name says its digest is (nixoci's and Docker 25's names), if anything. */
function digestFromMemberName(name: string): Digest | undefined {
  const m = /^(?:blobs\/sha256\/)?([a-f0-9]{64})(?:\.tar(?:\.gz|\.zst)?)?$/.exec(name);
  return m ? `sha256:${m[1]}` : undefined;
}

const LAYER_MEDIA_TYPES = { gzip: OCI_LAYER_GZIP, zstd: OCI_LAYER_ZSTD, none: OCI_LAYER } as const;

/** A layer member's media type, told by its first bytes (`docker save` does not say). */
async function sniffMediaType(files: LayoutFiles, name: string): Promise<string> {
  const s = files.stream(name);
  try {
    for await (const c of s) return LAYER_MEDIA_TYPES[sniffLayerCompression(c as Buffer)];
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

export async function openDockerArchive(
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
