// Fuzzing the parsers of what arrives from the network: narinfo and nix-cache-info files (binary caches), store
// paths and references, manifests and indexes (registry pushes), request paths and Range headers (the HTTP router),
// snapshotter filters (gRPC). Each either accepts or rejects with its own typed error; accepted values round trip.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { parseCacheInfo, serializeCacheInfo } from "../../src/nix/cache-info.js";
import { Hash } from "../../src/nix/hash.js";
import { parseNarInfo, serializeNarInfo, type NarInfo } from "../../src/nix/narinfo.js";
import { parseStoreBaseName, parseStorePath } from "../../src/nix/store-path.js";
import { isValidName } from "../../src/oci/reference.js";
import { parseRange } from "../../src/servers/registry/http-range.js";
import { MANIFEST_MEDIA_TYPES, parseManifest } from "../../src/servers/registry/manifests.js";
import { parseRoute } from "../../src/servers/registry/routes.js";
import { RegistryError } from "../../src/servers/registry/errors.js";
import { SnapshotError } from "../../src/servers/snapshotter/metadata.js";
import { parseFilter } from "../../src/servers/snapshotter/overlay.js";
import { NixociError } from "../../src/util/errors.js";
import { fuzz, FUZZ_RUNS, mutated } from "../support/fuzz.js";

const NIX32 = "0123456789abcdfghijklmnpqrsvwxyz";
const text = (b: Buffer) => b.toString("utf8");

/** Runs fn; a thrown error of one of the expected classes is a rejection (returned), anything else a defect. */
function accepts<T>(fn: () => T, ...expected: (abstract new (...a: never[]) => Error)[]): T | undefined {
  try {
    return fn();
  } catch (e) {
    if (expected.some((c) => e instanceof c)) return undefined;
    throw e;
  }
}

// ---- generated valid values ----

const hashPart = fc.string({ unit: fc.constantFrom(...NIX32), minLength: 32, maxLength: 32 });
const pathName = fc
  .string({ unit: fc.constantFrom(..."abcXYZ019+-._?="), minLength: 1, maxLength: 40 })
  .filter((n) => n !== "." && n !== ".." && !n.startsWith(".-") && !n.startsWith("..-"));
const baseName = fc.tuple(hashPart, pathName).map(([h, n]) => `${h}-${n}`);
const hash = fc.uint8Array({ minLength: 1, maxLength: 64 }).map((b) => Hash.of("sha256", Buffer.from(b)));

const narInfo: fc.Arbitrary<NarInfo> = fc
  .record({
    base: baseName,
    compression: fc.constantFrom("xz", "zstd", "bzip2", "br", "gzip", "none"),
    fileHash: fc.option(hash, { nil: undefined }),
    fileSize: fc.option(fc.nat(), { nil: undefined }),
    narHash: hash,
    narSize: fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
    references: fc.uniqueArray(baseName, { maxLength: 5 }),
    deriver: fc.option(
      baseName.map((b) => `${b}.drv`),
      { nil: undefined },
    ),
    sigs: fc.array(
      fc
        .tuple(fc.stringMatching(/^[a-z][a-z0-9.-]{0,20}$/), fc.uint8Array({ minLength: 64, maxLength: 64 }))
        .map(([k, s]) => `${k}:${Buffer.from(s).toString("base64")}`),
      { maxLength: 3 },
    ),
  })
  .map((r) => ({
    storePath: `/nix/store/${r.base}`,
    url: `nar/${r.narHash.digest.toString("hex")}.nar${r.compression === "none" ? "" : "." + r.compression}`,
    compression: r.compression,
    fileHash: r.fileHash,
    fileSize: r.fileSize,
    narHash: r.narHash,
    narSize: r.narSize,
    references: [...r.references].sort(),
    deriver: r.deriver,
    sigs: r.sigs,
  }));

test("property: narinfo parse(serialize(x)) == x; fuzz: any mutation parses or is a NixociError", async () => {
  const seeds: Buffer[] = [];
  fc.assert(
    fc.property(narInfo, (info) => {
      const s = serializeNarInfo(info);
      const back = parseNarInfo(s, { input: "generated" });
      assert.equal(serializeNarInfo(back), s);
      assert.equal(back.storePath, info.storePath);
      assert.deepEqual(back.references, info.references);
      if (seeds.length < 20) seeds.push(Buffer.from(s));
    }),
    { numRuns: FUZZ_RUNS },
  );
  await fuzz("narinfo", mutated(seeds), (input) => {
    const info = accepts(() => parseNarInfo(text(input), { input: "fuzz" }), NixociError);
    if (info)
      assert.equal(
        serializeNarInfo(parseNarInfo(serializeNarInfo(info), { input: "again" })),
        serializeNarInfo(info),
      );
  });
});

