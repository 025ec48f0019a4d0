// A tiny real, runnable image made by hand for the output tests (independent of the real layer builder):
// layer 1 holds /bin/busybox (the host's static busybox), layer 2 holds /hello.txt; both are tars written by
// GNU tar and gzip'ed, stored in a BlobStore with an OCI config and manifest.
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { BlobStore } from "../../src/oci/blob-store.js";
import type { Descriptor } from "../../src/oci/descriptor.js";
import { sha256Digest, type Digest } from "../../src/oci/digest.js";
import type { BuiltImage } from "../../src/oci/image.js";
import { OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST } from "../../src/oci/media-types.js";
import { makeTempDir } from "./fixtures.js";
import { run } from "./run.js";

export const BUSYBOX = "/bin/busybox";

export interface MakeImageOptions {
  /** Content of /hello.txt (default "hello from nixoci\n"). */
  hello?: string;
  /** The blob store to put the blobs in (default: a fresh one in a temp dir). */
  blobs?: BlobStore;
  /** Extra incompressible bytes in a third layer (/random.bin), to make a bigger blob. */
  randomBytes?: number;
}

/** A deterministic tar of `files` (relative names under root), as GNU tar writes it. */
function gnuTar(root: string, files: string[]): Buffer {
  return run("tar", [
    "--sort=name",
    "--mtime=@1",
    "--owner=0",
    "--group=0",
    "--numeric-owner",
    "--format=gnu",
    "-C",
    root,
    "-cf",
    "-",
    ...files,
  ]);
}

async function addLayer(blobs: BlobStore, tar: Buffer): Promise<{ desc: Descriptor; diffId: Digest }> {
  const gz = gzipSync(tar, { level: 6 });
  const ref = await blobs.putBytes(gz);
  return {
    desc: { mediaType: OCI_LAYER_GZIP, digest: ref.digest, size: ref.size },
    diffId: sha256Digest(tar),
  };
}

/** Builds the image; everything it needs is in `image.blobs`. */
export async function makeImage(opts: MakeImageOptions = {}): Promise<BuiltImage> {
  const hello = opts.hello ?? "hello from nixoci\n";
  const blobs = opts.blobs ?? new BlobStore(makeTempDir("oci-blobs"));
  const work = makeTempDir("oci-image-src");

  const bbRoot = join(work, "bb");
  mkdirSync(join(bbRoot, "bin"), { recursive: true });
  copyFileSync(BUSYBOX, join(bbRoot, "bin/busybox"));
  const helloRoot = join(work, "hello");
  mkdirSync(helloRoot);
  writeFileSync(join(helloRoot, "hello.txt"), hello);

  const layers = [
    await addLayer(blobs, gnuTar(bbRoot, ["bin"])),
    await addLayer(blobs, gnuTar(helloRoot, ["hello.txt"])),
  ];
  if (opts.randomBytes) {
    const rRoot = join(work, "random");
    mkdirSync(rRoot);
    // Incompressible but deterministic per size: a SHA-256 counter stream.
    const out = Buffer.alloc(opts.randomBytes);
    for (let off = 0, i = 0; off < out.length; i++) {
      const block = createHash("sha256").update(`nixoci-${i}`).digest();
      off += block.copy(out, off);
    }
    writeFileSync(join(rRoot, "random.bin"), out);
    layers.push(await addLayer(blobs, gnuTar(rRoot, ["random.bin"])));
  }

  const platform = { architecture: "amd64", os: "linux" };
  const configBytes = Buffer.from(
    JSON.stringify({
      architecture: platform.architecture,
      os: platform.os,
      config: { Cmd: ["/bin/busybox", "cat", "/hello.txt"], Env: ["PATH=/bin"] },
      rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffId) },
      history: layers.map(() => ({ created: "1970-01-01T00:00:01Z", created_by: "nixoci test" })),
    }),
  );
  const config = await blobs.putBytes(configBytes);
  const manifestBytes = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: OCI_CONFIG, digest: config.digest, size: config.size },
      layers: layers.map((l) => l.desc),
    }),
  );
  const manifest = await blobs.putBytes(manifestBytes);
  return {
    blobs,
    manifest: { digest: manifest.digest, size: manifest.size, bytes: manifestBytes, mediaType: OCI_MANIFEST },
    config: { digest: config.digest, size: config.size, bytes: configBytes, mediaType: OCI_CONFIG },
    layers: layers.map((l) => l.desc),
    diffIds: layers.map((l) => l.diffId),
    platform,
  };
}
