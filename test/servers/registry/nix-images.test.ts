// Image names (parseImageName corpus) and NixImageSource: images of fixture packages built on demand into a
// RegistryStorage, cached across requests and restarts, single-flight, bounded (queue, time limit), and the
// registry errors for unknown packages, revisions and failures. One end-to-end run with the real nix resolver.
import { test } from "node:test";
import assert from "node:assert/strict";
import { storePathsFromAnnotations } from "../../../src/image/annotations.js";
import { execFile } from "node:child_process";
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST } from "../../../src/oci/media-types.js";
import { RegistryError } from "../../../src/servers/registry/errors.js";
import {
  DEFAULT_META_PACKAGES,
  parseImageName,
  parseImageReference,
  recordedImageName,
} from "../../../src/servers/registry/image-names.js";
import { NixImageSource, type NixImageEvent } from "../../../src/servers/registry/nix-images.js";
import { createRegistryServer } from "../../../src/servers/registry/server.js";
import { RegistryStorage } from "../../../src/servers/registry/storage.js";
import { NixEvalResolver } from "../../../src/resolve/nix-eval.js";
import {
  UnknownPackageError,
  type PackageResolver,
  type ResolveOptions,
} from "../../../src/resolve/resolver.js";
import { LocalStore } from "../../../src/store/local-store.js";
import { NixociError } from "../../../src/util/errors.js";
import { buildFixtures, makeTempDir, PACKAGES_NIX } from "../../support/fixtures.js";
import { until } from "../../support/poll.js";

const fx = buildFixtures();
const work = makeTempDir("nix-images");
const store = new LocalStore();
let dirs = 0;

// ---- names ----

const meta = { metaPackages: DEFAULT_META_PACKAGES, defaultArch: "amd64" };

test("parseImageName: architecture prefix, meta-packages, order and duplicates", () => {
  const cases: [string, { arch: string; packages: string[] }][] = [
    ["hello", { arch: "amd64", packages: ["hello"] }],
    ["git/htop", { arch: "amd64", packages: ["git", "htop"] }],
    ["htop/git/git", { arch: "amd64", packages: ["git", "htop"] }],
    ["shell", { arch: "amd64", packages: ["bashInteractive", "coreutils"] }],
    ["shell/git/coreutils", { arch: "amd64", packages: ["bashInteractive", "coreutils", "git"] }],
    ["arm64/git", { arch: "arm64", packages: ["git"] }],
    ["aarch64/shell", { arch: "arm64", packages: ["bashInteractive", "coreutils"] }],
    ["x86_64/git", { arch: "amd64", packages: ["git"] }],
    ["amd64/git", { arch: "amd64", packages: ["git"] }],
    ["x86_64-linux/git", { arch: "amd64", packages: ["git"] }],
    // Only the first component, and only with packages after it, is an architecture.
    ["arm64", { arch: "amd64", packages: ["arm64"] }],
    ["git/arm64", { arch: "amd64", packages: ["arm64", "git"] }],
    ["arm64/amd64", { arch: "arm64", packages: ["amd64"] }],
    [
      "python3packages.requests/a_b/c--d/e__f",
      { arch: "amd64", packages: ["a_b", "c--d", "e__f", "python3packages.requests"] },
    ],
  ];
  for (const [repo, want] of cases) assert.deepEqual(parseImageName(repo, meta), want, repo);
  assert.deepEqual(parseImageName("git", { ...meta, defaultArch: "arm64" }), {
    arch: "arm64",
    packages: ["git"],
  });

  // Configured meta-packages replace the defaults (and can alias names with upper case).
  const custom = {
    metaPackages: { dev: ["gcc", "gnumake"], py: ["python3Packages.requests"] },
    defaultArch: "amd64",
  };
  assert.deepEqual(parseImageName("dev/py/shell", custom).packages, [
    "gcc",
    "gnumake",
    "python3Packages.requests",
    "shell",
  ]);
  // Inherited object properties are not meta-packages.
  assert.deepEqual(parseImageName("constructor/tostring", meta).packages, ["constructor", "tostring"]);

  for (const bad of [
    "",
    "Git",
    "git//htop",
    "/git",
    "git/",
    "-git",
    "git-",
    "a..b",
    "a___b",
    "sp ace",
    "a/../b",
  ]) {
    assert.throws(
      () => parseImageName(bad, meta),
      (e: unknown) => e instanceof RegistryError && e.status === 400 && e.code === "NAME_INVALID",
      JSON.stringify(bad),
    );
  }
  assert.throws(
    () => parseImageName("x", { metaPackages: { x: ["ok", "not ok"] }, defaultArch: "amd64" }),
    /meta-package x expands to the invalid name/,
  );
  assert.throws(
    () => parseImageName("x", { metaPackages: { x: [] }, defaultArch: "amd64" }),
    /names no packages/,
  );
});

