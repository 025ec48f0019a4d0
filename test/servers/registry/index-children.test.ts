// An image index names manifests: every child must be a manifest stored in the repository. A blob that is no
// manifest (a config, a layer), or a manifest of another repository, is refused with 400 MANIFEST_BLOB_UNKNOWN,
// and GET /v2/<name>/manifests/<digest> serves only digests stored as manifests.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { sha256Digest, type Digest } from "../../../src/oci/digest.js";
import { OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST } from "../../../src/oci/media-types.js";
import { request, startServer, type Res, type TestServer } from "../../support/registry-server.js";

let srv: TestServer;
before(async () => {
  srv = await startServer();
});
after(() => srv?.stop());

async function postBlob(repo: string, bytes: Buffer): Promise<Digest> {
  const digest = sha256Digest(bytes);
  const res = await request(srv.host, "POST", `/v2/${repo}/blobs/uploads/?digest=${digest}`, {
    body: bytes,
    headers: { "Content-Type": "application/octet-stream" },
  });
  assert.equal(res.status, 201, res.body.toString());
  return digest;
}

function put(repo: string, ref: string, body: Buffer, mediaType: string): Promise<Res> {
  return request(srv.host, "PUT", `/v2/${repo}/manifests/${ref}`, {
    body,
    headers: { "Content-Type": mediaType },
  });
}

const json = (x: unknown): Buffer => Buffer.from(JSON.stringify(x));

/** An image (config, one layer, manifest) pushed to `repo` under `tag`. */
async function pushImage(repo: string, tag: string) {
  const config = json({
    architecture: "amd64",
    os: "linux",
    rootfs: { type: "layers", diff_ids: [] },
    config: { Labels: { repo } },
  });
  const layer = Buffer.from(`layer of ${repo}`);
  const configDigest = await postBlob(repo, config);
  const layerDigest = await postBlob(repo, layer);
  const manifest = json({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: OCI_CONFIG, digest: configDigest, size: config.length },
    layers: [{ mediaType: OCI_LAYER, digest: layerDigest, size: layer.length }],
  });
  const res = await put(repo, tag, manifest, OCI_MANIFEST);
  assert.equal(res.status, 201, res.body.toString());
  return {
    config: { digest: configDigest, size: config.length },
    manifest: { digest: sha256Digest(manifest), size: manifest.length },
  };
}

function index(...children: { digest: string; size: number }[]): Buffer {
  return json({
    schemaVersion: 2,
    mediaType: OCI_INDEX,
    manifests: children.map((c) => ({
      mediaType: OCI_MANIFEST,
      ...c,
      platform: { architecture: "amd64", os: "linux" },
    })),
  });
}

test("an index naming a config blob as a manifest is refused; the config is never served as a manifest", async () => {
  const img = await pushImage("idx/a", "v1");
  const res = await put("idx/a", "multi", index(img.config), OCI_INDEX);
  assert.equal(res.status, 400, res.body.toString());
  assert.equal(res.code, "MANIFEST_BLOB_UNKNOWN");
  for (const method of ["GET", "HEAD"]) {
    const get = await request(srv.host, method, `/v2/idx/a/manifests/${img.config.digest}`);
    assert.equal(get.status, 404, `${method}: ${get.body.toString()}`);
    if (method === "GET") assert.equal(get.code, "MANIFEST_UNKNOWN");
  }
  // Nor tagged: the refused index left nothing.
  assert.equal((await request(srv.host, "GET", "/v2/idx/a/manifests/multi")).status, 404);
  // The blob itself is still a blob of the repository.
  assert.equal((await request(srv.host, "GET", `/v2/idx/a/blobs/${img.config.digest}`)).status, 200);
});

