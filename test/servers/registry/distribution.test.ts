// The distribution API of `nixoci serve` over filesystem storage, driven by real clients: our pusher (monolithic,
// chunked, mounts), skopeo (push from an OCI layout, inspect, copy back), docker 20.10 (push, pull, run) and
// containerd (ctr pull, run); a corpus of malformed requests; and the same requests against docker-registry 2.8.
// The server runs in this process, so every client is started asynchronously (a synchronous child would block
// the server it talks to).
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomUUID } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import * as http from "node:http";
import { dirname, join } from "node:path";
import { writeDockerArchive } from "../../../src/outputs/archive.js";
import { sha256Digest, type Digest } from "../../../src/oci/digest.js";
import type { BuiltImage } from "../../../src/oci/image.js";
import { writeOciLayout } from "../../../src/outputs/layout.js";
import {
  DOCKER_CONFIG,
  DOCKER_LAYER_GZIP,
  DOCKER_MANIFEST,
  DOCKER_MANIFEST_LIST,
  OCI_CONFIG,
  OCI_INDEX,
  OCI_LAYER,
  OCI_MANIFEST,
} from "../../../src/oci/media-types.js";
import { pushImage } from "../../../src/outputs/push.js";
import { classifyDigest, compareTags } from "../../../src/oci/reference.js";
import { parseContentRange, parseRange } from "../../../src/servers/registry/http-range.js";
import { negotiate, parseAccept } from "../../../src/servers/registry/negotiation.js";
import { parseRoute } from "../../../src/servers/registry/routes.js";
import { RegistryError } from "../../../src/servers/registry/errors.js";
import type { ManifestSource } from "../../../src/servers/registry/manifest-source.js";
import { RegistryStorage } from "../../../src/servers/registry/storage.js";
import { MAX_OPEN_UPLOADS } from "../../../src/servers/registry/upload-store.js";
import {
  DOCKER_CLI,
  startContainerd,
  startDockerd,
  startRegistry,
  type Containerd,
  type Dockerd,
  type Registry,
} from "../../support/daemons.js";
import { makeTempDir } from "../../support/fixtures.js";
import { makeImage } from "../../support/make-image.js";
import { until } from "../../support/poll.js";
import { exec, request, startServer, type Res, type TestServer } from "../../support/registry-server.js";

process.env.XDG_CACHE_HOME = makeTempDir("registry-xdg");
process.env.DOCKER_CONFIG = makeTempDir("registry-no-docker-config");

// ---- helpers ----

/** Pushes bytes as a blob with a monolithic POST ?digest=. */
async function postBlob(host: string, repo: string, bytes: Buffer): Promise<Digest> {
  const digest = sha256Digest(bytes);
  const res = await request(host, "POST", `/v2/${repo}/blobs/uploads/?digest=${digest}`, {
    body: bytes,
    headers: { "Content-Type": "application/octet-stream" },
  });
  assert.equal(res.status, 201, res.body.toString());
  return digest;
}

async function putManifest(
  host: string,
  repo: string,
  ref: string,
  bytes: Buffer,
  mediaType: string,
): Promise<Res> {
  return request(host, "PUT", `/v2/${repo}/manifests/${ref}`, {
    body: bytes,
    headers: { "Content-Type": mediaType },
  });
}

/** Every file in the blob store is named by its content's digest, and no temporary file is left. */
function checkBlobDir(root: string): string[] {
  const dir = join(root, "blobs", "sha256");
  if (!existsSync(dir)) return [];
  const names = readdirSync(dir);
  for (const name of names) {
    assert.match(name, /^[a-f0-9]{64}$/, `stray file in the blob store: ${name}`);
    const hex = createHash("sha256")
      .update(readFileSync(join(dir, name)))
      .digest("hex");
    assert.equal(hex, name, `blob ${name} has the wrong content`);
  }
  return names;
}

function uploadsLeft(root: string): string[] {
  const dir = join(root, "uploads");
  return existsSync(dir) ? readdirSync(dir) : [];
}

async function uploadStart(host: string, repo: string): Promise<string> {
  const res = await request(host, "POST", `/v2/${repo}/blobs/uploads/`);
  assert.equal(res.status, 202);
  const loc = String(res.headers.location);
  const u = new URL(loc, `http://${host}`);
  return u.pathname + u.search;
}

function withQuery(location: string, q: string): string {
  return location + (location.includes("?") ? "&" : "?") + q;
}

const ZERO = `sha256:${"0".repeat(64)}`;

/** Every page of a paged list, following the Link headers from `path`: [tags of each page, its Link]. */
async function pages(host: string, path: string): Promise<Array<[string[], string | undefined]>> {
  const out: Array<[string[], string | undefined]> = [];
  for (let next: string | undefined = path; next !== undefined;) {
    const res = await request(host, "GET", next);
    assert.equal(res.status, 200, next);
    const link = res.headers.link === undefined ? undefined : String(res.headers.link);
    out.push([(res.json as { tags: string[] }).tags, link]);
    next = link === undefined ? undefined : /^<([^>]+)>; rel="next"$/.exec(link)?.[1];
    assert.ok(link === undefined || next !== undefined, `malformed Link: ${link}`);
    assert.ok(out.length <= 100, "the Link headers do not end");
  }
  return out;
}

interface ChunkedSend {
  /** The response, when one came. */
  res?: Res;
  /** Bytes of the body written (each chunk flushed with no error, the request still open). */
  written: number;
  /** An error on the client side (EPIPE, ECONNRESET...). */
  error?: Error;
}

/** A response read to its end (undefined when the request closes first). */
function responseOf(req: http.ClientRequest): Promise<Res | undefined> {
  return new Promise((resolve) => {
    req.once("close", () => resolve(undefined));
    req.once("response", (r) => {
      const chunks: Buffer[] = [];
      r.on("data", (c: Buffer) => chunks.push(c));
      r.on("error", () => resolve(undefined));
      r.on("end", () => {
        const body = Buffer.concat(chunks);
        const res: Res = { status: r.statusCode ?? 0, headers: r.headers, body };
        try {
          res.json = JSON.parse(body.toString("utf8"));
          res.code = (res.json as { errors?: Array<{ code?: string }> }).errors?.[0]?.code;
        } catch {
          // not JSON
        }
        resolve(res);
      });
    });
  });
}

/**
 * A request whose body is written in `chunks`, paced (each after the last was flushed, a few ms apart), so that a
 * server answering early answers while the client is still sending; through `agent`. Writing stops when the
 * request fails or is closed (as Node's client does once it has a response with Connection: close).
 */
async function sendInChunks(
  host: string,
  method: string,
  path: string,
  headers: Record<string, string>,
  chunks: Buffer[],
  agent: http.Agent,
): Promise<ChunkedSend> {
  const [hostname, port] = host.split(":");
  const req = http.request({ host: hostname, port: Number(port), method, path, headers, agent });
  let error: Error | undefined;
  req.on("error", (err) => (error ??= err));
  const response = responseOf(req);
  const closed = new Promise<Error>((resolve) => req.once("close", () => resolve(new Error("closed"))));
  let written = 0;
  for (const c of chunks) {
    if (req.destroyed || error) break;
    const err = await Promise.race([new Promise<Error | null | undefined>((r) => req.write(c, r)), closed]);
    if (err || req.destroyed) break;
    written += c.length;
    await new Promise((r) => setTimeout(r, 2));
  }
  if (!req.destroyed && !error) req.end();
  const res = await response;
  await closed; // done with the connection: a keep-alive agent has it back
  return { written, ...(res ? { res } : {}), ...(error ? { error } : {}) };
}

// ---- pure parts ----