test("recordedImageName: one spelling per image (sorted, deduplicated, the architecture by its OCI name)", () => {
  for (const [repo, want] of [
    ["hello", "hello"],
    ["git/htop", "git/htop"],
    ["htop/git/git", "git/htop"],
    ["shell/git/coreutils", "coreutils/git/shell"],
    ["x86_64/htop/git", "amd64/git/htop"],
    ["aarch64-linux/shell", "arm64/shell"],
    ["arm64/amd64", "arm64/amd64"],
    // Sorted, the package arm64 would read as a prefix (git for arm64): the spelling is kept.
    ["git/arm64", "git/arm64"],
    ["arm64", "arm64"],
  ] as const)
    assert.equal(recordedImageName(repo), want, repo);
});

test("parseImageReference: latest, pinned revisions, digests", () => {
  assert.deepEqual(parseImageReference("latest"), { kind: "latest" });
  assert.deepEqual(parseImageReference("2026-11-29.1"), { kind: "revision", revision: "2026-11-29.1" });
  const d = `sha256:${"a".repeat(64)}`;
  assert.deepEqual(parseImageReference(d), { kind: "digest", digest: d });
  assert.throws(
    () => parseImageReference(".bad"),
    (e: unknown) => e instanceof RegistryError && e.status === 404,
  );
});

// ---- the source ----

type Fx = ReturnType<typeof buildFixtures>;

/** Fixture attributes as packages, with hooks to count, hold or fail resolutions. */
class FakeResolver implements PackageResolver {
  readonly description = "test fixtures";
  revision = "rev1";
  calls: string[][] = [];
  gate?: Promise<void>;
  fail?: Error;
  /** What the package check throws (an evaluation error of the set). */
  failMissing?: Error;
  arches = ["amd64", "arm64"];
  /** Architecture -> packages the set lacks there (the others it has everywhere). */
  lacking: Record<string, string[]> = {};

  async currentRevision(): Promise<string> {
    return this.revision;
  }

  async servesRevision(revision: string): Promise<boolean> {
    return revision === this.revision;
  }

  async resolve(packages: string[], opts: ResolveOptions): Promise<string[]> {
    this.calls.push(packages);
    if (opts.revision !== this.revision) throw new NixociError("fake", `revision ${opts.revision} is gone`);
    if (this.gate) await this.gate;
    if (this.fail) throw this.fail;
    const unknown = packages.filter((p) => !Object.hasOwn(fx, p));
    if (unknown.length) throw new UnknownPackageError(unknown);
    return packages.map((p) => fx[p as keyof Fx]);
  }

  async missingPackages(packages: string[], opts: ResolveOptions): Promise<string[]> {
    if (this.failMissing) throw this.failMissing;
    const lacking = this.lacking[opts.arch] ?? [];
    return packages.filter((p) => !Object.hasOwn(fx, p) || lacking.includes(p)).sort();
  }

  async packageNames(): Promise<string[]> {
    return Object.keys(fx).sort();
  }

  async architectures(): Promise<string[]> {
    return this.arches;
  }
}

function setup(opts: Partial<ConstructorParameters<typeof NixImageSource>[0]> = {}) {
  const root = join(work, `registry-${++dirs}`);
  const storage = new RegistryStorage(root);
  const resolver = new FakeResolver();
  const events: NixImageEvent[] = [];
  const make = (extra: Partial<ConstructorParameters<typeof NixImageSource>[0]> = {}) =>
    new NixImageSource({
      storage,
      resolver,
      store,
      defaultArch: "amd64",
      onEvent: (e) => events.push(e),
      ...opts,
      ...extra,
    });
  return { root, storage, resolver, events, source: make(), make };
}

const ctx = (method: "GET" | "HEAD" = "GET", signal = new AbortController().signal) => ({
  method,
  accept: [OCI_MANIFEST],
  signal,
});
const count = (events: NixImageEvent[], type: NixImageEvent["type"]) =>
  events.filter((e) => e.type === type).length;