test("an index's children must be manifests of the same repository, with the sizes it gives", async () => {
  const a = await pushImage("idx/b", "v1");
  const other = await pushImage("idx/other", "v1");
  // A manifest of another repository (its bytes are in the shared blob store).
  const foreign = await put("idx/b", "multi", index(a.manifest, other.manifest), OCI_INDEX);
  assert.equal(foreign.status, 400, foreign.body.toString());
  assert.equal(foreign.code, "MANIFEST_BLOB_UNKNOWN");
  assert.equal((await request(srv.host, "GET", `/v2/idx/b/manifests/${other.manifest.digest}`)).status, 404);
  // A digest nothing has.
  const unknown = await put(
    "idx/b",
    "multi",
    index({ digest: `sha256:${"1".repeat(64)}`, size: 10 }),
    OCI_INDEX,
  );
  assert.equal(unknown.code, "MANIFEST_BLOB_UNKNOWN");
  // The right manifest with a wrong size.
  const size = await put("idx/b", "multi", index({ ...a.manifest, size: a.manifest.size + 1 }), OCI_INDEX);
  assert.equal(size.status, 400);
  assert.equal(size.code, "MANIFEST_INVALID");
  // Its own manifest: accepted and served, the child too.
  const ok = await put("idx/b", "multi", index(a.manifest), OCI_INDEX);
  assert.equal(ok.status, 201, ok.body.toString());
  const got = await request(srv.host, "GET", "/v2/idx/b/manifests/multi", { headers: { Accept: OCI_INDEX } });
  assert.equal(got.status, 200);
  assert.equal(got.headers["content-type"], OCI_INDEX);
  const child = await request(srv.host, "GET", `/v2/idx/b/manifests/${a.manifest.digest}`, {
    headers: { Accept: OCI_MANIFEST },
  });
  assert.equal(child.status, 200);
});

test("a blob recorded as a manifest before children were checked is not served as one", async () => {
  const img = await pushImage("idx/c", "v1");
  // What an index naming the config recorded in the repository before the fix.
  const rev = join(srv.root, "repositories/idx/c/_manifests/revisions/sha256");
  mkdirSync(rev, { recursive: true });
  writeFileSync(
    join(rev, img.config.digest.slice("sha256:".length)),
    JSON.stringify({ mediaType: OCI_MANIFEST }),
  );
  const get = await request(srv.host, "GET", `/v2/idx/c/manifests/${img.config.digest}`);
  assert.equal(get.status, 404, get.body.toString());
  assert.equal(get.code, "MANIFEST_UNKNOWN");
  // Nor can an index now name it.
  const res = await put("idx/c", "multi", index(img.config), OCI_INDEX);
  assert.equal(res.code, "MANIFEST_BLOB_UNKNOWN");
});

test("an index may list other content (BuildKit's registry cache: its layers and cache config) when the repository has those blobs; they are never served as manifests", async () => {
  const img = await pushImage("idx/cache", "v1");
  const cacheConfig = json({ layers: [], records: [] });
  const configDigest = await postBlob("idx/cache", cacheConfig);
  const cacheIndex = (extra: Array<{ mediaType: string; digest: string; size: number }>) =>
    json({
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [
        {
          mediaType: "application/vnd.buildkit.cacheconfig.v0",
          digest: configDigest,
          size: cacheConfig.length,
        },
        ...extra,
      ],
    });
  const layer = { mediaType: OCI_LAYER, digest: img.config.digest, size: img.config.size };
  const ok = await put("idx/cache", "cache", cacheIndex([layer]), OCI_INDEX);
  assert.equal(ok.status, 201, ok.body.toString());
  for (const digest of [configDigest, img.config.digest])
    assert.equal((await request(srv.host, "GET", `/v2/idx/cache/manifests/${digest}`)).status, 404);
  // Blobs the repository does not have, or with another size, are refused as in an image manifest.
  const missing = await put(
    "idx/cache",
    "cache2",
    cacheIndex([{ mediaType: OCI_LAYER, digest: `sha256:${"2".repeat(64)}`, size: 3 }]),
    OCI_INDEX,
  );
  assert.equal(missing.code, "MANIFEST_BLOB_UNKNOWN");
  const size = await put("idx/cache", "cache3", cacheIndex([{ ...layer, size: layer.size + 1 }]), OCI_INDEX);
  assert.equal(size.code, "MANIFEST_INVALID");
});
