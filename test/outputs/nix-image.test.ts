// Nix image descriptions (src/outputs/nix-image.ts): `nix:0` reference parsing, name rules, and the reader's checks
// against a corpus of corrupt descriptions (each must fail with one clear "corrupt image description" error
// naming the problem). Descriptions are built in temp dirs: the reader takes the real location separately.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  checkNixImageName,
  layerStorePaths,
  nixImageRef,
  parseNixImageRef,
  readNixImage,
} from "../../src/outputs/nix-image.js";

const STORE = "/nix/store";
const P1 = `${STORE}/${"1".repeat(32)}-hello`;
const P2 = `${STORE}/${"2".repeat(32)}-greeting`;

const sha = (b: Buffer | string): string => `sha256:${createHash("sha256").update(b).digest("hex")}`;

describe("nix:0 references", () => {
  test("store paths with or without a tag or digest", () => {
    assert.equal(parseNixImageRef(`nix:0${P1}`, STORE), P1);
    assert.equal(parseNixImageRef(`nix:0${P1}:latest`, STORE), P1);
    assert.equal(parseNixImageRef(`nix:0${P1}@sha256:${"a".repeat(64)}`, STORE), P1);
    assert.equal(nixImageRef(P1), `nix:0${P1}`);
  });
  test("anything else is rejected with the reference named", () => {
    for (const bad of [
      "docker.io/library/hello",
      "nix:1/nix/store/x",
      "nix:0/nix/store/../etc/passwd",
      "nix:0/etc/passwd",
      `nix:0${P1}/bin/hello`,
      `nix:0${STORE}/short-hello`,
      "nix:0",
    ])
      assert.throws(
        () => parseNixImageRef(bad, STORE),
        (e: Error) => e.message.startsWith(bad.split("@")[0]),
      );
  });
  test("description names must make valid Docker references", () => {
    checkNixImageName("hello-image");
    checkNixImageName("a.b_c-d");
    for (const bad of ["Hello", "a b", "-x", "x-", "a+b", "", "a/b"])
      assert.throws(() => checkNixImageName(bad), /nix: output name/);
  });
  test("layer store paths come in annotation index order", () => {
    const a = "containerd.io/snapshot/nix-store-path.";
    assert.deepEqual(layerStorePaths({ annotations: { [`${a}10`]: P2, [`${a}2`]: P1, other: "x" } }), [
      P1,
      P2,
    ]);
    assert.deepEqual(layerStorePaths({}), []);
  });
});