async function expectRegistryError(p: Promise<unknown>, status: number, code: string, message?: RegExp) {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof RegistryError, `a RegistryError, got ${String(e)}`);
    assert.equal(e.status, status);
    assert.equal(e.code, code);
    if (message) assert.match(e.message, message);
    return true;
  });
}

test("the first request builds into the registry's blob store; the next ones are cache hits", async () => {
  const { root, storage, resolver, events, source, make } = setup();
  const m = await source.resolve("hello/busybox", "latest", ctx());
  assert.ok(m);
  assert.equal(m.mediaType, OCI_MANIFEST);
  assert.deepEqual(resolver.calls, [["busybox", "hello"]]);
  assert.deepEqual(
    events.map((e) => e.type),
    ["cache-miss", "build-start", "build-done"],
  );
  assert.equal(events[0].key, events[2].key);
  assert.deepEqual(events[0].packages, ["busybox", "hello"]);
  assert.equal(events[0].revision, "rev1");
  assert.ok(typeof events[2].seconds === "number");

  // Every blob is in the storage's blob store; the record is on disk.
  const manifest = JSON.parse(m.bytes.toString()) as {
    config: { digest: `sha256:${string}` };
    layers: { digest: `sha256:${string}`; annotations?: Record<string, string> }[];
  };
  for (const d of [m.digest, manifest.config.digest, ...manifest.layers.map((l) => l.digest)])
    assert.ok(await storage.blobs.has(d), d);
  const storePaths = manifest.layers.flatMap((l) => storePathsFromAnnotations(l.annotations ?? {}));
  assert.ok(
    storePaths.includes(fx.hello) && storePaths.includes(fx.busybox) && storePaths.includes(fx.greeting),
  );
  const records = readdirSync(join(root, "nix-images"));
  assert.equal(records.length, 1);
  const record = JSON.parse(readFileSync(join(root, "nix-images", records[0]), "utf8"));
  assert.equal(record.digest, m.digest);
  assert.deepEqual(record.packages, ["busybox", "hello"]);
  assert.equal(record.revision, "rev1");
  assert.equal(record.arch, "amd64");
  assert.ok(!Number.isNaN(Date.parse(record.createdAt)));

  // The image config: /bin/sh is there (busybox), so it is the default command; labels name the contents.
  const config = JSON.parse(readFileSync(storage.blobs.path(manifest.config.digest), "utf8"));
  assert.equal(config.architecture, "amd64");
  assert.deepEqual(config.config.Cmd, ["/bin/sh"]);
  assert.equal(config.config.Entrypoint, undefined);
  assert.equal(config.config.Labels["dev.nixoci.packages"], "busybox hello");
  assert.equal(config.config.Labels["dev.nixoci.revision"], "rev1");

  // What the server does with it: record it by digest in the repository, then serve it from there.
  await storage.adoptManifest("hello/busybox", m);
  assert.deepEqual((await storage.getManifest("hello/busybox", m.digest))?.bytes, m.bytes);

  // Same request (GET and HEAD), same set in another order, with a duplicate: answered from the cache.
  for (const [repo, method] of [
    ["hello/busybox", "GET"],
    ["hello/busybox", "HEAD"],
    ["busybox/hello/hello", "GET"],
  ] as const) {
    const again = await source.resolve(repo, "latest", ctx(method));
    assert.equal(again?.digest, m.digest);
    assert.ok(again?.bytes.equals(m.bytes));
  }
  assert.equal(resolver.calls.length, 1);
  assert.equal(count(events, "build-start"), 1);
  assert.equal(count(events, "cache-hit"), 3);

  // A restart: a new source on the same storage still hits, without resolving.
  const restarted = make();
  assert.equal((await restarted.resolve("hello/busybox", "latest", ctx()))?.digest, m.digest);
  assert.equal(resolver.calls.length, 1);
  assert.equal(count(events, "cache-hit"), 4);

  // The pinned current revision is the same image as latest.
  assert.equal((await restarted.resolve("busybox/hello", "rev1", ctx()))?.digest, m.digest);
  assert.equal(resolver.calls.length, 1);

  // Digest references never build: the server has what it recorded.
  assert.equal(await source.resolve("hello/busybox", m.digest, ctx()), undefined);
  assert.equal(await source.resolve("tree", `sha256:${"0".repeat(64)}`, ctx()), undefined);
  assert.equal(resolver.calls.length, 1);
});