test("digests, ranges, Accept and routes", () => {
  assert.equal(classifyDigest(`sha256:${"a".repeat(64)}`), "sha256");
  assert.equal(classifyDigest(`sha256:${"A".repeat(64)}`), "invalid");
  assert.equal(classifyDigest("sha256:xyz"), "invalid");
  assert.equal(classifyDigest(`sha512:${"a".repeat(128)}`), "unsupported");
  assert.equal(classifyDigest(`sha512:${"a".repeat(64)}`), "invalid");
  assert.equal(classifyDigest("md5:d41d8cd98f00b204e9800998ecf8427e"), "unsupported");
  assert.equal(classifyDigest("../../etc"), "invalid");

  assert.deepEqual(parseRange("bytes=0-9", 100), { start: 0, end: 9 });
  assert.deepEqual(parseRange("bytes=90-", 100), { start: 90, end: 99 });
  assert.deepEqual(parseRange("bytes=-5", 100), { start: 95, end: 99 });
  assert.deepEqual(parseRange("bytes=-500", 100), { start: 0, end: 99 });
  assert.deepEqual(parseRange("bytes=50-500", 100), { start: 50, end: 99 });
  assert.equal(parseRange("bytes=100-", 100), "unsatisfiable");
  assert.equal(parseRange("bytes=-0", 100), "unsatisfiable");
  assert.equal(parseRange("bytes=0-", 0), "unsatisfiable");
  assert.equal(parseRange("bytes=0-1,5-6", 100), undefined);
  assert.equal(parseRange("bytes=9-1", 100), undefined);
  assert.equal(parseRange("items=0-1", 100), undefined);

  assert.deepEqual(parseContentRange("0-99"), { start: 0, end: 99 });
  assert.deepEqual(parseContentRange("bytes 100-199/*"), { start: 100, end: 199 });
  assert.equal(parseContentRange("bogus"), null);
  assert.equal(parseContentRange("9-1"), null);

  assert.deepEqual(
    parseAccept("application/json; q=0.5, Application/Vnd.Docker.Distribution.Manifest.V2+json"),
    ["application/json", DOCKER_MANIFEST],
  );
  assert.deepEqual(negotiate(OCI_MANIFEST, []), { as: "as-is" });
  assert.deepEqual(negotiate(OCI_MANIFEST, [OCI_MANIFEST, DOCKER_MANIFEST]), { as: "as-is" });
  assert.deepEqual(negotiate(OCI_MANIFEST, [DOCKER_MANIFEST, DOCKER_MANIFEST_LIST]), {
    as: "docker",
    to: DOCKER_MANIFEST,
  });
  assert.deepEqual(negotiate(OCI_INDEX, [DOCKER_MANIFEST]), { as: "reject" });
  assert.deepEqual(negotiate(DOCKER_MANIFEST, [OCI_MANIFEST]), { as: "as-is" });

  assert.deepEqual(parseRoute("/v2/a/b/manifests/latest"), {
    kind: "manifest",
    name: "a/b",
    reference: "latest",
  });
  assert.deepEqual(parseRoute("/v2/x/blobs/blobs/sha256:1"), {
    kind: "blob",
    name: "x/blobs",
    digest: "sha256:1",
  });
  assert.deepEqual(parseRoute("/v2/a/blobs/uploads/"), { kind: "upload-start", name: "a" });
  assert.deepEqual(parseRoute("/v2/a/blobs/uploads/u"), { kind: "upload", name: "a", uuid: "u" });
  assert.equal(parseRoute("/metrics"), undefined);
  assert.deepEqual(parseRoute("/v2/a/nothing"), { kind: "unknown" });
  for (const bad of [
    "/v2/a/../b/tags/list",
    "/v2/%2e%2e/tags/list",
    "/v2/a//b/tags/list",
    "/v2//a/tags/list",
  ])
    assert.throws(
      () => parseRoute(bad),
      (e: unknown) => e instanceof RegistryError && e.status === 404 && e.code === "NAME_UNKNOWN",
      bad,
    );
  assert.throws(
    () => parseRoute("/v2/Upper/tags/list"),
    (e: unknown) => e instanceof RegistryError && e.status === 400 && e.code === "NAME_INVALID",
  );
});

describe("RegistryStorage API", () => {
  test("a manifest whose blobs were built into the blob store (the layer cache) is put and served", async () => {
    const storage = new RegistryStorage(makeTempDir("registry-storage"));
    const image = await makeImage({ blobs: storage.blobs });
    assert.equal(await storage.hasRepository("nix/hello"), false);
    const digest = await storage.putManifest("nix/hello", "v1", image.manifest.bytes, OCI_MANIFEST);
    assert.equal(digest, image.manifest.digest);
    assert.equal(await storage.hasRepository("nix/hello"), true);
    for (const l of image.layers)
      assert.equal(await storage.blobLinked("nix/hello", l.digest as Digest), true);
    assert.deepEqual(await storage.getManifest("nix/hello", "v1"), {
      digest,
      mediaType: OCI_MANIFEST,
      bytes: image.manifest.bytes,
    });
    assert.deepEqual(await storage.listTags("nix/hello"), ["v1"]);
    assert.deepEqual(await storage.listRepositories(), ["nix/hello"]);
    await assert.rejects(storage.getManifest("../x", "v1"), RegistryError);
    await assert.rejects(
      storage.putManifest("nix/other", "v1", Buffer.from("{}"), "text/plain"),
      (e: unknown) => e instanceof RegistryError && e.code === "MANIFEST_INVALID",
    );
    assert.equal(await storage.getManifest("nix/hello", "nope"), undefined);

    // An index whose platform holds anything but the spec's fields as typed, or plain values: refused.
    const indexWith = (platform: unknown) =>
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: OCI_INDEX,
          manifests: [{ mediaType: OCI_MANIFEST, digest, size: image.manifest.bytes.length, platform }],
        }),
      );
    // 50,000 nested arrays, written out (JSON.stringify cannot go that deep; JSON.parse can).
    const deep = Buffer.from(
      indexWith({ architecture: "amd64", os: "linux", x: "DEEP" })
        .toString()
        .replace('"DEEP"', "[".repeat(50_000) + "]".repeat(50_000)),
    );
    await assert.rejects(
      storage.putManifest("nix/hello", "bad", deep, OCI_INDEX),
      (e: unknown) => e instanceof RegistryError && e.code === "MANIFEST_INVALID",
    );
    for (const platform of [
      { architecture: "amd64", os: "linux", variant: 8 },
      { architecture: "amd64", os: "linux", "os.features": [1] },
    ])
      await assert.rejects(
        storage.putManifest("nix/hello", "bad", indexWith(platform), OCI_INDEX),
        (e: unknown) => e instanceof RegistryError && e.code === "MANIFEST_INVALID",
      );
    const ok = { architecture: "arm", os: "linux", variant: "v7", "os.features": ["x"], "org.example": 1 };
    assert.ok(await storage.putManifest("nix/hello", "index", indexWith(ok), OCI_INDEX));
  });

  test("at most MAX_OPEN_UPLOADS sessions at once: then 429, and a session that ends frees its place", async () => {
    const storage = new RegistryStorage(makeTempDir("registry-storage-many"));
    const open = [];
    for (let i = 0; i < MAX_OPEN_UPLOADS; i++) open.push(await storage.startUpload("x/y"));
    await assert.rejects(
      storage.startUpload("x/y"),
      (e: unknown) => e instanceof RegistryError && e.status === 429 && e.code === "TOOMANYREQUESTS",
    );
    assert.equal(await storage.cancelUpload("x/y", open[0].uuid), true);
    assert.ok(await storage.startUpload("x/y"));
  });

  test("an upload goes on in another process (the running hash is rebuilt); old sessions are purged", async () => {
    const root = makeTempDir("registry-storage-up");
    const a = new RegistryStorage(root);
    const up = await a.startUpload("x/y");
    const { Readable } = await import("node:stream");
    await a.appendUpload("x/y", up.uuid, Readable.from([Buffer.from("hello ")]), { offset: 0 });
    const b = new RegistryStorage(root);
    await assert.rejects(
      b.appendUpload("x/y", up.uuid, Readable.from([Buffer.from("x")]), { offset: 0 }),
      (e: unknown) => e instanceof RegistryError && e.status === 416,
    );
    await b.appendUpload("x/y", up.uuid, Readable.from([Buffer.from("world")]), { offset: 6 });
    const done = await b.finishUpload("x/y", up.uuid, sha256Digest("hello world"));
    assert.deepEqual(done, { digest: sha256Digest("hello world"), size: 11 });
    assert.equal(readFileSync(b.blobs.path(done.digest), "utf8"), "hello world");
    await b.startUpload("x/y");
    assert.equal(await b.purgeUploads(60_000), 0);
    assert.equal(await b.purgeUploads(-1), 1);
    assert.deepEqual(uploadsLeft(root), []);
  });
});

// ---- the server with real clients ----

