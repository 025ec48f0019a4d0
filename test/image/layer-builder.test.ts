// buildLayerBlob: one pass from a tar stream to a compressed blob with both digests, checked with the real
// sha256sum, gzip and zstd tools.
import { before, describe, test } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { buildLayerBlob } from "../../src/image/layer-builder.js";
import { storePathsTar } from "../../src/image/layer-tar.js";
import { BlobStore } from "../../src/oci/blob-store.js";
import { OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD } from "../../src/oci/media-types.js";
import { NixociError } from "../../src/util/errors.js";
import { buildFixtures, makeTempDir, type FixtureAttr } from "../support/fixtures.js";
import { run, runText } from "../support/run.js";

let fx: Record<FixtureAttr, string>;
let helloPaths: string[];
let allPaths: string[];
let work: string;
let helloTarFile: string;

const inStore = (paths: string[]) => paths.map((p) => ({ storePath: p, realPath: p }));
const sha256sum = (file: string) => `sha256:${runText("sha256sum", [file]).split(" ")[0]}`;

before(async () => {
  fx = buildFixtures();
  helloPaths = runText("nix-store", ["-qR", fx.hello]).split("\n");
  allPaths = runText("nix-store", ["-qR", fx.all]).split("\n");
  work = makeTempDir("layer-builder");
  helloTarFile = join(work, "hello.tar");
  await pipeline(storePathsTar(inStore(helloPaths)), fs.createWriteStream(helloTarFile));
});

function freshStore(): BlobStore {
  return new BlobStore(fs.mkdtempSync(join(work, "blobs-")));
}

describe("buildLayerBlob", () => {
  test("gzip: diffId is the tar's sha256, digest the blob's; the blob gunzips to the tar; deterministic", async () => {
    const blobs = freshStore();
    const layer = await buildLayerBlob(storePathsTar(inStore(helloPaths)), { compression: "gzip", blobs });
    const tarDigest = sha256sum(helloTarFile);
    assert.equal(layer.diffId, tarDigest);
    assert.equal(layer.mediaType, OCI_LAYER_GZIP);
    const blobFile = blobs.path(layer.digest);
    assert.equal(sha256sum(blobFile), layer.digest);
    assert.equal(fs.statSync(blobFile).size, layer.size);
    assert.equal(layer.uncompressedSize, fs.statSync(helloTarFile).size);
    assert.ok(run("gzip", ["-dc", blobFile]).equals(fs.readFileSync(helloTarFile)));
    // gzip header: no name, mtime 0, OS 3 (Unix).
    const head = fs.readFileSync(blobFile).subarray(0, 10);
    assert.deepEqual([...head.subarray(0, 4)], [0x1f, 0x8b, 8, 0]);
    assert.equal(head.readUInt32LE(4), 0);
    assert.equal(head[9], 3);
    // Same bytes again, in another store, while other layers build at the same time.
    const again = await Promise.all([
      buildLayerBlob(storePathsTar(inStore(helloPaths)), { compression: "gzip", blobs: freshStore() }),
      buildLayerBlob(storePathsTar(inStore(allPaths)), { compression: "gzip", blobs: freshStore() }),
      buildLayerBlob(storePathsTar(inStore([...helloPaths].reverse())), { compression: "gzip", blobs }),
    ]);
    assert.deepEqual(again[0], layer);
    assert.deepEqual(again[2], layer);
    // A different level gives another digest but the same diffId.
    const fast = await buildLayerBlob(storePathsTar(inStore(helloPaths)), {
      compression: "gzip",
      level: 1,
      blobs,
    });
    assert.equal(fast.diffId, layer.diffId);
    assert.notEqual(fast.digest, layer.digest);
  });

  test("zstd: decompresses with zstd -d to the same tar", async () => {
    const blobs = freshStore();
    const layer = await buildLayerBlob(storePathsTar(inStore(helloPaths)), { compression: "zstd", blobs });
    assert.equal(layer.mediaType, OCI_LAYER_ZSTD);
    assert.equal(layer.diffId, sha256sum(helloTarFile));
    assert.equal(sha256sum(blobs.path(layer.digest)), layer.digest);
    assert.ok(run("zstd", ["-dc", blobs.path(layer.digest)]).equals(fs.readFileSync(helloTarFile)));
    const again = await buildLayerBlob(storePathsTar(inStore(helloPaths)), { compression: "zstd", blobs });
    assert.deepEqual(again, layer);
  });

  test("none: the blob is the tar and digest == diffId", async () => {
    const blobs = freshStore();
    const layer = await buildLayerBlob(storePathsTar(inStore(helloPaths)), { compression: "none", blobs });
    assert.equal(layer.mediaType, OCI_LAYER);
    assert.equal(layer.digest, layer.diffId);
    assert.equal(layer.diffId, sha256sum(helloTarFile));
    assert.equal(layer.size, fs.statSync(helloTarFile).size);
    assert.ok(fs.readFileSync(blobs.path(layer.digest)).equals(fs.readFileSync(helloTarFile)));
  });

  for (const compression of ["gzip", "zstd", "none"] as const) {
    test(`a failing source leaves no temporary file in the blob directory (${compression})`, async () => {
      const blobs = freshStore();
      const failing = new Readable({
        read() {
          this.push(Buffer.alloc(300_000, 1));
          setImmediate(() => this.destroy(new NixociError("source", "read failed")));
        },
      });
      await assert.rejects(buildLayerBlob(failing, { compression, blobs }), /source: read failed/);
      assert.deepEqual(fs.readdirSync(blobs.blobDir), []);
      // A store path that disappears: the tar stream itself fails.
      await assert.rejects(
        buildLayerBlob(storePathsTar(inStore(["/nix/store/00000000000000000000000000000000-gone"])), {
          compression,
          blobs,
        }),
        NixociError,
      );
      assert.deepEqual(fs.readdirSync(blobs.blobDir), []);
    });
  }

  test("a bad level is a NixociError and writes nothing", async () => {
    const blobs = freshStore();
    for (const [compression, level] of [
      ["gzip", 10],
      ["gzip", -1],
      ["zstd", 23],
    ] as const) {
      const tar = storePathsTar(inStore(helloPaths));
      await assert.rejects(buildLayerBlob(tar, { compression, level, blobs }), NixociError);
      assert.ok(tar.destroyed);
    }
    assert.ok(!fs.existsSync(blobs.blobDir) || fs.readdirSync(blobs.blobDir).length === 0);
  });
});