test("no Cmd without a shell; a new revision is a new image; old pins are 404", async () => {
  const { storage, resolver, events, source } = setup();
  const m1 = await source.resolve("greeting", "latest", ctx());
  const manifest = JSON.parse(m1!.bytes.toString());
  const config = JSON.parse(readFileSync(storage.blobs.path(manifest.config.digest), "utf8"));
  assert.equal(config.config.Cmd, undefined);

  resolver.revision = "rev2";
  const m2 = await source.resolve("greeting", "latest", ctx());
  assert.notEqual(m2!.digest, m1!.digest); // the revision label differs
  assert.equal(count(events, "build-start"), 2);
  await expectRegistryError(
    source.resolve("greeting", "rev1", ctx()),
    404,
    "MANIFEST_UNKNOWN",
    /revision rev1/,
  );
  // A different architecture is a different image.
  await source.resolve("arm64/greeting", "latest", ctx());
  assert.equal(count(events, "build-start"), 3);
  assert.deepEqual(resolver.calls.at(-1), ["greeting"]);
});

test("multi-platform: an unprefixed name is an index of each architecture's image for clients that take one", async () => {
  const { resolver, events, source } = setup();
  const withAccept = (accept: string[]) => ({ ...ctx(), accept });
  const index = await source.resolve("greeting", "latest", withAccept([OCI_INDEX, OCI_MANIFEST]));
  assert.equal(index!.mediaType, OCI_INDEX);
  const json = JSON.parse(index!.bytes.toString()) as {
    mediaType: string;
    manifests: Array<{ mediaType: string; digest: string; size: number; platform: object }>;
  };
  assert.equal(json.mediaType, OCI_INDEX);
  // Each entry is the image of the prefixed name, built once (the prefixed pulls below are cache hits).
  const amd = await source.resolve("amd64/greeting", "latest", ctx());
  const arm = await source.resolve("arm64/greeting", "latest", ctx());
  assert.deepEqual(json.manifests, [
    {
      mediaType: OCI_MANIFEST,
      digest: amd!.digest,
      size: amd!.bytes.length,
      platform: { architecture: "amd64", os: "linux" },
    },
    {
      mediaType: OCI_MANIFEST,
      digest: arm!.digest,
      size: arm!.bytes.length,
      platform: { architecture: "arm64", os: "linux" },
    },
  ]);
  assert.deepEqual(
    index!.children!.map((c) => c.digest),
    [amd!.digest, arm!.digest],
  );
  assert.equal(count(events, "build-start"), 2);
  assert.deepEqual(
    events.filter((e) => e.type === "index").map((e) => [e.repo, e.arch]),
    [["greeting", "amd64,arm64"]],
  );
  // No Accept, a wildcard or Docker's list type: the same index (the server converts it for Docker-only clients).
  for (const accept of [[], ["*/*"], [DOCKER_MANIFEST_LIST]])
    assert.equal((await source.resolve("greeting", "latest", withAccept(accept)))!.digest, index!.digest);
  // A client that takes image manifests only: the server's own architecture's.
  assert.equal((await source.resolve("greeting", "latest", ctx()))!.digest, amd!.digest);
  assert.equal(count(events, "build-start"), 2);

  // Packages that one architecture lacks: a plain manifest of the server's own.
  resolver.lacking = { arm64: ["tree"] };
  const partial = await source.resolve("greeting/tree", "latest", withAccept([OCI_INDEX, OCI_MANIFEST]));
  assert.equal(partial!.mediaType, OCI_MANIFEST);
  assert.equal(partial!.children, undefined);
  assert.equal(partial!.digest, (await source.resolve("amd64/greeting/tree", "latest", ctx()))!.digest);
  // Packages of the other architecture only: the 404 says which prefix has them.
  resolver.lacking = { amd64: ["tree"] };
  await expectRegistryError(
    source.resolve("tree", "latest", ctx()),
    404,
    "NAME_UNKNOWN",
    /^unknown package "tree" for this architecture; the set has it for arm64: ask for arm64\/NAME$/,
  );
  // A server of one architecture: plain manifests.
  resolver.lacking = {};
  resolver.arches = ["amd64"];
  const single = await source.resolve("hello", "latest", withAccept([OCI_INDEX, OCI_MANIFEST]));
  assert.equal(single!.mediaType, OCI_MANIFEST);
});

