// OCI image layout output, read back by the real skopeo and umoci.
import { test, describe, before } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BlobStore } from "../../src/oci/blob-store.js";
import { digestHex, type Digest } from "../../src/oci/digest.js";
import type { BuiltImage } from "../../src/oci/image.js";
import { REF_NAME_ANNOTATION, writeOciLayout } from "../../src/outputs/layout.js";
import { parseOutputRef, writeOutput } from "../../src/outputs/outputs.js";
import { NixociError } from "../../src/util/errors.js";
import { makeTempDir } from "../support/fixtures.js";
import { run, runText } from "../support/run.js";
import { makeImage } from "../support/make-image.js";

interface Index {
  schemaVersion: number;
  mediaType: string;
  manifests: Array<{ digest: string; size: number; mediaType: string; annotations?: Record<string, string> }>;
}

const readIndex = (dir: string): Index => JSON.parse(readFileSync(join(dir, "index.json"), "utf8")) as Index;
const tags = (dir: string): string[] =>
  readIndex(dir)
    .manifests.map((m) => m.annotations?.[REF_NAME_ANNOTATION] ?? "")
    .sort();

describe("OCI image layout", () => {
  let image: BuiltImage;
  let other: BuiltImage;
  before(async () => {
    image = await makeImage();
    other = await makeImage({ hello: "another image\n", blobs: image.blobs });
  });

  test("skopeo inspects it and umoci unpacks the files", { timeout: 120_000 }, async () => {
    const dir = join(makeTempDir("oci-layout"), "layout");
    const r = await writeOutput(image, parseOutputRef(`oci:${dir}:v1`), {});
    assert.equal(r.manifestDigest, image.manifest.digest);
    assert.equal(readFileSync(join(dir, "oci-layout"), "utf8"), '{"imageLayoutVersion":"1.0.0"}');

    const info = JSON.parse(runText("skopeo", ["inspect", `oci:${dir}:v1`])) as {
      Digest: string;
      Layers: string[];
      Architecture: string;
      Os: string;
    };
    assert.equal(info.Digest, image.manifest.digest);
    assert.deepEqual(
      info.Layers,
      image.layers.map((l) => l.digest),
    );
    assert.equal(info.Architecture, "amd64");
    assert.equal(info.Os, "linux");
    const cfg = JSON.parse(runText("skopeo", ["inspect", "--config", `oci:${dir}:v1`])) as {
      config: { Cmd: string[] };
    };
    assert.deepEqual(cfg.config.Cmd, ["/bin/busybox", "cat", "/hello.txt"]);

    const out = join(makeTempDir("oci-umoci"), "bundle");
    run("umoci", ["unpack", "--rootless", "--image", `${dir}:v1`, out]);
    assert.equal(readFileSync(join(out, "rootfs/hello.txt"), "utf8"), "hello from nixoci\n");
    assert.ok(readFileSync(join(out, "rootfs/bin/busybox")).equals(readFileSync("/bin/busybox")));
    // The bundle's runtime config carries the image's command.
    const spec = JSON.parse(readFileSync(join(out, "config.json"), "utf8")) as {
      process: { args: string[] };
    };
    assert.deepEqual(spec.process.args, ["/bin/busybox", "cat", "/hello.txt"]);
  });

  test("skopeo copies it to an oci-archive and back", { timeout: 120_000 }, async () => {
    const tmp = makeTempDir("oci-copy");
    const dir = join(tmp, "layout");
    await writeOciLayout(image, dir, "v1");
    run("skopeo", ["--insecure-policy", "copy", `oci:${dir}:v1`, `oci-archive:${join(tmp, "x.tar")}`]);
    run("skopeo", [
      "--insecure-policy",
      "copy",
      `oci-archive:${join(tmp, "x.tar")}`,
      `oci:${join(tmp, "back")}:v1`,
    ]);
    // Copying between OCI transports keeps the manifest byte for byte.
    const info = JSON.parse(runText("skopeo", ["inspect", `oci:${join(tmp, "back")}:v1`])) as {
      Digest: string;
    };
    assert.equal(info.Digest, image.manifest.digest);
  });

  test(
    "adding a second tag keeps the first; re-tagging replaces the entry",
    { timeout: 120_000 },
    async () => {
      const dir = join(makeTempDir("oci-tags"), "layout");
      await writeOciLayout(image, dir, "one");
      await writeOciLayout(other, dir, "two");
      assert.deepEqual(tags(dir), ["one", "two"]);
      for (const [tag, img] of [
        ["one", image],
        ["two", other],
      ] as const) {
        const info = JSON.parse(runText("skopeo", ["inspect", `oci:${dir}:${tag}`])) as { Digest: string };
        assert.equal(info.Digest, img.manifest.digest);
      }
      // Same tag again, now pointing at the other image: one entry for it, not two.
      await writeOciLayout(other, dir, "one");
      assert.deepEqual(tags(dir), ["one", "two"]);
      assert.equal(
        readIndex(dir).manifests.find((m) => m.annotations?.[REF_NAME_ANNOTATION] === "one")?.digest,
        other.manifest.digest,
      );
      // An untagged write adds one untagged entry, and writing it again does not duplicate it.
      await writeOciLayout(image, dir);
      await writeOciLayout(image, dir);
      assert.deepEqual(tags(dir), ["", "one", "two"]);
      // The shared busybox layer is stored once; umoci is happy with the result.
      const blobs = readdirSync(join(dir, "blobs/sha256"));
      assert.equal(new Set(blobs).size, blobs.length);
      assert.ok(blobs.includes(digestHex(image.layers[0].digest as Digest)));
      const out = join(makeTempDir("oci-umoci2"), "bundle");
      run("umoci", ["unpack", "--rootless", "--image", `${dir}:two`, out]);
      assert.equal(readFileSync(join(out, "rootfs/hello.txt"), "utf8"), "another image\n");
    },
  );

  test("layers are hard-linked from the blob store on the same filesystem", async () => {
    const dir = join(makeTempDir("oci-link"), "layout");
    await writeOciLayout(image, dir, "v1");
    for (const l of image.layers) {
      const a = statSync(join(dir, "blobs/sha256", digestHex(l.digest as Digest)));
      const b = statSync(image.blobs.path(l.digest as Digest));
      assert.equal(a.ino, b.ino);
    }
  });

  test("across filesystems the blobs are copied", async () => {
    // Another filesystem: a small tmpfs mounted for this test (the tests run as root).
    const base = mkdtempSync(join(tmpdir(), "nixoci-layout-otherfs-"));
    run("mount", ["-t", "tmpfs", "-o", "size=256m,mode=0755", "nixoci-test", base]);
    try {
      assert.notEqual(
        statSync(base).dev,
        statSync(image.blobs.root).dev,
        "the tmpfs is a filesystem of its own",
      );
      const dir = join(base, "layout");
      await writeOciLayout(image, dir, "v1");
      for (const l of image.layers) {
        const p = join(dir, "blobs/sha256", digestHex(l.digest as Digest));
        assert.notEqual(statSync(p).ino, statSync(image.blobs.path(l.digest as Digest)).ino);
        assert.ok(readFileSync(p).equals(readFileSync(image.blobs.path(l.digest as Digest))));
      }
      const info = JSON.parse(runText("skopeo", ["inspect", `oci:${dir}:v1`])) as { Digest: string };
      assert.equal(info.Digest, image.manifest.digest);
    } finally {
      run("umount", [base]);
      rmSync(base, { recursive: true, force: true });
    }
  });

  test("a failure leaves the existing index and no temporary files", async () => {
    const dir = join(makeTempDir("oci-fail"), "layout");
    await writeOciLayout(image, dir, "good");
    const before = readFileSync(join(dir, "index.json"));
    // An image whose store lacks its hello layer (the layout already has the shared busybox layer, which is
    // skipped: only the missing one fails).
    const broken: BuiltImage = { ...other, blobs: new BlobStore(makeTempDir("oci-empty-store")) };
    await assert.rejects(writeOciLayout(broken, dir, "bad"), (err: unknown) => {
      assert.ok(err instanceof NixociError);
      assert.match(err.message, /blob is missing from the blob store/);
      return true;
    });
    assert.ok(readFileSync(join(dir, "index.json")).equals(before));
    const hidden = (d: string): string[] => readdirSync(d).filter((n) => n.startsWith("."));
    assert.deepEqual(hidden(dir), []);
    assert.deepEqual(hidden(join(dir, "blobs/sha256")), []);
  });

  test("refuses a non-empty directory that is not a layout, and a bad tag", async () => {
    const dir = makeTempDir("oci-notlayout");
    writeFileSync(join(dir, "precious.txt"), "keep me");
    await assert.rejects(writeOciLayout(image, dir, "v1"), /is not an OCI image layout/);
    assert.equal(existsSync(join(dir, "index.json")), false);
    await assert.rejects(writeOciLayout(image, join(dir, "sub"), "bad tag"), /invalid tag/);
  });
});
