// Pushing to the real docker-registry 2.8, read back with skopeo.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, linkSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { BlobStore } from "../../src/oci/blob-store.js";
import type { Digest } from "../../src/oci/digest.js";
import type { BuiltImage } from "../../src/oci/image.js";
import { parseOutputRef, writeOutput } from "../../src/outputs/outputs.js";
import { pushImage, type PushEvent } from "../../src/outputs/push.js";
import { RegistryClient } from "../../src/outputs/registry-session.js";
import { NixociError } from "../../src/util/errors.js";
import { startRegistry, type Registry } from "../support/daemons.js";
import { makeTempDir } from "../support/fixtures.js";
import { run, runText } from "../support/run.js";
import { makeImage } from "../support/make-image.js";

// Keep the push record (mount hints) of writeOutput away from the user's cache.
process.env.XDG_CACHE_HOME = makeTempDir("oci-xdg");

interface Inspect {
  Digest: string;
  Layers: string[];
  Name: string;
}

function inspect(ref: string): Inspect {
  return JSON.parse(runText("skopeo", ["inspect", "--tls-verify=false", ref])) as Inspect;
}

describe("push to docker-registry", () => {
  let registry: Registry;
  let image: BuiltImage;
  let big: BuiltImage;
  before(async () => {
    registry = await startRegistry();
    image = await makeImage();
    big = await makeImage({ hello: "big image\n", randomBytes: 3 << 20 });
  });
  after(async () => {
    await registry?.stop();
  });

  test(
    "skopeo inspects the pushed image and copies it back byte for byte",
    { timeout: 120_000 },
    async () => {
      const events: PushEvent[] = [];
      const r = await writeOutput(image, parseOutputRef(`docker://${registry.host}/nixoci/hello:v1`), {
        onEvent: (e) => events.push(e),
      });
      assert.equal(r.manifestDigest, image.manifest.digest);
      assert.deepEqual(
        [...(r.uploaded ?? [])].sort(),
        [image.config.digest, ...image.layers.map((l) => l.digest)].sort(),
      );
      assert.deepEqual(r.skipped, []);
      assert.ok(events.some((e) => e.type === "manifest-pushed" && e.reference === "v1"));

      const info = inspect(`docker://${registry.host}/nixoci/hello:v1`);
      assert.equal(info.Digest, image.manifest.digest);
      assert.deepEqual(
        info.Layers,
        image.layers.map((l) => l.digest),
      );
      const tmp = makeTempDir("oci-pull");
      run("skopeo", [
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        `docker://${registry.host}/nixoci/hello:v1`,
        `oci:${join(tmp, "layout")}:v1`,
      ]);
      const index = JSON.parse(readFileSync(join(tmp, "layout/index.json"), "utf8")) as {
        manifests: Array<{ digest: string }>;
      };
      assert.equal(index.manifests[0].digest, image.manifest.digest);
      const out = join(tmp, "bundle");
      run("umoci", ["unpack", "--rootless", "--image", `${join(tmp, "layout")}:v1`, out]);
      assert.equal(readFileSync(join(out, "rootfs/hello.txt"), "utf8"), "hello from nixoci\n");

      // The registry serves our exact manifest bytes.
      const client = new RegistryClient(registry.host, "nixoci/hello");
      try {
        const m = await client.getManifest("v1", [image.manifest.mediaType]);
        assert.ok(m.bytes.equals(image.manifest.bytes));
        assert.equal(m.mediaType, image.manifest.mediaType);
      } finally {
        client.close();
      }
    },
  );

  test("a second push uploads no blob: all skipped after HEAD", { timeout: 60_000 }, async () => {
    await pushImage(
      image,
      { registry: registry.host, repository: "nixoci/again", tag: "v1" },
      { pushRecord: false },
    );
    const r = await pushImage(
      image,
      { registry: registry.host, repository: "nixoci/again", tag: "v2" },
      { pushRecord: false },
    );
    assert.deepEqual(r.uploaded, []);
    assert.deepEqual(r.mounted, []);
    assert.equal(r.skipped.length, 1 + image.layers.length);
    assert.equal(inspect(`docker://${registry.host}/nixoci/again:v2`).Digest, image.manifest.digest);
  });

  test(
    "chunked upload (PATCH with Content-Range) for blobs over the limit",
    { timeout: 120_000 },
    async () => {
      const events: PushEvent[] = [];
      const r = await pushImage(
        big,
        { registry: registry.host, repository: "nixoci/big", tag: "v1" },
        {
          monolithicLimit: 64 << 10,
          chunkSize: 512 << 10,
          pushRecord: false,
          onEvent: (e) => events.push(e),
        },
      );
      assert.equal(r.uploaded.length, 1 + big.layers.length);
      // The random layer (> 3 MiB) went up in several chunks: progress passed chunk boundaries.
      const bigLayer = big.layers[2];
      assert.ok(bigLayer.size > 3 << 20);
      const progress = events.filter((e) => e.type === "blob-progress" && e.digest === bigLayer.digest);
      assert.ok(progress.some((e) => e.type === "blob-progress" && e.sent > 512 << 10));
      assert.equal(inspect(`docker://${registry.host}/nixoci/big:v1`).Digest, big.manifest.digest);
      const tmp = makeTempDir("oci-pull-big");
      run("skopeo", [
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        `docker://${registry.host}/nixoci/big:v1`,
        `oci:${join(tmp, "layout")}:v1`,
      ]);
      const out = join(tmp, "bundle");
      run("umoci", ["unpack", "--rootless", "--image", `${join(tmp, "layout")}:v1`, out]);
      assert.equal(readFileSync(join(out, "rootfs/random.bin")).length, 3 << 20);
    },
  );

  test("cross-repository mount from a hint and from the push record", { timeout: 60_000 }, async () => {
    const record = join(makeTempDir("oci-record"), "pushed.json");
    await pushImage(
      image,
      { registry: registry.host, repository: "nixoci/src", tag: "v1" },
      { pushRecord: record },
    );
    const rec = JSON.parse(readFileSync(record, "utf8")) as {
      registries: Record<string, Record<string, string[]>>;
    };
    assert.deepEqual(rec.registries[registry.host][image.layers[0].digest], ["nixoci/src"]);

    // From the record, without a hint.
    const r1 = await pushImage(
      image,
      { registry: registry.host, repository: "nixoci/dst1", tag: "v1" },
      { pushRecord: record },
    );
    assert.deepEqual(r1.uploaded, []);
    assert.equal(r1.mounted.length, 1 + image.layers.length);
    // From an explicit hint; a second image sharing the busybox layer mounts it and uploads the rest.
    const other = await makeImage({ hello: "other\n", blobs: image.blobs });
    const r2 = await pushImage(
      other,
      { registry: registry.host, repository: "nixoci/dst2", tag: "v1" },
      { pushRecord: false, mountFrom: ["nixoci/src", "nixoci/nonexistent"] },
    );
    assert.deepEqual(r2.mounted, [image.layers[0].digest]);
    assert.equal(r2.uploaded.length, 2); // config and the hello layer
    assert.equal(inspect(`docker://${registry.host}/nixoci/dst2:v1`).Digest, other.manifest.digest);
  });

  test("the config is pushed from its bytes when the store lacks it", { timeout: 60_000 }, async () => {
    const store = new BlobStore(makeTempDir("oci-no-config"));
    mkdirSync(store.blobDir, { recursive: true });
    for (const l of image.layers)
      linkSync(image.blobs.path(l.digest as Digest), store.path(l.digest as Digest));
    const r = await pushImage(
      { ...image, blobs: store },
      { registry: registry.host, repository: "nixoci/config-bytes", tag: "v1" },
      { pushRecord: false },
    );
    assert.ok(r.uploaded.includes(image.config.digest));
    assert.equal(inspect(`docker://${registry.host}/nixoci/config-bytes:v1`).Digest, image.manifest.digest);
  });

  test("push by digest", { timeout: 60_000 }, async () => {
    await writeOutput(
      image,
      parseOutputRef(`docker://${registry.host}/nixoci/bydigest@${image.manifest.digest}`),
      {},
    );
    // A repository with no tag: skopeo must not list tags (docker-registry answers 404 for the list).
    const info = JSON.parse(
      runText("skopeo", [
        "inspect",
        "--no-tags",
        "--tls-verify=false",
        `docker://${registry.host}/nixoci/bydigest@${image.manifest.digest}`,
      ]),
    ) as Inspect;
    assert.equal(info.Digest, image.manifest.digest);
    await assert.rejects(
      pushImage(image, {
        registry: registry.host,
        repository: "nixoci/bydigest",
        digest: `sha256:${"0".repeat(64)}`,
      }),
      /the image's manifest digest is/,
    );
  });

  /** Pushes `img` to REPO:v1 (no push record), which must fail with a NixociError matching `message`; its text. */
  async function pushFails(img: BuiltImage, repo: string, message: RegExp): Promise<string> {
    let text = "";
    await assert.rejects(
      pushImage(img, { registry: registry.host, repository: repo, tag: "v1" }, { pushRecord: false }),
      (err: unknown) => {
        assert.ok(err instanceof NixociError);
        assert.match(err.message, message);
        text = err.message;
        return true;
      },
    );
    return text;
  }

  test(
    "a manifest naming a blob the registry lacks: MANIFEST_BLOB_UNKNOWN",
    { timeout: 60_000 },
    async () => {
      // An inconsistent image: its manifest lists the hello layer but the pusher is told only about busybox.
      const partial: BuiltImage = { ...image, layers: [image.layers[0]] };
      await pushFails(
        partial,
        "nixoci/partial",
        new RegExp(
          `^${registry.host}/nixoci/partial: manifest push failed: 400 MANIFEST_BLOB_UNKNOWN: blob unknown`,
        ),
      );
    },
  );

  test("a corrupt blob: DIGEST_INVALID from the registry", { timeout: 60_000 }, async () => {
    const bad = await makeImage({ hello: "to be corrupted\n" });
    const p = bad.blobs.path(bad.layers[1].digest as `sha256:${string}`);
    const bytes = readFileSync(p);
    bytes[bytes.length - 1] ^= 0xff;
    writeFileSync(p, bytes);
    const message = await pushFails(
      bad,
      "nixoci/corrupt",
      new RegExp(
        `^${registry.host}/nixoci/corrupt: blob upload of ${bad.layers[1].digest} failed: 400 DIGEST_INVALID`,
      ),
    );
    assert.doesNotMatch(message, /\n/);
  });
});