test("a garbage-collected manifest blob is rebuilt", async () => {
  const { storage, resolver, source, make } = setup();
  const m = await source.resolve("tree", "latest", ctx());
  rmSync(storage.blobs.path(m!.digest));
  assert.equal((await source.resolve("tree", "latest", ctx()))?.digest, m!.digest);
  assert.equal(resolver.calls.length, 2);
  rmSync(storage.blobs.path(m!.digest));
  assert.equal((await make().resolve("tree", "latest", ctx()))?.digest, m!.digest);
  assert.equal(resolver.calls.length, 3);
});

test("10 identical concurrent requests share one build", async () => {
  const { resolver, events, source } = setup();
  let open!: () => void;
  resolver.gate = new Promise((res) => (open = res));
  const requests = Array.from({ length: 10 }, (_, i) =>
    source.resolve(
      i % 2 ? "self-ref/empty-file" : "empty-file/self-ref",
      "latest",
      ctx(i % 3 ? "GET" : "HEAD"),
    ),
  );
  // All ten are in before the build may finish: one resolution at the gate, nine joined it.
  await until(
    "the requests to join one build",
    10_000,
    () => {
      assert.equal(resolver.calls.length, 1);
      assert.equal(count(events, "coalesced"), 9);
    },
    10,
  );
  open();
  const results = await Promise.all(requests);
  assert.equal(new Set(results.map((r) => r!.digest)).size, 1);
  assert.equal(resolver.calls.length, 1);
  assert.equal(count(events, "build-start"), 1);
  assert.equal(count(events, "cache-miss"), 1);
  assert.equal(count(events, "coalesced"), 9);
  assert.equal(count(events, "build-done"), 1);
});

test("a client that goes away does not cancel the build others wait for", async () => {
  const { resolver, events, source } = setup();
  let open!: () => void;
  resolver.gate = new Promise((res) => (open = res));
  const leaving = new AbortController();
  const first = source.resolve("single-file", "latest", ctx("GET", leaving.signal));
  const second = source.resolve("single-file", "latest", ctx());
  await until(
    "both requests to wait for one build",
    10_000,
    () => {
      assert.equal(resolver.calls.length, 1);
      assert.equal(count(events, "coalesced"), 1);
    },
    10,
  );
  leaving.abort(new Error("client disconnected"));
  await assert.rejects(first, /client disconnected/);
  open();
  assert.ok(await second);
  assert.equal(count(events, "build-done"), 1);
  // Even with nobody left waiting, a build finishes and is cached.
  resolver.gate = new Promise((res) => (open = res));
  const alone = new AbortController();
  const gone = source.resolve("symlink-path", "latest", ctx("GET", alone.signal));
  alone.abort(new Error("bye"));
  await assert.rejects(gone, /bye/);
  open();
  await until(
    "the abandoned build to finish",
    10_000,
    () => assert.equal(count(events, "build-done"), 2),
    20,
  );
  assert.ok(await source.resolve("symlink-path", "latest", ctx()));
  assert.equal(count(events, "cache-hit"), 1);
});

// The test's timeout is the liveness bound: the request must not hang with the build (how soon after the limit
// it answers is measured in bench/limits.ts).
test(
  "a build that hangs fails with 504 at the time limit, and frees its slot",
  { timeout: 30_000 },
  async () => {
    const { resolver, events, source } = setup({ buildTimeoutMs: 300, maxConcurrentBuilds: 1 });
    resolver.gate = new Promise(() => undefined); // never resolves, ignores the abort signal
    await expectRegistryError(
      source.resolve("hello", "latest", ctx()),
      504,
      "UNKNOWN",
      /took longer than 0\.3 s/,
    );
    assert.equal(count(events, "build-failed"), 1);
    assert.match(events.find((e) => e.type === "build-failed")!.error!, /took longer/);
    assert.deepEqual(source.activeBuilds, { running: 0, queued: 0 });
    // Not cached as a failure, and the slot is free: the next request starts a build of its own (with one slot
    // it would wait for a held one). That build hangs too, so the outcome does not depend on whether this
    // machine can build the image within the 0.3 s limit.
    await expectRegistryError(source.resolve("hello", "latest", ctx()), 504, "UNKNOWN", /took longer/);
    assert.equal(count(events, "build-start"), 2);
    assert.equal(count(events, "build-failed"), 2);
    assert.equal(resolver.calls.length, 2);
    assert.deepEqual(source.activeBuilds, { running: 0, queued: 0 });
  },
);

