// oci-archive and docker-archive outputs, read back by skopeo, umoci and GNU tar.
import { test, describe, before } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { PassThrough } from "node:stream";
import { BlobStore } from "../../src/oci/blob-store.js";
import type { Digest } from "../../src/oci/digest.js";
import type { BuiltImage } from "../../src/oci/image.js";
import { writeDockerArchive, writeOciArchive } from "../../src/outputs/archive.js";
import { parseOutputRef, writeOutput } from "../../src/outputs/outputs.js";
import { NixociError } from "../../src/util/errors.js";
import { makeTempDir } from "../support/fixtures.js";
import { run, runText } from "../support/run.js";
import { makeImage } from "../support/make-image.js";

const sha256 = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

/** `tar -tvf` lines: "mode owner size date time name". */
function tarListing(file: string): string[] {
  return runText("tar", ["--numeric-owner", "-tvf", file]).split("\n");
}

describe("oci-archive", () => {
  let image: BuiltImage;
  before(async () => {
    image = await makeImage();
  });

  test("skopeo inspects it; copied out, umoci unpacks it", { timeout: 120_000 }, async () => {
    const tmp = makeTempDir("oci-archive");
    const file = join(tmp, "img.tar");
    const r = await writeOutput(image, parseOutputRef(`oci-archive:${file}:v1`), {});
    assert.equal(r.manifestDigest, image.manifest.digest);
    const info = JSON.parse(runText("skopeo", ["inspect", `oci-archive:${file}:v1`])) as { Digest: string };
    assert.equal(info.Digest, image.manifest.digest);
    // Untagged reference: skopeo picks the only image.
    assert.equal(
      (JSON.parse(runText("skopeo", ["inspect", `oci-archive:${file}`])) as { Digest: string }).Digest,
      image.manifest.digest,
    );
    // The archive is a plain OCI layout: GNU tar extracts it and umoci reads it.
    const layout = join(tmp, "extracted");
    mkdirSync(layout);
    run("tar", ["-xf", file, "-C", layout]);
    const out = join(tmp, "bundle");
    run("umoci", ["unpack", "--rootless", "--image", `${layout}:v1`, out]);
    assert.equal(readFileSync(join(out, "rootfs/hello.txt"), "utf8"), "hello from nixoci\n");
  });

  test("is deterministic: sorted members, mtime 1, root-owned", async () => {
    const tmp = makeTempDir("oci-archive-det");
    await writeOciArchive(image, join(tmp, "a.tar"), "v1");
    await writeOciArchive(image, join(tmp, "b.tar"), "v1");
    assert.equal(sha256(readFileSync(join(tmp, "a.tar"))), sha256(readFileSync(join(tmp, "b.tar"))));
    const lines = tarListing(join(tmp, "a.tar"));
    const names = lines.map((l) => l.split(/\s+/).pop() ?? "");
    assert.deepEqual(names, [...names].sort());
    assert.deepEqual(names.slice(0, 2), ["blobs/", "blobs/sha256/"]);
    assert.ok(names.includes("index.json") && names.includes("oci-layout"));
    for (const l of lines) {
      assert.match(l, /^(-rw-r--r--|drwxr-xr-x) 0\/0 /);
      assert.match(l, / 1970-01-01 00:00 /);
    }
  });
});