describe("nixoci serve: distribution API", () => {
  let srv: TestServer;
  let image: BuiltImage;
  let big: BuiltImage;
  before(async () => {
    srv = await startServer();
    image = await makeImage();
    big = await makeImage({ hello: "big\n", randomBytes: 3 << 20 });
  });
  after(async () => {
    await srv?.stop();
  });

  test("GET /v2/", async () => {
    const res = await request(srv.host, "GET", "/v2/");
    assert.equal(res.status, 200);
    assert.equal(res.headers["docker-distribution-api-version"], "registry/2.0");
    assert.equal(res.headers["content-type"], "application/json");
    assert.deepEqual(res.json, {});
  });

  test("pushImage (monolithic), skopeo inspects and copies back", { timeout: 120_000 }, async () => {
    const r = await pushImage(
      image,
      { registry: srv.host, repository: "hello/src", tag: "v1" },
      { pushRecord: false },
    );
    assert.equal(r.manifestDigest, image.manifest.digest);
    assert.equal(r.uploaded.length, 3);
    const info = JSON.parse(
      await exec("skopeo", ["inspect", "--tls-verify=false", `docker://${srv.host}/hello/src:v1`]),
    ) as { Digest: string; Layers: string[] };
    assert.equal(info.Digest, image.manifest.digest);
    assert.deepEqual(
      info.Layers,
      image.layers.map((l) => l.digest),
    );
    const out = join(makeTempDir("registry-pull"), "layout");
    await exec("skopeo", [
      "--insecure-policy",
      "copy",
      "--src-tls-verify=false",
      `docker://${srv.host}/hello/src:v1`,
      `oci:${out}:v1`,
    ]);
    const index = JSON.parse(readFileSync(join(out, "index.json"), "utf8")) as {
      manifests: Array<{ digest: string }>;
    };
    assert.equal(index.manifests[0].digest, image.manifest.digest);
    for (const l of image.layers)
      assert.deepEqual(
        readFileSync(join(out, "blobs/sha256", l.digest.slice(7))),
        readFileSync(image.blobs.path(l.digest as Digest)),
      );

    // The manifest as stored: exact bytes and headers.
    const m = await request(srv.host, "GET", "/v2/hello/src/manifests/v1", {
      headers: { Accept: OCI_MANIFEST },
    });
    assert.equal(m.status, 200);
    assert.deepEqual(m.body, image.manifest.bytes);
    assert.equal(m.headers["content-type"], OCI_MANIFEST);
    assert.equal(m.headers["docker-content-digest"], image.manifest.digest);
    assert.equal(m.headers["content-length"], String(image.manifest.size));
    assert.equal(m.headers.etag, `"${image.manifest.digest}"`);
    const h = await request(srv.host, "HEAD", `/v2/hello/src/manifests/${image.manifest.digest}`);
    assert.equal(h.status, 200);
    assert.equal(h.body.length, 0);
    assert.equal(h.headers["content-length"], String(image.manifest.size));
    assert.equal(h.headers["docker-content-digest"], image.manifest.digest);
    const nm = await request(srv.host, "GET", "/v2/hello/src/manifests/v1", {
      headers: { "If-None-Match": `"${image.manifest.digest}"` },
    });
    assert.equal(nm.status, 304);
  });

  test("pushImage in small PATCH chunks; blob ranges", { timeout: 120_000 }, async () => {
    const events: string[] = [];
    const r = await pushImage(
      big,
      { registry: srv.host, repository: "chunked/big", tag: "v1" },
      {
        pushRecord: false,
        monolithicLimit: 64 << 10,
        chunkSize: 256 << 10,
        onEvent: (e) => events.push(e.type),
      },
    );
    assert.equal(r.manifestDigest, big.manifest.digest);
    const patches = srv.requests.filter((i) => i.route === "upload.patch" && i.repo === "chunked/big");
    assert.ok(patches.length >= 12, `only ${patches.length} PATCH requests`);
    assert.ok(patches.every((p) => p.status === 202));

    const layer = big.layers[2];
    const file = readFileSync(big.blobs.path(layer.digest as Digest));
    const path = `/v2/chunked/big/blobs/${layer.digest}`;
    const full = await request(srv.host, "GET", path);
    assert.equal(full.status, 200);
    assert.deepEqual(full.body, file);
    assert.equal(full.headers["content-type"], "application/octet-stream");
    assert.equal(full.headers["docker-content-digest"], layer.digest);
    assert.equal(full.headers["accept-ranges"], "bytes");
    const head = await request(srv.host, "HEAD", path);
    assert.equal(head.status, 200);
    assert.equal(head.headers["content-length"], String(file.length));
    const cases: Array<[string, number, number]> = [
      ["bytes=0-9", 0, 9],
      [`bytes=${file.length - 100}-`, file.length - 100, file.length - 1],
      ["bytes=-5", file.length - 5, file.length - 1],
      [`bytes=1000-${file.length + 5000}`, 1000, file.length - 1],
    ];
    for (const [range, a, b] of cases) {
      const res = await request(srv.host, "GET", path, { headers: { Range: range } });
      assert.equal(res.status, 206, range);
      assert.equal(res.headers["content-range"], `bytes ${a}-${b}/${file.length}`);
      assert.deepEqual(res.body, file.subarray(a, b + 1));
    }
    for (const range of [`bytes=${file.length}-`, "bytes=-0"]) {
      const res = await request(srv.host, "GET", path, { headers: { Range: range } });
      assert.equal(res.status, 416, range);
      assert.equal(res.headers["content-range"], `bytes */${file.length}`);
    }
  });

  test("cross-repository mount", { timeout: 60_000 }, async () => {
    const r = await pushImage(
      image,
      { registry: srv.host, repository: "mount/target", tag: "v1" },
      { pushRecord: false, mountFrom: ["hello/src"] },
    );
    assert.equal(r.mounted.length, 3);
    assert.equal(r.uploaded.length, 0);
    // Not in `from`: a normal upload session starts instead.
    const layer = image.layers[0].digest;
    const res = await request(
      srv.host,
      "POST",
      `/v2/mount/other/blobs/uploads/?mount=${layer}&from=nothing/here`,
    );
    assert.equal(res.status, 202);
    assert.match(String(res.headers.location), /^\/v2\/mount\/other\/blobs\/uploads\/[0-9a-f-]{36}$/);
    assert.equal(res.headers.range, "0-0");
    assert.equal(res.headers["docker-upload-uuid"], String(res.headers.location).split("/").pop());
    assert.equal((await request(srv.host, "DELETE", String(res.headers.location))).status, 204);
    // The blob is not visible in a repository it was never pushed or mounted to.
    assert.equal((await request(srv.host, "HEAD", `/v2/mount/other/blobs/${layer}`)).status, 404);
  });

  test("skopeo pushes from an OCI layout and copies back", { timeout: 120_000 }, async () => {
    const layout = join(makeTempDir("registry-layout"), "layout");
    await writeOciLayout(image, layout, "v1");
    await exec("skopeo", [
      "--insecure-policy",
      "copy",
      "--dest-tls-verify=false",
      `oci:${layout}:v1`,
      `docker://${srv.host}/skopeo/pushed:v1`,
    ]);
    const info = JSON.parse(
      await exec("skopeo", ["inspect", "--tls-verify=false", `docker://${srv.host}/skopeo/pushed:v1`]),
    ) as { Digest: string };
    assert.equal(info.Digest, image.manifest.digest);
    const raw = await exec("skopeo", [
      "inspect",
      "--raw",
      "--tls-verify=false",
      `docker://${srv.host}/skopeo/pushed:v1`,
    ]);
    assert.equal(raw, image.manifest.bytes.toString());
    const out = join(makeTempDir("registry-skopeo-back"), "layout");
    await exec("skopeo", [
      "--insecure-policy",
      "copy",
      "--src-tls-verify=false",
      `docker://${srv.host}/skopeo/pushed:v1`,
      `oci:${out}:v1`,
    ]);
    await exec("umoci", ["unpack", "--rootless", "--image", `${out}:v1`, join(out, "..", "bundle")]);
    assert.equal(readFileSync(join(out, "..", "bundle/rootfs/hello.txt"), "utf8"), "hello from nixoci\n");
  });

  test(
    "OCI manifests and indexes as Docker schema 2 for Docker-only clients",
    { timeout: 60_000 },
    async () => {
      await pushImage(
        image,
        { registry: srv.host, repository: "conv/img", tag: "v1" },
        { pushRecord: false },
      );
      const docker = await request(srv.host, "GET", "/v2/conv/img/manifests/v1", {
        headers: { Accept: `${DOCKER_MANIFEST}, ${DOCKER_MANIFEST_LIST}` },
      });
      assert.equal(docker.status, 200);
      assert.equal(docker.headers["content-type"], DOCKER_MANIFEST);
      const dm = docker.json as {
        mediaType: string;
        config: { mediaType: string; digest: string; size: number };
        layers: Array<{ mediaType: string; digest: string; size: number }>;
      };
      assert.equal(dm.mediaType, DOCKER_MANIFEST);
      assert.deepEqual(dm.config, {
        mediaType: DOCKER_CONFIG,
        size: image.config.size,
        digest: image.config.digest,
      });
      assert.deepEqual(
        dm.layers,
        image.layers.map((l) => ({ mediaType: DOCKER_LAYER_GZIP, size: l.size, digest: l.digest })),
      );
      const dd = sha256Digest(docker.body);
      assert.equal(docker.headers["docker-content-digest"], dd);
      // Stored: GET by its digest works (for any client), and the OCI original is still served to OCI clients.
      const byDigest = await request(srv.host, "GET", `/v2/conv/img/manifests/${dd}`);
      assert.equal(byDigest.status, 200);
      assert.deepEqual(byDigest.body, docker.body);
      assert.equal(byDigest.headers["content-type"], DOCKER_MANIFEST);
      const oci = await request(srv.host, "GET", "/v2/conv/img/manifests/v1", {
        headers: { Accept: `${OCI_MANIFEST}, ${DOCKER_MANIFEST}` },
      });
      assert.deepEqual(oci.body, image.manifest.bytes);
      const anyType = await request(srv.host, "GET", "/v2/conv/img/manifests/v1", {
        headers: { Accept: "*/*" },
      });
      assert.deepEqual(anyType.body, image.manifest.bytes);

      // An index with a platform: a manifest list whose entry is the converted manifest.
      const index = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: OCI_INDEX,
          manifests: [
            {
              mediaType: OCI_MANIFEST,
              digest: image.manifest.digest,
              size: image.manifest.size,
              platform: { architecture: "amd64", os: "linux" },
            },
          ],
        }),
      );
      assert.equal((await putManifest(srv.host, "conv/img", "multi", index, OCI_INDEX)).status, 201);
      const list = await request(srv.host, "GET", "/v2/conv/img/manifests/multi", {
        headers: { Accept: `${DOCKER_MANIFEST}, ${DOCKER_MANIFEST_LIST}` },
      });
      assert.equal(list.status, 200);
      assert.equal(list.headers["content-type"], DOCKER_MANIFEST_LIST);
      assert.deepEqual((list.json as { manifests: unknown[] }).manifests, [
        {
          mediaType: DOCKER_MANIFEST,
          digest: dd,
          size: docker.body.length,
          platform: { architecture: "amd64", os: "linux" },
        },
      ]);
      const onlyManifest = await request(srv.host, "GET", "/v2/conv/img/manifests/multi", {
        headers: { Accept: DOCKER_MANIFEST },
      });
      assert.equal(onlyManifest.status, 404);
      assert.equal(onlyManifest.code, "MANIFEST_UNKNOWN");

      // Uncompressed layers have no Docker schema 2 form: 404 with the reason.
      const tar = Buffer.alloc(1024);
      const layerDigest = await postBlob(srv.host, "conv/plain", tar);
      const cfg = Buffer.from(
        JSON.stringify({
          architecture: "amd64",
          os: "linux",
          rootfs: { type: "layers", diff_ids: [layerDigest] },
        }),
      );
      const cfgDigest = await postBlob(srv.host, "conv/plain", cfg);
      const plain = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: OCI_MANIFEST,
          config: { mediaType: OCI_CONFIG, digest: cfgDigest, size: cfg.length },
          layers: [{ mediaType: OCI_LAYER, digest: layerDigest, size: tar.length }],
        }),
      );
      assert.equal((await putManifest(srv.host, "conv/plain", "v1", plain, OCI_MANIFEST)).status, 201);
      const refused = await request(srv.host, "GET", "/v2/conv/plain/manifests/v1", {
        headers: { Accept: DOCKER_MANIFEST },
      });
      assert.equal(refused.status, 404);
      assert.equal(refused.code, "MANIFEST_UNKNOWN");
      assert.match(JSON.stringify(refused.json), /gzip-compressed layers only/);
    },
  );

  test("tags/list and _catalog pagination", async () => {
    const repo = "paging/tags";
    await pushImage(image, { registry: srv.host, repository: repo, tag: "t3" }, { pushRecord: false });
    for (const t of ["t1", "t5", "t2", "t4"])
      assert.equal((await putManifest(srv.host, repo, t, image.manifest.bytes, OCI_MANIFEST)).status, 201);
    const all = await request(srv.host, "GET", `/v2/${repo}/tags/list`);
    assert.deepEqual(all.json, { name: repo, tags: ["t1", "t2", "t3", "t4", "t5"] });
    assert.equal(all.headers.link, undefined);
    const p1 = await request(srv.host, "GET", `/v2/${repo}/tags/list?n=2`);
    assert.deepEqual(p1.json, { name: repo, tags: ["t1", "t2"] });
    assert.equal(p1.headers.link, `</v2/${repo}/tags/list?n=2&last=t2>; rel="next"`);
    const p2 = await request(srv.host, "GET", `/v2/${repo}/tags/list?n=2&last=t2`);
    assert.deepEqual(p2.json, { name: repo, tags: ["t3", "t4"] });
    const p3 = await request(srv.host, "GET", `/v2/${repo}/tags/list?n=2&last=t4`);
    assert.deepEqual(p3.json, { name: repo, tags: ["t5"] });
    assert.equal(p3.headers.link, undefined);
    assert.deepEqual((await request(srv.host, "GET", `/v2/${repo}/tags/list?n=0`)).json, {
      name: repo,
      tags: [],
    });

    const cat = await request(srv.host, "GET", "/v2/_catalog");
    const repos = (cat.json as { repositories: string[] }).repositories;
    assert.ok(repos.includes(repo) && repos.includes("hello/src"));
    assert.deepEqual(repos, [...repos].sort());
    const c1 = await request(srv.host, "GET", "/v2/_catalog?n=1");
    assert.deepEqual((c1.json as { repositories: string[] }).repositories, [repos[0]]);
    assert.equal(c1.headers.link, `</v2/_catalog?n=1&last=${encodeURIComponent(repos[0])}>; rel="next"`);

    // HEAD answers as GET does, without the body (HTTP's rule for a GET resource; probes use it).
    for (const path of [`/v2/${repo}/tags/list?n=2`, "/v2/_catalog?n=1"]) {
      const get = await request(srv.host, "GET", path);
      const head = await request(srv.host, "HEAD", path);
      assert.equal(head.status, 200, path);
      assert.equal(head.body.length, 0, path);
      assert.equal(head.headers.link, get.headers.link, path);
      assert.equal(head.headers["content-length"], get.headers["content-length"], path);
    }
  });

  test("DELETE of tags, manifests and blobs", async () => {
    const repo = "del/img";
    await pushImage(image, { registry: srv.host, repository: repo, tag: "a" }, { pushRecord: false });
    await putManifest(srv.host, repo, "b", image.manifest.bytes, OCI_MANIFEST);
    assert.equal((await request(srv.host, "DELETE", `/v2/${repo}/manifests/a`)).status, 202);
    assert.equal((await request(srv.host, "GET", `/v2/${repo}/manifests/a`)).code, "MANIFEST_UNKNOWN");
    assert.equal((await request(srv.host, "GET", `/v2/${repo}/manifests/b`)).status, 200);
    assert.equal(
      (await request(srv.host, "DELETE", `/v2/${repo}/manifests/${image.manifest.digest}`)).status,
      202,
    );
    assert.equal((await request(srv.host, "GET", `/v2/${repo}/manifests/b`)).status, 404);
    assert.equal(
      (await request(srv.host, "GET", `/v2/${repo}/manifests/${image.manifest.digest}`)).status,
      404,
    );
    assert.deepEqual((await request(srv.host, "GET", `/v2/${repo}/tags/list`)).json, {
      name: repo,
      tags: [],
    });
    const layer = image.layers[1].digest;
    assert.equal((await request(srv.host, "DELETE", `/v2/${repo}/blobs/${layer}`)).status, 202);
    assert.equal((await request(srv.host, "HEAD", `/v2/${repo}/blobs/${layer}`)).status, 404);
    assert.equal((await request(srv.host, "DELETE", `/v2/${repo}/blobs/${layer}`)).code, "BLOB_UNKNOWN");
    // Other repositories (and the shared blob store) keep it.
    assert.equal((await request(srv.host, "HEAD", `/v2/hello/src/blobs/${layer}`)).status, 200);
    assert.equal((await request(srv.host, "DELETE", `/v2/${repo}/manifests/nope`)).code, "MANIFEST_UNKNOWN");
  });

  test("referrers API", async () => {
    const repo = "refs/img";
    await pushImage(image, { registry: srv.host, repository: repo, tag: "v1" }, { pushRecord: false });
    const empty = Buffer.from("{}");
    const emptyDigest = await postBlob(srv.host, repo, empty);
    const sig = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        artifactType: "application/vnd.example.signature",
        config: { mediaType: "application/vnd.oci.empty.v1+json", digest: emptyDigest, size: 2 },
        layers: [{ mediaType: "application/vnd.oci.empty.v1+json", digest: emptyDigest, size: 2 }],
        subject: { mediaType: OCI_MANIFEST, digest: image.manifest.digest, size: image.manifest.size },
        annotations: { "org.example": "x" },
      }),
    );
    const put = await putManifest(srv.host, repo, sha256Digest(sig), sig, OCI_MANIFEST);
    assert.equal(put.status, 201);
    assert.equal(put.headers["oci-subject"], image.manifest.digest);
    const res = await request(srv.host, "GET", `/v2/${repo}/referrers/${image.manifest.digest}`);
    assert.equal(res.status, 200);
    assert.equal(res.headers["content-type"], OCI_INDEX);
    assert.deepEqual(res.json, {
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [
        {
          mediaType: OCI_MANIFEST,
          digest: sha256Digest(sig),
          size: sig.length,
          artifactType: "application/vnd.example.signature",
          annotations: { "org.example": "x" },
        },
      ],
    });
    const filtered = await request(
      srv.host,
      "GET",
      `/v2/${repo}/referrers/${image.manifest.digest}?artifactType=x/y`,
    );
    assert.deepEqual((filtered.json as { manifests: unknown[] }).manifests, []);
    assert.equal(filtered.headers["oci-filters-applied"], "artifactType");
    assert.equal((await request(srv.host, "GET", `/v2/${repo}/referrers/${ZERO}`)).status, 200);
    assert.equal((await request(srv.host, "GET", `/v2/${repo}/referrers/sha256:bad`)).status, 400);
  });

  test(
    "malformed requests: statuses and codes, never 500, nothing left behind",
    { timeout: 60_000 },
    async () => {
      const repo = "bad/req";
      await pushImage(image, { registry: srv.host, repository: repo, tag: "v1" }, { pushRecord: false });
      const blobsBefore = checkBlobDir(srv.root);
      const layer = image.layers[0];
      const manifest = (o: Record<string, unknown>): Buffer =>
        Buffer.from(
          JSON.stringify({
            schemaVersion: 2,
            mediaType: OCI_MANIFEST,
            config: { mediaType: OCI_CONFIG, digest: image.config.digest, size: image.config.size },
            layers: [{ mediaType: layer.mediaType, digest: layer.digest, size: layer.size }],
            ...o,
          }),
        );
      const missing = manifest({ layers: [{ mediaType: layer.mediaType, digest: ZERO, size: 3 }] });
      const wrongSize = manifest({
        layers: [{ mediaType: layer.mediaType, digest: layer.digest, size: layer.size + 1 }],
      });
      type Case = [
        string,
        string,
        number,
        string | undefined,
        { headers?: Record<string, string>; body?: Buffer | string }?,
      ];
      const cases: Case[] = [
        ["GET", "/v2/Upper/manifests/latest", 400, "NAME_INVALID"],
        ["GET", `/v2/${"a".repeat(256)}/tags/list`, 400, "NAME_INVALID"],
        ["GET", "/v2/a/../b/manifests/latest", 404, "NAME_UNKNOWN"],
        ["GET", "/v2/../../etc/manifests/latest", 404, "NAME_UNKNOWN"],
        ["GET", "/v2/%2e%2e/%2e%2e/manifests/latest", 404, "NAME_UNKNOWN"],
        ["GET", "/v2/a%2f..%2fb/blobs/" + ZERO, 404, "NAME_UNKNOWN"],
        ["GET", "/v2/a//b/manifests/latest", 404, "NAME_UNKNOWN"],
        ["GET", "/v2//a/tags/list", 404, "NAME_UNKNOWN"],
        [
          "PUT",
          "/v2/a/./b/manifests/latest",
          404,
          "NAME_UNKNOWN",
          { body: "{}", headers: { "Content-Type": OCI_MANIFEST } },
        ],
        ["GET", `/v2/${repo}/blobs/sha256:xyz`, 400, "DIGEST_INVALID"],
        ["GET", `/v2/${repo}/blobs/sha256:${"A".repeat(64)}`, 400, "DIGEST_INVALID"],
        ["GET", `/v2/${repo}/blobs/sha256:..%2f..%2fetc`, 400, "DIGEST_INVALID"],
        ["GET", `/v2/${repo}/blobs/md5:d41d8cd98f00b204e9800998ecf8427e`, 404, "BLOB_UNKNOWN"],
        ["GET", `/v2/${repo}/blobs/sha512:${"a".repeat(64)}`, 400, "DIGEST_INVALID"],
        ["GET", `/v2/${repo}/blobs/sha512:${"a".repeat(128)}`, 404, "BLOB_UNKNOWN"],
        ["HEAD", `/v2/${repo}/blobs/${ZERO}`, 404, undefined],
        ["GET", `/v2/${repo}/blobs/${ZERO}`, 404, "BLOB_UNKNOWN"],
        ["GET", `/v2/${repo}/manifests/sha256:xyz`, 400, "DIGEST_INVALID"],
        ["GET", `/v2/${repo}/manifests/${ZERO}`, 404, "MANIFEST_UNKNOWN"],
        ["GET", `/v2/${repo}/manifests/-bad`, 404, "MANIFEST_UNKNOWN"],
        ["GET", `/v2/${repo}/manifests/${"t".repeat(129)}`, 404, "MANIFEST_UNKNOWN"],
        ["GET", `/v2/${repo}/manifests/nope`, 404, "MANIFEST_UNKNOWN"],
        ["GET", "/v2/no/such/repo/manifests/v1", 404, "MANIFEST_UNKNOWN"],
        ["GET", "/v2/no/such/repo/tags/list", 404, "NAME_UNKNOWN"],
        ["GET", `/v2/${repo}/tags/list?n=abc`, 400, "PAGINATION_NUMBER_INVALID"],
        ["GET", `/v2/${repo}/tags/list?n=-1`, 400, "PAGINATION_NUMBER_INVALID"],
        [
          "PUT",
          `/v2/${repo}/manifests/-bad`,
          400,
          "MANIFEST_INVALID",
          { body: image.manifest.bytes, headers: { "Content-Type": OCI_MANIFEST } },
        ],
        [
          "PUT",
          `/v2/${repo}/manifests/v2`,
          400,
          "MANIFEST_INVALID",
          { body: "{not json", headers: { "Content-Type": OCI_MANIFEST } },
        ],
        ["PUT", `/v2/${repo}/manifests/v2`, 400, "MANIFEST_INVALID", { body: image.manifest.bytes }],
        [
          "PUT",
          `/v2/${repo}/manifests/v2`,
          400,
          "MANIFEST_INVALID",
          { body: image.manifest.bytes, headers: { "Content-Type": DOCKER_MANIFEST } },
        ],
        [
          "PUT",
          `/v2/${repo}/manifests/v2`,
          400,
          "MANIFEST_INVALID",
          {
            body: image.manifest.bytes,
            headers: { "Content-Type": "application/vnd.docker.distribution.manifest.v1+prettyjws" },
          },
        ],
        [
          "PUT",
          `/v2/${repo}/manifests/v2`,
          400,
          "MANIFEST_INVALID",
          { body: manifest({ schemaVersion: 1 }), headers: { "Content-Type": OCI_MANIFEST } },
        ],
        [
          "PUT",
          `/v2/${repo}/manifests/v2`,
          400,
          "MANIFEST_INVALID",
          {
            body: manifest({ config: { digest: "sha256:xyz", size: 1, mediaType: OCI_CONFIG } }),
            headers: { "Content-Type": OCI_MANIFEST },
          },
        ],
        [
          "PUT",
          `/v2/${repo}/manifests/v2`,
          400,
          "MANIFEST_BLOB_UNKNOWN",
          { body: missing, headers: { "Content-Type": OCI_MANIFEST } },
        ],
        [
          "PUT",
          `/v2/${repo}/manifests/v2`,
          400,
          "MANIFEST_INVALID",
          { body: wrongSize, headers: { "Content-Type": OCI_MANIFEST } },
        ],
        [
          "PUT",
          `/v2/${repo}/manifests/${ZERO}`,
          400,
          "DIGEST_INVALID",
          { body: image.manifest.bytes, headers: { "Content-Type": OCI_MANIFEST } },
        ],
        [
          "PUT",
          `/v2/${repo}/manifests/sha256:xyz`,
          400,
          "DIGEST_INVALID",
          { body: image.manifest.bytes, headers: { "Content-Type": OCI_MANIFEST } },
        ],
        [
          "PUT",
          `/v2/${repo}/manifests/v2`,
          413,
          "SIZE_INVALID",
          { body: Buffer.alloc((4 << 20) + 1, 32), headers: { "Content-Type": OCI_MANIFEST } },
        ],
        ["GET", `/v2/${repo}/blobs/uploads/${randomUUID()}`, 404, "BLOB_UPLOAD_UNKNOWN"],
        ["GET", `/v2/${repo}/blobs/uploads/not-a-uuid`, 404, "BLOB_UPLOAD_UNKNOWN"],
        ["PATCH", `/v2/${repo}/blobs/uploads/..%2f..%2fblobs`, 404, "BLOB_UPLOAD_UNKNOWN", { body: "x" }],
        ["DELETE", `/v2/${repo}/blobs/uploads/${randomUUID()}`, 404, "BLOB_UPLOAD_UNKNOWN"],
        ["POST", `/v2/${repo}/blobs/uploads/?digest=sha256:xyz`, 400, "DIGEST_INVALID", { body: "abc" }],
        ["POST", `/v2/${repo}/blobs/uploads/?digest=${ZERO}`, 400, "DIGEST_INVALID", { body: "abc" }],
        [
          "POST",
          `/v2/${repo}/blobs/uploads/?digest=sha512:${"a".repeat(128)}`,
          400,
          "UNSUPPORTED",
          { body: "abc" },
        ],
        ["POST", `/v2/${repo}/blobs/uploads/?mount=sha256:xyz&from=hello/src`, 400, "DIGEST_INVALID"],
        ["POST", `/v2/${repo}/manifests/v1`, 405, "UNSUPPORTED"],
        ["GET", `/v2/${repo}/nothing/here`, 404, "NOT_FOUND"],
        ["GET", "/v2/token", 404, "NOT_FOUND"],
        ["GET", "/elsewhere", 404, "NOT_FOUND"],
      ];
      const failures: string[] = [];
      for (const [method, path, status, code, opts] of cases) {
        const res = await request(srv.host, method, path, opts);
        if (res.status !== status || (method !== "HEAD" && res.code !== code))
          failures.push(
            `${method} ${path.slice(0, 80)}: ${res.status} ${res.code ?? ""} (expected ${status} ${code ?? ""})`,
          );
        if (method !== "HEAD") assert.match(String(res.headers["content-type"]), /^application\/json/, path);
      }
      assert.deepEqual(failures, []);
      assert.ok(
        srv.requests.every((r) => r.status < 500),
        "no 500",
      );

      // Uploads: out-of-order chunks, wrong digests.
      const loc = await uploadStart(srv.host, repo);
      let res = await request(srv.host, "PATCH", loc, { body: "hello", headers: { "Content-Range": "5-9" } });
      assert.equal(res.status, 416);
      assert.equal(res.code, "BLOB_UPLOAD_INVALID");
      assert.equal(res.headers.range, "0-0");
      res = await request(srv.host, "PATCH", loc, { body: "hello", headers: { "Content-Range": "bogus" } });
      assert.equal(res.status, 416);
      res = await request(srv.host, "PATCH", loc, { body: "hello", headers: { "Content-Range": "0-9" } });
      assert.equal(res.status, 416, "Content-Range longer than the body");
      res = await request(srv.host, "PATCH", loc, { body: "hello", headers: { "Content-Range": "0-4" } });
      assert.equal(res.status, 202);
      assert.equal(res.headers.range, "0-4");
      res = await request(srv.host, "PATCH", loc, { body: "hello", headers: { "Content-Range": "0-4" } });
      assert.equal(res.status, 416, "the same chunk again");
      assert.equal(res.headers.range, "0-4");
      res = await request(srv.host, "PATCH", loc, { body: " world" }); // streamed: no Content-Range
      assert.equal(res.status, 202);
      assert.equal(res.headers.range, "0-10");
      res = await request(srv.host, "GET", loc);
      assert.equal(res.status, 204);
      assert.equal(res.headers.range, "0-10");
      // Another repository cannot use the session.
      assert.equal(
        (await request(srv.host, "GET", loc.replace(repo, "other/repo"))).code,
        "BLOB_UPLOAD_UNKNOWN",
      );
      assert.equal(
        (await request(srv.host, "PUT", withQuery(loc, "digest=sha256:xyz"))).code,
        "DIGEST_INVALID",
      );
      assert.equal((await request(srv.host, "PUT", loc)).code, "DIGEST_INVALID");
      // Wrong digest: 400, the session is gone, nothing visible.
      const wrong = sha256Digest("something else");
      res = await request(srv.host, "PUT", withQuery(loc, `digest=${wrong}`));
      assert.equal(res.status, 400);
      assert.equal(res.code, "DIGEST_INVALID");
      assert.equal((await request(srv.host, "GET", loc)).code, "BLOB_UPLOAD_UNKNOWN");
      for (const d of [wrong, sha256Digest("hello world")])
        assert.equal((await request(srv.host, "HEAD", `/v2/${repo}/blobs/${d}`)).status, 404);

      // A monolithic PUT with a body whose digest is wrong.
      const loc2 = await uploadStart(srv.host, repo);
      res = await request(srv.host, "PUT", withQuery(loc2, `digest=${wrong}`), {
        body: Buffer.alloc(100_000, 7),
      });
      assert.equal(res.code, "DIGEST_INVALID");
      // A cancelled session.
      const loc3 = await uploadStart(srv.host, repo);
      await request(srv.host, "PATCH", loc3, { body: "partial" });
      assert.equal((await request(srv.host, "DELETE", loc3)).status, 204);
      assert.equal((await request(srv.host, "DELETE", loc3)).code, "BLOB_UPLOAD_UNKNOWN");

      assert.deepEqual(checkBlobDir(srv.root).sort(), blobsBefore.sort(), "no new blob after failures");
      assert.deepEqual(uploadsLeft(srv.root), []);
    },
  );

  test("an interrupted chunk is cut off again; the session goes on", { timeout: 30_000 }, async () => {
    const repo = "interrupted/up";
    const loc = await uploadStart(srv.host, repo);
    const data = join(srv.root, "uploads", loc.split("/").pop() ?? "", "data");
    const dataSize = (): number => (existsSync(data) ? statSync(data).size : -1);
    const [hostname, port] = srv.host.split(":");
    const req = http.request({
      host: hostname,
      port: Number(port),
      method: "PATCH",
      path: loc,
      headers: { "Content-Length": String(1 << 20), "Content-Range": `0-${(1 << 20) - 1}` },
    });
    const closed = new Promise<void>((resolve) => {
      req.on("error", () => resolve());
      req.on("close", () => resolve());
    });
    // Cut off once the server has written what was sent of the chunk.
    req.write(Buffer.alloc(200_000, 1));
    try {
      await until(
        "the server to write the start of the chunk",
        10_000,
        () => assert.equal(dataSize(), 200_000),
        20,
      );
    } finally {
      req.destroy();
    }
    await closed;
    // The server notices the disconnect and rolls the chunk back.
    const st = await until(
      "the chunk to be rolled back",
      10_000,
      async () => {
        const r = await request(srv.host, "GET", loc);
        assert.equal(r.headers.range, "0-0");
        assert.equal(dataSize(), 0);
        return r;
      },
      20,
    );
    assert.equal(st.status, 204);
    assert.equal(st.headers.range, "0-0");
    const chunk = Buffer.alloc(5000, 9);
    assert.equal(
      (await request(srv.host, "PATCH", loc, { body: chunk, headers: { "Content-Range": "0-4999" } })).status,
      202,
    );
    const res = await request(srv.host, "PUT", withQuery(loc, `digest=${sha256Digest(chunk)}`));
    assert.equal(res.status, 201);
    assert.equal(res.headers["docker-content-digest"], sha256Digest(chunk));
    assert.equal(res.headers.location, `/v2/${repo}/blobs/${sha256Digest(chunk)}`);
    assert.deepEqual(
      (await request(srv.host, "GET", `/v2/${repo}/blobs/${sha256Digest(chunk)}`)).body,
      chunk,
    );
    checkBlobDir(srv.root);
  });

  test("request headers over the limit: 431", async () => {
    const res = await request(srv.host, "GET", "/v2/", { headers: { "X-Big": "x".repeat(20_000) } });
    assert.equal(res.status, 431);
  });

  test("concurrent identical pushes", { timeout: 120_000 }, async () => {
    const other = await makeImage({ hello: "concurrent\n", randomBytes: 1 << 20 });
    const results = await Promise.all(
      ["conc/a", "conc/a", "conc/a", "conc/b", "conc/b"].map((repository, i) =>
        pushImage(
          other,
          { registry: srv.host, repository, tag: `t${i}` },
          { pushRecord: false, monolithicLimit: i % 2 ? 1 << 30 : 100_000, chunkSize: 200_000 },
        ),
      ),
    );
    for (const r of results) assert.equal(r.manifestDigest, other.manifest.digest);
    checkBlobDir(srv.root);
    for (const repository of ["conc/a", "conc/b"]) {
      const info = JSON.parse(
        await exec("skopeo", [
          "inspect",
          "--tls-verify=false",
          `docker://${srv.host}/${repository}:t0`,
        ]).catch(() =>
          exec("skopeo", ["inspect", "--tls-verify=false", `docker://${srv.host}/${repository}:t3`]),
        ),
      ) as { Digest: string };
      assert.equal(info.Digest, other.manifest.digest);
    }
  });
});