test("a package set that fails to evaluate: 500 with its cause (server paths redacted), logged as a failed build", async () => {
  const { resolver, events, source } = setup();
  resolver.failMissing = new NixociError(
    "nix file /srv/secret/pkgs.nix",
    "evaluation failed: error: attribute 'missing' missing",
  );
  await expectRegistryError(
    source.resolve("hello", "latest", ctx()),
    500,
    "UNKNOWN",
    /^checking the packages of hello failed: .*attribute 'missing' missing/,
  );
  const failed = events.filter((e) => e.type === "build-failed");
  assert.equal(failed.length, 1);
  assert.doesNotMatch(failed[0].error!, /\/srv\/secret/);
});

test("a build that finds the storage full: 507, as an upload gets", async () => {
  const { resolver, source } = setup();
  resolver.fail = new NixociError("/srv/registry/blobs", "cannot write a blob", {
    cause: Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" }),
  });
  await expectRegistryError(
    source.resolve("hello", "latest", ctx()),
    507,
    "UNKNOWN",
    /^the registry's storage is full: building the image hello failed/,
  );
});

test("beyond the queue: 429 TOOMANYREQUESTS; queued builds run when a slot frees", async () => {
  const { resolver, events, source } = setup({ maxConcurrentBuilds: 1, maxQueuedBuilds: 1 });
  let open!: () => void;
  resolver.gate = new Promise((res) => (open = res));
  const a = source.resolve("hello", "latest", ctx()); // building
  const b = source.resolve("tree", "latest", ctx()); // queued
  await until(
    "one build running and one queued",
    10_000,
    () => assert.deepEqual(source.activeBuilds, { running: 1, queued: 1 }),
    10,
  );
  await assert.rejects(source.resolve("greeting", "latest", ctx()), (e: unknown) => {
    assert.ok(e instanceof RegistryError);
    assert.equal(e.status, 429);
    assert.equal(e.code, "TOOMANYREQUESTS");
    assert.ok(e.headers["Retry-After"]);
    return true;
  });
  // A name the set does not have is a 404 at once, full queue or not: it waits for no slot, builds nothing.
  await expectRegistryError(
    source.resolve("nope", "latest", ctx()),
    404,
    "NAME_UNKNOWN",
    /^unknown package "nope"$/,
  );
  // Joining a build that is already on its way is not a new build: no 429.
  const b2 = source.resolve("tree", "latest", ctx());
  assert.equal(count(events, "rejected"), 1);
  assert.equal(count(events, "build-start"), 1);
  open();
  const [ma, mb, mb2] = await Promise.all([a, b, b2]);
  assert.ok(ma && mb);
  assert.equal(mb2!.digest, mb!.digest);
  assert.equal(count(events, "build-start"), 2);
  assert.deepEqual(source.activeBuilds, { running: 0, queued: 0 });
});

