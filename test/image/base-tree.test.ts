// A base image's filesystem as the customisation layer sees it (base-tree.ts): real layer blobs (gzip, zstd and
// uncompressed tars made by the layer builder) applied in order, whiteouts and opaque directories included, and
// the final /etc/passwd and /etc/group read back.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { BaseLayer } from "../../src/image/base-image.js";
import { readBaseTree } from "../../src/image/base-tree.js";
import { buildLayerBlob } from "../../src/image/layer-builder.js";
import { treeTar, type TreeEntry } from "../../src/image/layer-tar.js";
import type { LayerCompression } from "../../src/oci/media-types.js";
import { BlobStore } from "../../src/oci/blob-store.js";
import { NixociError } from "../../src/util/errors.js";
import { decodeFileName, fileNameBytes } from "../../src/util/file-names.js";

const dir = mkdtempSync(join(tmpdir(), "nixoci-base-tree-test-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const blobs = new BlobStore(dir);

const d = (path: string): TreeEntry => ({ path, type: "directory", mode: 0o755 });
const f = (path: string, text = ""): TreeEntry => ({
  path,
  type: "file",
  mode: 0o644,
  content: Buffer.from(text),
});
const l = (path: string, target: string): TreeEntry => ({ path, type: "symlink", target });

async function layer(entries: TreeEntry[], compression: LayerCompression): Promise<BaseLayer> {
  const b = await buildLayerBlob(treeTar(entries), { compression, blobs });
  return { descriptor: { mediaType: b.mediaType, digest: b.digest, size: b.size }, diffId: b.diffId };
}

test("layers apply in order: whiteouts remove, opaque directories hide the lower layers' entries", async () => {
  const layers = [
    await layer(
      [
        d("etc"),
        f("etc/passwd", "root:x:0:0::/root:/bin/sh\n"),
        f("etc/group", "root:x:0:\n"),
        d("bin"),
        f("bin/sh"),
        f("bin/ls"),
        d("opt"),
        d("opt/x"),
        f("opt/x/y"),
        l("lib", "usr/lib"),
      ],
      "gzip",
    ),
    await layer(
      [f("etc/.wh.group"), f("bin/.wh..wh..opq"), f("bin/new"), f(".wh.opt"), f("usr/lib/libc.so")],
      "zstd",
    ),
    await layer([f("etc/passwd", "root:x:0:0::/root:/bin/ash\napp:x:1:1::/:/bin/sh\n")], "none"),
  ];
  const tree = await readBaseTree(blobs, layers);
  assert.deepEqual([...tree.entries.keys()].sort(), [
    "bin",
    "bin/new",
    "etc",
    "etc/passwd",
    "lib",
    "usr",
    "usr/lib",
    "usr/lib/libc.so",
  ]);
  assert.deepEqual(tree.entries.get("lib"), { type: "link", target: "usr/lib" });
  assert.equal(tree.passwd?.toString(), "root:x:0:0::/root:/bin/ash\napp:x:1:1::/:/bin/sh\n");
  assert.equal(tree.group, undefined, "the whited-out /etc/group is gone");
});

test("names and link targets that are not UTF-8 keep their bytes (util/file-names.ts)", async () => {
  const cafe = decodeFileName(Buffer.from([0x63, 0x61, 0x66, 0xe9])); // "caf\xe9", Latin-1
  const tree = await readBaseTree(blobs, [
    await layer([d("share"), f(`share/${cafe}`), l(`share/to-${cafe}`, `/nix/store/x/${cafe}`)], "gzip"),
  ]);
  assert.deepEqual([...tree.entries.keys()].sort(), ["share", `share/${cafe}`, `share/to-${cafe}`]);
  assert.deepEqual(tree.entries.get(`share/to-${cafe}`), { type: "link", target: `/nix/store/x/${cafe}` });
  assert.deepEqual(fileNameBytes(cafe), Buffer.from([0x63, 0x61, 0x66, 0xe9]));
});

test("a layer that is not a tar fails in one line naming it", async () => {
  const bad = await blobs.putBytes(Buffer.alloc(1024, 7));
  await assert.rejects(
    readBaseTree(blobs, [
      { descriptor: { mediaType: "application/vnd.oci.image.layer.v1.tar", ...bad }, diffId: bad.digest },
    ]),
    (err: unknown) =>
      err instanceof NixociError && err.message.startsWith(`base layer ${bad.digest}: not a tar archive`),
  );
});