describe("reading descriptions", () => {
  let dir: string;
  before(() => (dir = mkdtempSync(join(tmpdir(), "nixoci-nix-image-"))));
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** A valid description at DIR/NAME: one store layer (P1, P2) and one blob layer; `mutate` breaks it. */
  function make(name: string, mutate?: (d: string, parts: Record<string, string>) => void): string {
    const d = join(dir, name);
    const blobs = join(d, "blobs", "sha256");
    mkdirSync(blobs, { recursive: true });
    const put = (b: Buffer | string): string => {
      const digest = sha(b);
      writeFileSync(join(blobs, digest.slice(7)), b);
      return digest;
    };
    const custom = Buffer.from("customisation layer bytes");
    const customDigest = put(custom);
    const config = JSON.stringify({
      architecture: "amd64",
      os: "linux",
      rootfs: { type: "layers", diff_ids: [sha("store tar"), sha("custom tar")] },
    });
    const configDigest = put(config);
    const manifest = JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: {
        mediaType: "application/vnd.oci.image.config.v1+json",
        digest: configDigest,
        size: config.length,
      },
      layers: [
        {
          mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
          digest: sha("store layer"),
          size: 1234,
          annotations: {
            "containerd.io/snapshot/nix-store-path.0": P1,
            "containerd.io/snapshot/nix-store-path.1": P2,
          },
        },
        {
          mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
          digest: customDigest,
          size: custom.length,
        },
      ],
    });
    const manifestDigest = put(manifest);
    writeFileSync(join(d, "oci-layout"), '{"imageLayoutVersion":"1.0.0"}');
    const index = JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          mediaType: "application/vnd.oci.image.manifest.v1+json",
          digest: manifestDigest,
          size: manifest.length,
          annotations: { "org.opencontainers.image.ref.name": "v1" },
        },
      ],
    });
    writeFileSync(join(d, "index.json"), index);
    mutate?.(d, { manifestDigest, configDigest, customDigest, manifest, config });
    return d;
  }

  test("a valid description", async () => {
    const d = make("ok");
    const img = await readNixImage(`${STORE}/${"9".repeat(32)}-ok`, d, STORE);
    assert.equal(img.tag, "v1");
    assert.equal(img.layers.length, 2);
    assert.deepEqual(img.layers[0].storePaths, [P1, P2]);
    assert.equal(img.layers[0].blobFile, undefined);
    assert.ok(img.layers[1].blobFile);
    assert.equal(img.platform.architecture, "amd64");
  });

  const blob = (d: string, digest: string): string => join(d, "blobs", "sha256", digest.slice(7));
  const corpus: Array<[string, (d: string, p: Record<string, string>) => void, RegExp]> = [
    ["no oci-layout", (d) => unlinkSync(join(d, "oci-layout")), /no oci-layout/],
    [
      "bad layout version",
      (d) => writeFileSync(join(d, "oci-layout"), '{"imageLayoutVersion":"9"}'),
      /imageLayoutVersion/,
    ],
    ["no index", (d) => unlinkSync(join(d, "index.json")), /no index\.json/],
    [
      "index not JSON",
      (d) => writeFileSync(join(d, "index.json"), "{nope"),
      /index\.json is not a JSON object/,
    ],
    [
      "index without manifests",
      (d) => writeFileSync(join(d, "index.json"), '{"schemaVersion":2,"manifests":[]}'),
      /lists no manifest/,
    ],
    [
      "index digest malformed",
      (d) =>
        writeFileSync(
          join(d, "index.json"),
          JSON.stringify({
            schemaVersion: 2,
            manifests: [{ mediaType: "x", digest: "sha256:../../etc", size: 1 }],
          }),
        ),
      /not a valid descriptor/,
    ],
    ["manifest blob missing", (d, p) => unlinkSync(blob(d, p.manifestDigest)), /manifest blob .* is missing/],
    [
      "manifest bytes changed",
      (d, p) =>
        writeFileSync(
          blob(d, p.manifestDigest),
          p.manifest.replace("amd64", "AMD64").replace("layers", "layerz"),
        ),
      /manifest blob .* (has|does not match)/,
    ],
    [
      "config bytes changed",
      (d, p) => writeFileSync(blob(d, p.configDigest), p.config.replace("amd64", "arm64")),
      /config blob .* does not match/,
    ],
    ["blob layer missing", (d, p) => unlinkSync(blob(d, p.customDigest)), /layer 1 blob .* is missing/],
    [
      "blob layer truncated",
      (d, p) => writeFileSync(blob(d, p.customDigest), "short"),
      /layer 1 blob has 5 bytes/,
    ],
  ];
  for (const [name, mutate, re] of corpus)
    test(`corrupt: ${name}`, async () => {
      const d = make(name.replace(/\W+/g, "-"), mutate);
      const sp = `${STORE}/${"9".repeat(32)}-bad`;
      await assert.rejects(readNixImage(sp, d, STORE), (e: Error) => {
        assert.match(e.message, new RegExp(`^${sp}: corrupt image description: `));
        assert.match(e.message, re);
        assert.equal(e.message.split("\n").length, 1);
        return true;
      });
    });

  test("corrupt: a store path label outside the store", async () => {
    const d = make("bad-label");
    // Rewrite the manifest with a bad label, keeping every digest consistent.
    const idx = JSON.parse(readFileSync(join(d, "index.json"), "utf8")) as {
      manifests: Array<{ digest: string; size: number }>;
    };
    const mpath = blob(d, idx.manifests[0].digest);
    const manifest = readFileSync(mpath, "utf8").replace(P2, "/etc/passwd");
    const digest = sha(manifest);
    writeFileSync(blob(d, digest), manifest);
    idx.manifests[0].digest = digest;
    idx.manifests[0].size = manifest.length;
    writeFileSync(join(d, "index.json"), JSON.stringify(idx));
    await assert.rejects(
      readNixImage(`${STORE}/${"9".repeat(32)}-bad`, d, STORE),
      /layer 0 store path.*\/etc\/passwd/,
    );
  });

  test("not a directory, or missing", async () => {
    const f = join(dir, "file");
    writeFileSync(f, "x");
    await assert.rejects(readNixImage(P1, f, STORE), /is not a directory/);
    await assert.rejects(readNixImage(P1, join(dir, "none"), STORE), /does not exist/);
  });
});