test("errors: unknown packages 404 NAME_UNKNOWN, bad names 400, failing builds 500 one line", async () => {
  const { storage, resolver, source } = setup();
  await expectRegistryError(
    source.resolve("hello/nope/zzz", "latest", ctx()),
    404,
    "NAME_UNKNOWN",
    /^unknown packages "nope", "zzz"$/,
  );
  await expectRegistryError(
    source.resolve("nope", "latest", ctx()),
    404,
    "NAME_UNKNOWN",
    /^unknown package "nope"$/,
  );
  // A near miss of a name the set has, among those a repository name can spell (and the meta-packages).
  await assert.rejects(source.resolve("helo/grenting/shel", "latest", ctx()), (e: unknown) => {
    assert.ok(e instanceof RegistryError);
    assert.equal(e.code, "NAME_UNKNOWN");
    assert.equal(
      e.message,
      'unknown packages "grenting" (did you mean greeting?), "helo" (did you mean hello?), "shel" (did you mean shell?)',
    );
    assert.deepEqual(e.detail, {
      packages: ["grenting", "helo", "shel"],
      suggestions: { grenting: "greeting", helo: "hello", shel: "shell" },
      source: "test fixtures",
    });
    return true;
  });
  // An architecture the resolver gives no packages for: 404 naming it, before anything is resolved.
  resolver.arches = ["amd64"];
  const calls = resolver.calls.length;
  await expectRegistryError(
    source.resolve("arm64/hello", "latest", ctx()),
    404,
    "NAME_UNKNOWN",
    /^this server builds no images for arm64 \(it builds for amd64\)$/,
  );
  assert.equal(resolver.calls.length, calls);
  await expectRegistryError(source.resolve("Hello", "latest", ctx()), 400, "NAME_INVALID");
  resolver.fail = new NixociError("/x/packages.nix", "build failed (exit 1): error: builder for 'x'\nfailed");
  await expectRegistryError(
    source.resolve("hello", "latest", ctx()),
    500,
    "UNKNOWN",
    /^building the image hello failed: <server path>: build failed \(exit 1\): error: builder for 'x' failed$/,
  );
  // Failures are not cached.
  resolver.fail = undefined;
  const m = await source.resolve("hello", "latest", ctx());
  assert.ok(m);

  // A repository with pushed content (tags) asked for a tag it lacks: the server's usual 404 (undefined), not a
  // package or revision error. Repositories served from the source have no tags, so they keep those errors.
  await storage.putManifest("myapp", "v1", m.bytes, m.mediaType);
  assert.equal(await source.resolve("myapp", "latest", ctx()), undefined);
  assert.equal(await source.resolve("myapp", "v2", ctx()), undefined);
  await storage.adoptManifest("hello", m);
  await expectRegistryError(source.resolve("hello", "v2", ctx()), 404, "MANIFEST_UNKNOWN", /revision v2/);
});

test("tags lists: the tags a name pulls by, without resolving it; pushed tags too; 404 as its pull", async () => {
  const { storage, resolver, source } = setup();
  const server = createRegistryServer({ storage, manifestSource: source });
  await new Promise<void>((res) => server.listen(0, "127.0.0.1", res));
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  const get = async (path: string) => {
    const res = await fetch(`http://${host}${path}`);
    return { status: res.status, link: res.headers.get("link"), json: (await res.json()) as unknown };
  };
  try {
    assert.deepEqual(await get("/v2/hello/busybox/tags/list"), {
      status: 200,
      link: null,
      json: { name: "hello/busybox", tags: ["latest", "rev1"] },
    });
    assert.deepEqual(resolver.calls, []);
    // A package name pushed to: its pushed tags and the ones it pulls by.
    const m = await source.resolve("hello", "latest", ctx());
    await storage.putManifest("hello", "v1", m!.bytes, m!.mediaType);
    assert.deepEqual((await get("/v2/hello/tags/list")).json, {
      name: "hello",
      tags: ["latest", "rev1", "v1"],
    });
    assert.deepEqual(await get("/v2/hello/tags/list?n=1"), {
      status: 200,
      link: '</v2/hello/tags/list?n=1&last=latest>; rel="next"',
      json: { name: "hello", tags: ["latest"] },
    });
    // A pushed repository that is no package: its own tags.
    await storage.putManifest("myapp", "v1", m!.bytes, m!.mediaType);
    assert.deepEqual((await get("/v2/myapp/tags/list")).json, { name: "myapp", tags: ["v1"] });
    // A name that would not resolve: the 404 its pull gets.
    const unknown = await get("/v2/helo/tags/list");
    assert.equal(unknown.status, 404);
    assert.deepEqual(unknown.json, (await get("/v2/helo/manifests/latest")).json);
    assert.deepEqual(unknown.json, {
      errors: [
        {
          code: "NAME_UNKNOWN",
          message: 'unknown package "helo" (did you mean hello?)',
          detail: { packages: ["helo"], suggestions: { helo: "hello" }, source: "test fixtures" },
        },
      ],
    });
    // A new revision: rev1 no longer pulls (this resolver serves only its current one), so it is no tag.
    resolver.revision = "rev2";
    assert.deepEqual((await get("/v2/hello/tags/list")).json, {
      name: "hello",
      tags: ["latest", "rev2", "v1"],
    });
  } finally {
    server.closeAllConnections();
    await new Promise((res) => server.close(res));
  }
});

