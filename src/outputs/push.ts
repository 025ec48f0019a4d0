// Pushes a built image to a registry with the OCI distribution API: every blob (layers, config) is checked with
// HEAD and skipped when present, else mounted from another repository of the same registry when we know one
// that has it (the caller's mountFrom, or the local push record of push-record.ts), else uploaded (monolithic
// PUT for small blobs, PATCH chunks with Content-Range for big ones, streamed from disk); then the manifest is
// PUT with its exact bytes and the registry's Docker-Content-Digest is checked against ours. A few blobs go up
// in parallel; the first failure aborts the others. This module decides what is sent in which order; each
// call goes through one RegistryClient (registry-session.ts).
import { NixociError, quote } from "../util/errors.js";
import { isDigest } from "../oci/digest.js";
import type { BuiltImage } from "../oci/image.js";
import type { BuiltIndex } from "../oci/index.js";
import { defaultPushRecordPath, readPushRecord, updatePushRecord } from "./push-record.js";
import { RegistryClient, type RegistryClientOptions } from "./registry-session.js";

export type PushEvent =
  | { type: "blob-exists"; digest: string; size: number }
  | { type: "blob-mounted"; digest: string; size: number; from: string }
  | { type: "blob-upload-start"; digest: string; size: number }
  | { type: "blob-progress"; digest: string; size: number; sent: number }
  | { type: "blob-uploaded"; digest: string; size: number }
  | { type: "manifest-pushed"; digest: string; reference: string };

export interface PushTarget {
  /** "host[:port]" */
  registry: string;
  repository: string;
  tag?: string;
  /** Push by digest (must be the image's manifest digest) instead of a tag. */
  digest?: string;
}

export interface PushOptions extends RegistryClientOptions {
  onEvent?: (e: PushEvent) => void;
  /** Repositories of the same registry that may hold the blobs (cross-repository mount candidates). */
  mountFrom?: string[];
  /**
   * The local record of repositories we pushed each digest to (mount hints for later pushes): a file path,
   * false for none; default $XDG_CACHE_HOME/nixoci/pushed.json (~/.cache/nixoci/pushed.json).
   */
  pushRecord?: string | false;
  /** Blobs up to this size are uploaded with one PUT; bigger ones in PATCH chunks (default 8 MiB). */
  monolithicLimit?: number;
  /** PATCH chunk size (default 16 MiB). */
  chunkSize?: number;
  /** Blob uploads in flight (default 3). */
  concurrency?: number;
  /** Environment for credentials and cache paths (default process.env). */
  env?: NodeJS.ProcessEnv;
}

export interface PushResult {
  manifestDigest: string;
  /** Blob digests uploaded, mounted from another repository, or already present. */
  uploaded: string[];
  mounted: string[];
  skipped: string[];
}

const DEFAULT_MONOLITHIC_LIMIT = 8 << 20;
const DEFAULT_CHUNK_SIZE = 16 << 20;
const MAX_MOUNT_TRIES = 3;