test("fuzz: nix-cache-info parses or is a NixociError; accepted ones round trip", async () => {
  const seeds = [
    "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n",
    "StoreDir: /gnu/store\n",
    "Priority: 10\nWantMassQuery: 0\n",
  ].map((s) => Buffer.from(s));
  await fuzz("cache-info", mutated(seeds), (input) => {
    const info = accepts(() => parseCacheInfo(text(input), "fuzz"), NixociError);
    if (info) assert.deepEqual(parseCacheInfo(serializeCacheInfo(info), "again"), info);
  });
});

test("fuzz: store paths and base names parse or are a NixociError; accepted ones are what they say", async () => {
  fc.assert(
    fc.property(baseName, (b) => {
      assert.equal(parseStorePath(`/nix/store/${b}`).baseName, b);
    }),
    { numRuns: FUZZ_RUNS },
  );
  const seeds = ["/nix/store/" + "a".repeat(32) + "-hello-2.12", "/nix/store/" + "0".repeat(32) + "-x"].map(
    (s) => Buffer.from(s),
  );
  await fuzz("store-path", mutated(seeds), (input) => {
    const s = text(input);
    const p = accepts(() => parseStorePath(s), NixociError);
    if (p) {
      assert.equal(p.path, s);
      assert.ok(!p.name.includes("/") && p.name !== "." && p.name !== "..");
    }
    const b = accepts(() => parseStoreBaseName(s.slice("/nix/store/".length)), NixociError);
    if (b) assert.equal(b.path, `/nix/store/${s.slice("/nix/store/".length)}`);
  });
});

test("fuzz: manifests and indexes parse or are a 400 RegistryError", async () => {
  const digest = "sha256:" + "ab".repeat(32);
  const desc = (mediaType: string) => ({ mediaType, digest, size: 12 });
  const seeds = [
    {
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: desc("application/vnd.oci.image.config.v1+json"),
      layers: [desc("application/vnd.oci.image.layer.v1.tar+gzip")],
    },
    {
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [
        {
          ...desc("application/vnd.oci.image.manifest.v1+json"),
          platform: { os: "linux", architecture: "amd64" },
        },
      ],
    },
    {
      schemaVersion: 2,
      mediaType: "application/vnd.docker.distribution.manifest.v2+json",
      config: desc("application/vnd.docker.container.image.v1+json"),
      layers: [],
      annotations: { a: "b" },
    },
  ].map((m) => Buffer.from(JSON.stringify(m)));
  const types = [...MANIFEST_MEDIA_TYPES];
  await fuzz("manifest", mutated(seeds), (input) => {
    for (const t of types) {
      const m = accepts(() => parseManifest(input, t), RegistryError);
      if (m === undefined) continue;
      assert.ok(m.kind === "image" || m.kind === "index");
      for (const d of [...m.blobs, ...m.manifests])
        assert.match(d.digest, /^[a-z0-9]+([+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/);
    }
  });
});

test("fuzz: request paths route, or not, or are a RegistryError; a routed name is a valid repository name", async () => {
  const seeds = [
    "/v2/",
    "/v2/_catalog",
    "/v2/library/hello/manifests/latest",
    "/v2/a/b/c/blobs/sha256:" + "0".repeat(64),
    "/v2/x/blobs/uploads/0123-abc",
    "/v2/x/tags/list",
    "/v2/x/referrers/sha256:" + "1".repeat(64),
  ].map((s) => Buffer.from(s));
  await fuzz("route", mutated(seeds), (input) => {
    const route = accepts(() => parseRoute(text(input)), RegistryError);
    if (route && "name" in route) assert.ok(isValidName(route.name), route.name);
  });
});

test("property: Range headers give a range inside the blob, unsatisfiable, or none", () => {
  fc.assert(
    fc.property(
      fc.oneof(
        fc.string(),
        fc.tuple(fc.option(fc.nat()), fc.option(fc.nat())).map(([a, b]) => `bytes=${a ?? ""}-${b ?? ""}`),
      ),
      fc.nat({ max: 1 << 30 }),
      (header, size) => {
        const r = parseRange(header, size);
        if (r === undefined || r === "unsatisfiable") return;
        assert.ok(
          r.start >= 0 && r.start <= r.end && r.end < size,
          `${header} of ${size}: ${JSON.stringify(r)}`,
        );
      },
    ),
    { numRuns: FUZZ_RUNS * 10 },
  );
});

test("fuzz: snapshotter filters parse or are an invalid-argument error", async () => {
  const seeds = [
    'labels."containerd.io/gc.root"',
    "kind==committed",
    'name~="^a",parent!=x',
    "labels.a==b",
  ].map((s) => Buffer.from(s));
  await fuzz("snapshot-filter", mutated(seeds), (input) => {
    try {
      assert.equal(typeof parseFilter(text(input)), "function");
    } catch (e) {
      if (!(e instanceof SnapshotError) || e.code !== "invalid-argument") throw e;
    }
  });
});
