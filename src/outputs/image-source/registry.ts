// A registry as an image source (docker://HOST/NAME[:TAG|@DIGEST]; registry-session.ts: auth, plain HTTP on
// loopback or --insecure): manifests fetched by reference and checked against the digests the registry and the
// reference say, indexes resolved to the platform, blobs streamed.
import type { Platform } from "../../image/platforms.js";
import { isDigest, sha256Digest, type Digest } from "../../oci/digest.js";
import { DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST } from "../../oci/media-types.js";
import { MAX_JSON_BYTES } from "../../util/json.js";
import { collectBounded } from "../../util/streams.js";
import { RegistryClient } from "../registry-session.js";
import {
  buildSource,
  resolveManifest,
  verify,
  type BlobAccess,
  type ImageSource,
  type LayerDescriptor,
  type OpenImageOptions,
} from "./source.js";

const MANIFEST_ACCEPT = [OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_MANIFEST_LIST];

export async function openRegistry(
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