describe("nixoci serve: what the spec requires and its conformance suite does not test", () => {
  let srv: TestServer;
  let image: BuiltImage;
  before(async () => {
    [srv, image] = await Promise.all([startServer(), makeImage()]);
  });
  after(async () => {
    await srv?.stop();
  });

  test("compareTags: case-insensitive, then by code units", () => {
    assert.deepEqual(["b", "A", "a", "C"].sort(compareTags), ["A", "a", "b", "C"]);
    assert.deepEqual(["ab", "a_", "aB", "a.b", "a-b", "a0"].sort(compareTags), [
      "a-b",
      "a.b",
      "a0",
      "a_",
      "aB",
      "ab",
    ]);
    assert.equal(compareTags("v1", "v1"), 0);
  });

  test(
    "tags/list is in case-insensitive lexical order, and so are n/last paging and Link",
    { timeout: 60_000 },
    async () => {
      const repo = "order/tags";
      await pushImage(image, { registry: srv.host, repository: repo, tag: "b" }, { pushRecord: false });
      for (const t of ["A", "a", "C", "ab", "a_", "aB"])
        assert.equal((await putManifest(srv.host, repo, t, image.manifest.bytes, OCI_MANIFEST)).status, 201);
      // Code-unit order would be A C a aB a_ ab b.
      const order = ["A", "a", "a_", "aB", "ab", "b", "C"];
      const all = await request(srv.host, "GET", `/v2/${repo}/tags/list`);
      assert.deepEqual(all.json, { name: repo, tags: order });
      assert.equal(all.headers.link, undefined);

      const base = `/v2/${repo}/tags/list`;
      assert.deepEqual(
        await pages(srv.host, `${base}?n=1`),
        order.map((t, i) => [
          [t],
          i < order.length - 1 ? `<${base}?n=1&last=${encodeURIComponent(t)}>; rel="next"` : undefined,
        ]),
      );
      assert.deepEqual(await pages(srv.host, `${base}?n=2`), [
        [["A", "a"], `<${base}?n=2&last=a>; rel="next"`],
        [["a_", "aB"], `<${base}?n=2&last=aB>; rel="next"`],
        [["ab", "b"], `<${base}?n=2&last=b>; rel="next"`],
        [["C"], undefined],
      ]);
      // `last` continues after exactly that string in the same order, whether or not it is a tag.
      const after = async (last: string): Promise<unknown> =>
        (await request(srv.host, "GET", `${base}?last=${encodeURIComponent(last)}`)).json;
      assert.deepEqual(await after("a"), { name: repo, tags: ["a_", "aB", "ab", "b", "C"] });
      assert.deepEqual(await after("B"), { name: repo, tags: ["b", "C"] });
      assert.deepEqual(await after("Ab"), { name: repo, tags: ["aB", "ab", "b", "C"] });
      assert.deepEqual(await after("c"), { name: repo, tags: [] });

      // A real client: skopeo prints the tags as the registry lists them.
      const listed = JSON.parse(
        await exec("skopeo", ["list-tags", "--tls-verify=false", `docker://${srv.host}/${repo}`]),
      ) as { Tags: string[] };
      assert.deepEqual(listed.Tags, order);
    },
  );

  test(
    "a manifest over the size limit is read to its end before the 413; the connection stays usable",
    { timeout: 60_000 },
    async () => {
      const repo = "big/manifest";
      const limit = 4 << 20;
      const body = Buffer.alloc(limit + (1 << 20), 32);
      const chunks = Array.from({ length: body.length / (64 << 10) }, (_, i) =>
        body.subarray(i * (64 << 10), (i + 1) * (64 << 10)),
      );
      for (const [what, headers] of [
        ["with Content-Length", { "Content-Length": String(body.length) }],
        ["chunked", { "Transfer-Encoding": "chunked" }],
      ] as const) {
        const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
        try {
          const put = await sendInChunks(
            srv.host,
            "PUT",
            `/v2/${repo}/manifests/v1`,
            { ...headers, "Content-Type": OCI_MANIFEST },
            chunks,
            agent,
          );
          assert.equal(
            put.error,
            undefined,
            `${what}: the client failed while sending: ${put.error?.message}`,
          );
          assert.equal(put.written, body.length, `${what}: the whole body was sent`);
          assert.ok(put.res, `${what}: no response`);
          assert.equal(put.res.status, 413, what);
          assert.match(String(put.res.headers["content-type"]), /^application\/json/);
          assert.deepEqual(put.res.json, {
            errors: [{ code: "SIZE_INVALID", message: "request body too large", detail: { limit } }],
          });
          assert.notEqual(put.res.headers.connection, "close", what);
          // The server read the whole body: the next request on the same connection is understood.
          const next = await new Promise<{ status: number; reused: boolean }>((resolve, reject) => {
            const [hostname, port] = srv.host.split(":");
            const req = http.get({ host: hostname, port: Number(port), path: "/v2/", agent }, (r) => {
              r.resume();
              r.on("end", () => resolve({ status: r.statusCode ?? 0, reused: req.reusedSocket }));
            });
            req.on("error", reject);
          });
          assert.deepEqual(next, { status: 200, reused: true }, what);
        } finally {
          agent.destroy();
        }
      }
      const puts = srv.requests.filter((r) => r.route === "manifest.put" && r.repo === repo);
      assert.deepEqual(
        puts.map((r) => [r.status, r.error]),
        [
          [413, "SIZE_INVALID"],
          [413, "SIZE_INVALID"],
        ],
      );
      assert.equal((await request(srv.host, "GET", `/v2/${repo}/manifests/v1`)).status, 404);
    },
  );

  test("a Content-Length over the drain bound gets its 413 at once, and the connection is closed", async () => {
    const [hostname, port] = srv.host.split(":");
    const req = http.request({
      host: hostname,
      port: Number(port),
      method: "PUT",
      path: "/v2/big/declared/manifests/v1",
      headers: { "Content-Type": OCI_MANIFEST, "Content-Length": String(1 << 30) },
      agent: false,
    });
    try {
      const response = responseOf(req);
      req.flushHeaders(); // the head only: the server answers without reading the body
      const res = await response;
      assert.ok(res, "no response");
      assert.equal(res.status, 413);
      assert.equal(res.headers.connection, "close");
      assert.equal(res.code, "SIZE_INVALID");
    } finally {
      req.destroy();
    }
  });

  test("referrers of a repository nothing was pushed to: 200 and an empty index, nothing created", async () => {
    const expectEmpty = async (path: string, filtered = false): Promise<void> => {
      const res = await request(srv.host, "GET", path);
      assert.equal(res.status, 200, path);
      assert.equal(res.headers["content-type"], OCI_INDEX);
      assert.deepEqual(res.json, { schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] });
      assert.equal(res.headers["oci-filters-applied"], filtered ? "artifactType" : undefined);
    };
    await expectEmpty(`/v2/never/pushed/referrers/${ZERO}`);
    await expectEmpty(`/v2/never/pushed/referrers/${image.manifest.digest}?artifactType=x/y`, true);
    await expectEmpty(`/v2/never/pushed/referrers/sha512:${"a".repeat(128)}`);
    const bad = await request(srv.host, "GET", `/v2/never/pushed/referrers/sha256:xyz`);
    assert.equal(bad.status, 400);
    assert.equal(bad.code, "DIGEST_INVALID");
    const invalid = await request(srv.host, "GET", `/v2/Never/Pushed/referrers/${ZERO}`);
    assert.equal(invalid.status, 400);
    assert.equal(invalid.code, "NAME_INVALID");
    assert.equal(existsSync(join(srv.root, "repositories", "never")), false);
    assert.equal((await request(srv.host, "GET", "/v2/never/pushed/tags/list")).code, "NAME_UNKNOWN");
    const cat = await request(srv.host, "GET", "/v2/_catalog");
    assert.ok(!(cat.json as { repositories: string[] }).repositories.includes("never/pushed"));
  });
});