test("end to end with the real nix resolver on packages.nix", async () => {
  const root = join(work, "e2e");
  const storage = new RegistryStorage(root);
  const resolver = new NixEvalResolver({ nixFile: PACKAGES_NIX });
  const events: NixImageEvent[] = [];
  const source = new NixImageSource({
    storage,
    resolver,
    store,
    defaultArch: "amd64",
    metaPackages: { shell: ["busybox"] },
    onEvent: (e) => events.push(e),
  });
  const m = await source.resolve("shell/hello", "latest", ctx());
  assert.ok(m);
  const manifest = JSON.parse(m.bytes.toString());
  const paths = manifest.layers.flatMap((l: { annotations?: Record<string, string> }) =>
    storePathsFromAnnotations(l.annotations ?? {}),
  );
  assert.deepEqual(paths.sort(), [fx.busybox, fx.greeting, fx.hello].sort());
  const config = JSON.parse(readFileSync(storage.blobs.path(manifest.config.digest), "utf8"));
  assert.deepEqual(config.config.Cmd, ["/bin/sh"]);
  assert.equal(config.config.Labels["dev.nixoci.revision"], await resolver.currentRevision());
  assert.equal((await source.resolve("hello/busybox", "latest", ctx("HEAD")))?.digest, m.digest);
  assert.equal(count(events, "cache-hit"), 1);
  // Pinned: the current revision works, anything else is 404 naming it.
  assert.equal(
    (await source.resolve("hello/shell", await resolver.currentRevision(), ctx()))?.digest,
    m.digest,
  );
  // The message says where revisions come from without the server's own path to its Nix file.
  await expectRegistryError(
    source.resolve("hello", "not-a-revision", ctx()),
    404,
    "MANIFEST_UNKNOWN",
    /^revision not-a-revision: is not available from nix file <server path>$/,
  );
  await expectRegistryError(
    source.resolve("hello/no-such-package/nor-this", "latest", ctx()),
    404,
    "NAME_UNKNOWN",
    /^unknown packages "no-such-package", "nor-this"$/,
  );
  assert.ok(existsSync(join(root, "nix-images")));
});

test("over HTTP: skopeo pulls a package image from the registry server, and sees the package errors", async () => {
  const root = join(work, "http");
  const storage = new RegistryStorage(root);
  const events: NixImageEvent[] = [];
  const source = new NixImageSource({
    storage,
    resolver: new NixEvalResolver({ nixFile: PACKAGES_NIX }),
    store,
    defaultArch: "amd64",
    metaPackages: { shell: ["busybox"] },
    onEvent: (e) => events.push(e),
  });
  const server = createRegistryServer({ storage, manifestSource: source });
  await new Promise<void>((res) => server.listen(0, "127.0.0.1", res));
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    const skopeo = (args: string[]) =>
      new Promise<{ code: number; stdout: string; stderr: string }>((res) => {
        execFile("skopeo", args, (err, stdout, stderr) =>
          res({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
        );
      });
    const layout = join(work, "pulled");
    const copy = await skopeo([
      "copy",
      "--src-tls-verify=false",
      `docker://${host}/shell/hello:latest`,
      `oci:${layout}:x`,
    ]);
    assert.equal(copy.code, 0, copy.stderr);
    const inspect = JSON.parse((await skopeo(["inspect", `oci:${layout}:x`])).stdout);
    assert.equal(inspect.Architecture, "amd64");
    assert.equal(inspect.Labels["dev.nixoci.packages"], "busybox hello");
    assert.equal(count(events, "build-done"), 1);
    // Pulled again, under another name for the same set: no build.
    const again = await skopeo(["inspect", "--tls-verify=false", `docker://${host}/hello/shell`]);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(JSON.parse(again.stdout).Digest, inspect.Digest);
    assert.equal(count(events, "build-start"), 1);
    // Every spelling of the image is recorded as one repository: a whole pull (blobs too) of a third spelling
    // reads it, and the storage has no repository per spelling.
    const third = await skopeo([
      "copy",
      "--src-tls-verify=false",
      `docker://${host}/hello/shell/hello:latest`,
      `oci:${join(work, "pulled-third")}:x`,
    ]);
    assert.equal(third.code, 0, third.stderr);
    assert.equal(count(events, "build-start"), 1);
    assert.deepEqual(await storage.listRepositories(), ["hello/shell"]);
    const unknown = await skopeo(["inspect", "--tls-verify=false", `docker://${host}/hello/no-such-thing`]);
    assert.notEqual(unknown.code, 0);
    assert.match(unknown.stderr, /name unknown: unknown package \\"no-such-thing\\""\n$/);
  } finally {
    server.closeAllConnections();
    await new Promise((res) => server.close(res));
  }
});