describe("docker-archive", () => {
  let image: BuiltImage;
  before(async () => {
    image = await makeImage();
  });

  test(
    "skopeo inspects it; manifest.json names the config and every layer",
    { timeout: 120_000 },
    async () => {
      const tmp = makeTempDir("docker-archive");
      const file = join(tmp, "img.tar");
      await writeOutput(image, parseOutputRef(`docker-archive:${file}:127.0.0.1:5000/nixoci/hello:v2`), {});
      const info = JSON.parse(runText("skopeo", ["inspect", `docker-archive:${file}`])) as {
        RepoTags: string[];
        Layers: string[];
        Architecture: string;
      };
      // skopeo serves a docker-archive's layers uncompressed: their digests are the diff_ids.
      assert.deepEqual(info.Layers, image.diffIds);
      assert.equal(info.Architecture, "amd64");
      const cfg = JSON.parse(runText("skopeo", ["inspect", "--config", `docker-archive:${file}`])) as {
        rootfs: { diff_ids: string[] };
      };
      assert.deepEqual(cfg.rootfs.diff_ids, image.diffIds);

      const x = join(tmp, "x");
      mkdirSync(x);
      run("tar", ["-xf", file, "-C", x]);
      const manifest = JSON.parse(readFileSync(join(x, "manifest.json"), "utf8")) as Array<{
        Config: string;
        RepoTags: string[];
        Layers: string[];
      }>;
      assert.equal(manifest.length, 1);
      assert.deepEqual(manifest[0].RepoTags, ["127.0.0.1:5000/nixoci/hello:v2"]);
      assert.equal(manifest[0].Config, `${image.config.digest.slice(7)}.json`);
      assert.ok(readFileSync(join(x, manifest[0].Config)).equals(image.config.bytes));
      assert.equal(manifest[0].Layers.length, image.layers.length);
      manifest[0].Layers.forEach((name, i) => {
        assert.equal(`sha256:${sha256(readFileSync(join(x, name)))}`, image.layers[i].digest);
      });
      // Copied out by skopeo into an OCI layout, the files are there.
      run("skopeo", ["--insecure-policy", "copy", `docker-archive:${file}`, `oci:${join(tmp, "layout")}:v1`]);
      const out = join(tmp, "bundle");
      run("umoci", ["unpack", "--rootless", "--image", `${join(tmp, "layout")}:v1`, out]);
      assert.equal(readFileSync(join(out, "rootfs/hello.txt"), "utf8"), "hello from nixoci\n");
    },
  );

  test("name without a tag gets the default tag, else latest; no name means no RepoTags", async () => {
    const tmp = makeTempDir("docker-archive-tags");
    const repoTags = (file: string): string[] => {
      const x = join(tmp, `x-${Math.random()}`);
      mkdirSync(x);
      run("tar", ["-xf", file, "-C", x, "manifest.json"]);
      return (JSON.parse(readFileSync(join(x, "manifest.json"), "utf8")) as Array<{ RepoTags: string[] }>)[0]
        .RepoTags;
    };
    await writeOutput(image, parseOutputRef(`docker-archive:${join(tmp, "a.tar")}:hello`), {
      defaultTag: "dflt",
    });
    assert.deepEqual(repoTags(join(tmp, "a.tar")), ["hello:dflt"]);
    await writeOutput(image, parseOutputRef(`docker-archive:${join(tmp, "b.tar")}:hello`), {});
    assert.deepEqual(repoTags(join(tmp, "b.tar")), ["hello:latest"]);
    await writeOutput(image, parseOutputRef(`docker-archive:${join(tmp, "c.tar")}`), { defaultTag: "dflt" });
    assert.deepEqual(repoTags(join(tmp, "c.tar")), []);
  });

  test("streams to a writable stream with the same bytes as the file", async () => {
    const tmp = makeTempDir("docker-archive-stream");
    await writeDockerArchive(image, join(tmp, "a.tar"), ["hello:v1"]);
    const sink = new PassThrough();
    const chunks: Buffer[] = [];
    sink.on("data", (c: Buffer) => chunks.push(c));
    await writeDockerArchive(image, sink, ["hello:v1"]);
    assert.equal(sink.writableEnded, false, "the stream is left open (stdout must not be closed)");
    assert.ok(Buffer.concat(chunks).equals(readFileSync(join(tmp, "a.tar"))));
    // And it is deterministic.
    await writeDockerArchive(image, join(tmp, "b.tar"), ["hello:v1"]);
    assert.ok(readFileSync(join(tmp, "a.tar")).equals(readFileSync(join(tmp, "b.tar"))));
  });

  test("a failure mid-stream leaves no partial archive and keeps the old one", async () => {
    const tmp = makeTempDir("docker-archive-fail");
    const file = join(tmp, "img.tar");
    writeFileSync(file, "old archive");
    // A store whose second layer "blob" is a directory with the declared size: the size check passes, and
    // reading it fails after the first layer has been streamed.
    const store = new BlobStore(makeTempDir("oci-bad-store"));
    mkdirSync(store.blobDir, { recursive: true });
    run("cp", ["-l", image.blobs.path(image.layers[0].digest as Digest), store.blobDir]);
    mkdirSync(store.path(image.layers[1].digest as Digest));
    const broken: BuiltImage = {
      ...image,
      blobs: store,
      layers: [image.layers[0], { ...image.layers[1], size: 4096 }],
    };
    for (const write of [
      () => writeDockerArchive(broken, file, ["x:y"]),
      () => writeOciArchive(broken, file, "v1"),
    ]) {
      await assert.rejects(write(), (err: unknown) => {
        assert.ok(err instanceof NixociError, String(err));
        assert.equal(
          err.message,
          `${store.path(image.layers[1].digest as Digest)}: cannot read the blob: is a directory`,
        );
        return true;
      });
      assert.equal(readFileSync(file, "utf8"), "old archive");
      assert.deepEqual(readdirSync(tmp), ["img.tar"]);
    }
    // A missing layer fails before anything is written.
    const missing: BuiltImage = { ...image, blobs: new BlobStore(makeTempDir("oci-empty-store")) };
    await assert.rejects(writeDockerArchive(missing, file, []), /blob is missing from the blob store/);
    assert.deepEqual(readdirSync(tmp), ["img.tar"]);
  });
});