describe("nixoci serve: manifest source", () => {
  let srv: TestServer;
  let image: BuiltImage;
  const calls: Array<{ repo: string; reference: string; method: string }> = [];
  let slowSignal: AbortSignal | undefined;
  before(async () => {
    const root = makeTempDir("registry-source");
    const storage = new RegistryStorage(root);
    // Built into the storage's own blob store (as nixoci's layer cache with --cache-dir ROOT does).
    image = await makeImage({ hello: "from the source\n", blobs: storage.blobs });
    const source: ManifestSource = {
      async resolve(repo, reference, ctx) {
        calls.push({ repo, reference, method: ctx.method });
        if (repo === "nix/busy") throw new RegistryError(429, "TOOMANYREQUESTS", "too many builds");
        if (repo === "nix/slow") {
          slowSignal = ctx.signal;
          await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
          return undefined;
        }
        if (repo !== "nix/hello" || (reference !== "latest" && reference !== image.manifest.digest))
          return undefined;
        return { digest: image.manifest.digest, mediaType: OCI_MANIFEST, bytes: image.manifest.bytes };
      },
    };
    srv = await startServer({ storage, manifestSource: source });
  });
  after(async () => {
    await srv?.stop();
  });

  test("consulted on a storage miss; its blobs become pullable", { timeout: 120_000 }, async () => {
    const res = await request(srv.host, "GET", "/v2/nix/hello/manifests/latest");
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, image.manifest.bytes);
    assert.deepEqual(calls, [{ repo: "nix/hello", reference: "latest", method: "GET" }]);
    // By digest it is now in the storage; the tag is asked again (the source decides what a tag means).
    assert.equal(
      (await request(srv.host, "HEAD", `/v2/nix/hello/manifests/${image.manifest.digest}`)).status,
      200,
    );
    assert.equal(calls.length, 1);
    assert.equal((await request(srv.host, "HEAD", "/v2/nix/hello/manifests/latest")).status, 200);
    assert.deepEqual(calls[1], { repo: "nix/hello", reference: "latest", method: "HEAD" });
    const out = join(makeTempDir("registry-source-pull"), "layout");
    await exec("skopeo", [
      "--insecure-policy",
      "copy",
      "--src-tls-verify=false",
      `docker://${srv.host}/nix/hello:latest`,
      `oci:${out}:latest`,
    ]);
    await exec("umoci", ["unpack", "--rootless", "--image", `${out}:latest`, join(out, "..", "bundle")]);
    assert.equal(readFileSync(join(out, "..", "bundle/rootfs/hello.txt"), "utf8"), "from the source\n");
    // Docker-only clients get the conversion of a source's manifest too.
    const d = await request(srv.host, "GET", "/v2/nix/hello/manifests/latest", {
      headers: { Accept: DOCKER_MANIFEST },
    });
    assert.equal(d.headers["content-type"], DOCKER_MANIFEST);
  });

  test(
    "not handled: 404; errors pass through; the signal follows the client",
    { timeout: 30_000 },
    async () => {
      const nf = await request(srv.host, "GET", "/v2/nix/unknown/manifests/latest");
      assert.equal(nf.status, 404);
      assert.equal(nf.code, "MANIFEST_UNKNOWN");
      const busy = await request(srv.host, "GET", "/v2/nix/busy/manifests/latest");
      assert.equal(busy.status, 429);
      assert.equal(busy.code, "TOOMANYREQUESTS");
      const [hostname, port] = srv.host.split(":");
      const req = http.request({ host: hostname, port: Number(port), path: "/v2/nix/slow/manifests/latest" });
      req.on("error", () => undefined);
      req.end();
      const signal = await until(
        "the source to be asked",
        10_000,
        () => {
          const s = slowSignal;
          assert.ok(s);
          return s;
        },
        20,
      );
      assert.equal(signal.aborted, false);
      req.destroy();
      // The source's signal is aborted when the client goes away.
      await until("the source's signal to be aborted", 10_000, () => assert.ok(signal.aborted), 20);
    },
  );
});