export async function pushImage(
  image: BuiltImage,
  target: PushTarget,
  opts: PushOptions = {},
): Promise<PushResult> {
  const { registry, repository } = target;
  const input = `${registry}/${repository}`;
  if (target.digest !== undefined && target.digest !== image.manifest.digest)
    throw new NixociError(
      `${input}@${target.digest}`,
      `the image's manifest digest is ${image.manifest.digest}, not the requested digest`,
    );
  const reference = target.digest ?? target.tag ?? "latest";
  const emit = opts.onEvent ?? (() => undefined);

  // Every blob the manifest names, once each, with the file it is read from (the config may come from its
  // bytes when the store lacks it).
  const blobs: Array<{ digest: string; size: number; source: string | Buffer }> = [];
  const seen = new Set<string>();
  for (const d of [{ digest: image.config.digest, size: image.config.size }, ...image.layers]) {
    if (seen.has(d.digest)) continue;
    seen.add(d.digest);
    if (!isDigest(d.digest)) throw new NixociError(input, `malformed blob digest ${quote(d.digest)}`);
    const path = image.blobs.path(d.digest);
    const size = await image.blobs.size(d.digest);
    if (size === undefined && d.digest === image.config.digest) {
      blobs.push({ digest: d.digest, size: d.size, source: image.config.bytes });
      continue;
    }
    if (size === undefined) throw new NixociError(path, "blob to push is missing from the blob store");
    if (size !== d.size) throw new NixociError(path, `blob has ${size} bytes, the manifest says ${d.size}`);
    blobs.push({ digest: d.digest, size: d.size, source: path });
  }

  const recordFile =
    opts.pushRecord === false ? undefined : (opts.pushRecord ?? defaultPushRecordPath(opts.env));
  const record = recordFile ? await readPushRecord(recordFile) : undefined;
  const hints = (digest: string): string[] => {
    const out = [...(opts.mountFrom ?? []), ...(record?.registries[registry]?.[digest] ?? [])];
    return [...new Set(out)].filter((r) => r !== repository).slice(0, MAX_MOUNT_TRIES);
  };

  const client = new RegistryClient(registry, repository, opts);
  const result: PushResult = {
    manifestDigest: image.manifest.digest,
    uploaded: [],
    mounted: [],
    skipped: [],
  };
  const monolithicLimit = opts.monolithicLimit ?? DEFAULT_MONOLITHIC_LIMIT;
  const chunkSize = opts.chunkSize ?? DEFAULT_CHUNK_SIZE;
  if (!(chunkSize > 0)) throw new RangeError(`chunkSize must be > 0: ${chunkSize}`);
  try {
    await client.ping();
    const abort = new AbortController();
    const signal = abort.signal;
    const pushBlob = async (b: (typeof blobs)[number]): Promise<void> => {
      if (await client.hasBlob(b.digest, signal)) {
        result.skipped.push(b.digest);
        emit({ type: "blob-exists", digest: b.digest, size: b.size });
        return;
      }
      let session: URL | undefined;
      for (const from of hints(b.digest)) {
        const m = await client.mountBlob(b.digest, from, signal);
        if (m === "mounted") {
          result.mounted.push(b.digest);
          emit({ type: "blob-mounted", digest: b.digest, size: b.size, from });
          return;
        }
        if (m) {
          session = m;
          break;
        }
      }
      session ??= await client.startUpload(signal);
      emit({ type: "blob-upload-start", digest: b.digest, size: b.size });
      await client.uploadBlob(session, b.source, b.digest, b.size, {
        monolithicLimit,
        chunkSize,
        signal,
        onSent: (sent) => emit({ type: "blob-progress", digest: b.digest, size: b.size, sent }),
      });
      result.uploaded.push(b.digest);
      emit({ type: "blob-uploaded", digest: b.digest, size: b.size });
    };

    // Bounded parallelism; the first failure aborts the requests in flight and is the one reported.
    let firstError: unknown;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (firstError === undefined && next < blobs.length) {
        const b = blobs[next++];
        try {
          await pushBlob(b);
        } catch (err) {
          if (firstError === undefined) {
            firstError = err;
            abort.abort();
          }
        }
      }
    };
    const n = Math.max(1, Math.min(opts.concurrency ?? 3, blobs.length));
    await Promise.all(Array.from({ length: n }, worker));
    if (firstError !== undefined) throw firstError;

    result.manifestDigest = await putManifest(client, reference, image.manifest, opts);
  } finally {
    client.close();
  }
  if (recordFile) {
    try {
      await updatePushRecord(
        recordFile,
        registry,
        repository,
        blobs.map((b) => b.digest),
      );
    } catch {
      // Hints only: an unwritable cache directory must not fail a push that worked.
    }
  }
  return result;
}

/**
 * Pushes a multi-platform image: each platform's image (blobs, then its manifest by digest, so no tag ever names
 * a single platform), then the index under the tag (or by its digest). A registry serves the index only once
 * every manifest it lists is there, so this order is the one that works.
 */
export async function pushIndex(
  built: BuiltIndex,
  target: PushTarget,
  opts: PushOptions = {},
): Promise<PushResult> {
  const input = `${target.registry}/${target.repository}`;
  if (target.digest !== undefined && target.digest !== built.index.digest)
    throw new NixociError(
      `${input}@${target.digest}`,
      `the image's index digest is ${built.index.digest}, not the requested digest`,
    );
  const result: PushResult = { manifestDigest: built.index.digest, uploaded: [], mounted: [], skipped: [] };
  for (const image of built.images) {
    const r = await pushImage(
      image,
      { registry: target.registry, repository: target.repository, digest: image.manifest.digest },
      opts,
    );
    // Platforms may share blobs: the second push finds them there, and they count once, as uploaded.
    const counted = new Set([...result.uploaded, ...result.mounted, ...result.skipped]);
    result.uploaded.push(...r.uploaded.filter((d) => !counted.has(d)));
    result.mounted.push(...r.mounted.filter((d) => !counted.has(d)));
    result.skipped.push(...r.skipped.filter((d) => !counted.has(d)));
  }
  const reference = target.digest ?? target.tag ?? "latest";
  const client = new RegistryClient(target.registry, target.repository, opts);
  try {
    result.manifestDigest = await putManifest(client, reference, built.index, opts);
  } finally {
    client.close();
  }
  return result;
}

/** Puts an image manifest or an index under `reference` (tag or digest), tells the watcher, returns its digest. */
async function putManifest(
  client: RegistryClient,
  reference: string,
  manifest: { bytes: Buffer; mediaType: string; digest: string },
  opts: PushOptions,
): Promise<string> {
  const digest = await client.putManifest(reference, manifest.bytes, manifest.mediaType, manifest.digest);
  opts.onEvent?.({ type: "manifest-pushed", digest, reference });
  return digest;
}