describe("push failures", () => {
  test("a registry stopped mid-push: a clear error, no hang", { timeout: 120_000 }, async () => {
    const registry = await startRegistry();
    try {
      const img = await makeImage({ hello: "interrupted\n", randomBytes: 24 << 20 });
      let stopping: Promise<void> | undefined;
      await assert.rejects(
        pushImage(
          img,
          { registry: registry.host, repository: "nixoci/cut", tag: "v1" },
          {
            pushRecord: false,
            monolithicLimit: 1 << 20,
            chunkSize: 1 << 20,
            concurrency: 1,
            onEvent: (e) => {
              if (e.type === "blob-progress" && e.sent > 2 << 20) stopping ??= registry.stop();
            },
          },
        ),
        (err: unknown) => {
          assert.ok(err instanceof NixociError, String(err));
          assert.match(
            err.message,
            new RegExp(`^${registry.host}/nixoci/cut: blob upload of sha256:[0-9a-f]{64} failed: `),
          );
          assert.match(err.message, /ECONNREFUSED|ECONNRESET|socket hang up|EPIPE/);
          return true;
        },
      );
      await stopping;
    } finally {
      await registry.stop();
    }
  });

  test("no registry listening: ECONNREFUSED named in the error", { timeout: 30_000 }, async () => {
    const registry = await startRegistry();
    const host = registry.host;
    await registry.stop();
    assert.equal(existsSync(registry.dir), false);
    const img = await makeImage();
    await assert.rejects(
      writeOutput(img, parseOutputRef(`docker://${host}/nixoci/none:v1`), {}),
      new RegExp(`^NixociError: ${host}/nixoci/none: registry check failed: connect ECONNREFUSED`),
    );
  });
});