describe("nixoci serve with docker and containerd", () => {
  let srv: TestServer;
  let dockerd: Dockerd;
  let containerd: Containerd;
  let image: BuiltImage;
  before(async () => {
    [srv, dockerd, containerd, image] = await Promise.all([
      startServer(),
      startDockerd(),
      startContainerd(),
      makeImage({ hello: "hello from nixoci serve\n" }),
    ]);
  });
  after(async () => {
    await Promise.all([srv?.stop(), dockerd?.stop(), containerd?.stop()]);
  });

  const docker = (args: string[]): Promise<string> =>
    exec(DOCKER_CLI, ["-H", `unix://${dockerd.host}`, ...args], {
      env: { DOCKER_CONFIG: join(dirname(dockerd.host), "cli") },
    });
  const ctr = (args: string[]): Promise<string> => exec("ctr", ["-a", containerd.address, ...args]);

  test("docker push, then docker pull and run", { timeout: 300_000 }, async () => {
    const file = join(makeTempDir("registry-docker"), "img.tar");
    await writeDockerArchive(image, file, ["nixoci/serve:v1"]);
    await docker(["load", "-i", file]);
    const ref = `${srv.host}/docker/pushed:v1`;
    await docker(["tag", "nixoci/serve:v1", ref]);
    await docker(["push", ref]);
    // docker pushes Docker schema 2 with its own (re-)compressed layers.
    const m = await request(srv.host, "GET", "/v2/docker/pushed/manifests/v1", {
      headers: { Accept: `${DOCKER_MANIFEST}, ${OCI_MANIFEST}` },
    });
    assert.equal(m.headers["content-type"], DOCKER_MANIFEST);
    await docker(["rmi", ref, "nixoci/serve:v1"]);
    await docker(["pull", ref]);
    assert.equal(await docker(["run", "--rm", "--network", "none", ref]), "hello from nixoci serve\n");
  });

  test("docker pulls an OCI image pushed by nixoci", { timeout: 300_000 }, async () => {
    await pushImage(image, { registry: srv.host, repository: "oci/img", tag: "v1" }, { pushRecord: false });
    const ref = `${srv.host}/oci/img:v1`;
    await docker(["pull", ref]);
    assert.equal(await docker(["run", "--rm", "--network", "none", ref]), "hello from nixoci serve\n");
  });

  test("ctr pulls over plain HTTP and runs", { timeout: 300_000 }, async () => {
    await pushImage(image, { registry: srv.host, repository: "ctr/img", tag: "v1" }, { pushRecord: false });
    const ref = `${srv.host}/ctr/img:v1`;
    await ctr(["images", "pull", "--plain-http", ref]);
    const list = await ctr(["images", "ls"]);
    assert.ok(list.includes(image.manifest.digest));
    assert.equal(await ctr(["run", "--rm", ref, "nixoci-serve-ctr"]), "hello from nixoci serve\n");
  });
});

describe("compared with docker-registry 2.8", () => {
  let ours: TestServer;
  let ref: Registry;
  let image: BuiltImage;
  before(async () => {
    [ours, ref, image] = await Promise.all([startServer(), startRegistry(), makeImage()]);
    for (const host of [ours.host, ref.host])
      await pushImage(image, { registry: host, repository: "cmp/img", tag: "v1" }, { pushRecord: false });
  });
  after(async () => {
    await Promise.all([ours?.stop(), ref?.stop()]);
  });

  /** The same requests to both registries: [status, error code, selected headers]. */
  async function both(
    f: (host: string) => Promise<Res>,
    headers: string[] = [],
  ): Promise<
    [
      { status: number; code?: string; h: Record<string, unknown> },
      { status: number; code?: string; h: Record<string, unknown> },
    ]
  > {
    const pick = (r: Res): { status: number; code?: string; h: Record<string, unknown> } => ({
      status: r.status,
      code: r.code,
      h: Object.fromEntries(headers.map((k) => [k, r.headers[k]])),
    });
    return [pick(await f(ours.host)), pick(await f(ref.host))];
  }

  test("same statuses, codes and headers", { timeout: 120_000 }, async (t) => {
    const layer = image.layers[1];
    const same: Array<[string, (h: string) => Promise<Res>, string[]]> = [
      ["GET /v2/", (h) => request(h, "GET", "/v2/"), ["docker-distribution-api-version"]],
      [
        "GET manifest",
        (h) => request(h, "GET", "/v2/cmp/img/manifests/v1", { headers: { Accept: OCI_MANIFEST } }),
        ["content-type", "content-length", "docker-content-digest", "etag"],
      ],
      [
        "HEAD manifest",
        (h) => request(h, "HEAD", "/v2/cmp/img/manifests/v1", { headers: { Accept: OCI_MANIFEST } }),
        ["content-type", "content-length", "docker-content-digest"],
      ],
      ["GET unknown tag", (h) => request(h, "GET", "/v2/cmp/img/manifests/nope"), []],
      ["tags of unknown repo", (h) => request(h, "GET", "/v2/no/repo/tags/list"), []],
      ["manifest of unknown repo", (h) => request(h, "GET", "/v2/no/repo/manifests/v1"), []],
      [
        "HEAD blob",
        (h) => request(h, "HEAD", `/v2/cmp/img/blobs/${layer.digest}`),
        ["content-length", "docker-content-digest"],
      ],
      ["HEAD unknown blob", (h) => request(h, "HEAD", `/v2/cmp/img/blobs/${ZERO}`), []],
      ["GET unknown blob", (h) => request(h, "GET", `/v2/cmp/img/blobs/${ZERO}`), []],
      [
        "blob range",
        (h) => request(h, "GET", `/v2/cmp/img/blobs/${layer.digest}`, { headers: { Range: "bytes=10-19" } }),
        ["content-range", "content-length"],
      ],
      ["POST upload", (h) => request(h, "POST", "/v2/cmp/img/blobs/uploads/"), ["range", "content-length"]],
      [
        "PATCH then status",
        async (h) => {
          const loc = await uploadStart(h, "cmp/img");
          const p = await request(h, "PATCH", loc, { body: "hello" });
          return request(
            h,
            "GET",
            new URL(String(p.headers.location), `http://${h}`).pathname +
              new URL(String(p.headers.location), `http://${h}`).search,
          );
        },
        ["range"],
      ],
      [
        "PUT wrong digest",
        async (h) =>
          request(h, "PUT", withQuery(await uploadStart(h, "cmp/img"), `digest=${ZERO}`), { body: "abc" }),
        [],
      ],
      [
        "manifest with a missing blob",
        (h) =>
          putManifest(
            h,
            "cmp/img",
            "v2",
            Buffer.from(
              JSON.stringify({
                schemaVersion: 2,
                mediaType: OCI_MANIFEST,
                config: { mediaType: OCI_CONFIG, digest: image.config.digest, size: image.config.size },
                layers: [{ mediaType: layer.mediaType, digest: ZERO, size: 3 }],
              }),
            ),
            OCI_MANIFEST,
          ),
        [],
      ],
      ["manifest not JSON", (h) => putManifest(h, "cmp/img", "v2", Buffer.from("{nope"), OCI_MANIFEST), []],
      [
        "manifest PUT",
        (h) => putManifest(h, "cmp/img", "v3", image.manifest.bytes, OCI_MANIFEST),
        ["docker-content-digest", "location"],
      ],
      ["DELETE tag... by digest", (h) => request(h, "DELETE", `/v2/cmp/img/manifests/${ZERO}`), []],
    ];
    const diffs: string[] = [];
    for (const [name, f, headers] of same) {
      let a, b;
      try {
        [a, b] = await both(f, headers);
      } catch (err) {
        diffs.push(`${name}: ${(err as Error).message}`);
        continue;
      }
      // docker-registry answers with absolute Locations; ours are relative (both allowed).
      if (typeof b.h.location === "string") b.h.location = new URL(b.h.location).pathname;
      if (JSON.stringify(a) !== JSON.stringify(b))
        diffs.push(`${name}: ours ${JSON.stringify(a)} docker-registry ${JSON.stringify(b)}`);
    }
    for (const d of diffs) t.diagnostic(d);
    assert.deepEqual(diffs, []);
  });

  test("where docker-registry 2.8 differs, ours follows the spec", { timeout: 60_000 }, async (t) => {
    const layer = image.layers[1];
    // [what, request, our status and code, docker-registry's]
    const probes: Array<[string, (h: string) => Promise<Res>, string, string]> = [
      [
        "PATCH out of order",
        async (h) =>
          request(h, "PATCH", await uploadStart(h, "cmp/img"), {
            body: "hello",
            headers: { "Content-Range": "10-14" },
          }),
        "416 BLOB_UPLOAD_INVALID",
        "202 (2.8 ignores the chunk's start)",
      ],
      [
        "unknown upload",
        (h) => request(h, "GET", `/v2/cmp/img/blobs/uploads/${randomUUID()}`),
        "404 BLOB_UPLOAD_UNKNOWN",
        "404 BLOB_UPLOAD_INVALID",
      ],
      [
        "tags paging",
        (h) => request(h, "GET", "/v2/cmp/img/tags/list?n=1"),
        "200 (one tag and a Link)",
        "200 (every tag: 2.8 pages only the catalog)",
      ],
      [
        "bad digest in a blob path",
        (h) => request(h, "GET", "/v2/cmp/img/blobs/sha256:xyz"),
        "400 DIGEST_INVALID",
        "400 DIGEST_INVALID",
      ],
      [
        "uppercase name",
        (h) => request(h, "GET", "/v2/Cmp/img/manifests/v1"),
        "400 NAME_INVALID",
        "404 MANIFEST_UNKNOWN",
      ],
      [
        "dot-dot name",
        (h) => request(h, "GET", "/v2/cmp/../img/manifests/v1"),
        "404 NAME_UNKNOWN",
        "301 (a redirect to the cleaned path)",
      ],
      [
        "OCI manifest to a Docker-only client",
        (h) => request(h, "GET", "/v2/cmp/img/manifests/v1", { headers: { Accept: DOCKER_MANIFEST } }),
        "200 (converted)",
        "404 MANIFEST_UNKNOWN",
      ],
      [
        "blob range out of bounds",
        (h) =>
          request(h, "GET", `/v2/cmp/img/blobs/${layer.digest}`, {
            headers: { Range: `bytes=${layer.size}-` },
          }),
        "416 RANGE_INVALID",
        "416 with the blob's Content-Length and a shorter text body (clients see a truncated response)",
      ],
      ["DELETE tag", (h) => request(h, "DELETE", "/v2/cmp/img/manifests/v3"), "202", "400 DIGEST_INVALID"],
    ];
    for (const [name, f, expected, theirs] of probes) {
      const a = await f(ours.host);
      const got = `${a.status}${a.code ? ` ${a.code}` : ""}`;
      assert.equal(got, expected.replace(/ \(.*\)$/, ""), name);
      let b: string;
      try {
        const r = await f(ref.host);
        b = `${r.status}${r.code ? ` ${r.code}` : ""}`;
      } catch (err) {
        b = `error: ${(err as Error).message}`;
      }
      t.diagnostic(`${name}: ours ${got}; docker-registry ${b} (known: ${theirs})`);
    }
  });
});
