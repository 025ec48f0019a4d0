// `nixoci build --sbom` as a user runs it: the SBOM of each image manifest attached as an OCI referrer (artifact
// manifest with a subject) to an OCI layout, an oci-archive, a real docker-registry (no referrers API: the
// sha256-<hex> tag-schema fallback, read back with skopeo) and `nixoci serve` (the referrers API); one referrer per
// platform of a multi-platform image; reproducible digests; one-line usage errors before any work.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync } from "node:fs";
import { request } from "node:http";
import { join } from "node:path";
import { Spec, Validation } from "@cyclonedx/cyclonedx-library";
import { buildReferrer } from "../../src/oci/referrer.js";
import { pushReferrers } from "../../src/outputs/push-referrers.js";
import { RegistryClient } from "../../src/outputs/registry-session.js";
import { nixoci, nixociOk } from "../support/cli.js";
import { startRegistry, type Registry } from "../support/daemons.js";
import { buildArm64Fixtures, buildFixtures, makeTempDir } from "../support/fixtures.js";
import { run, runText } from "../support/run.js";
import { startNixociServe, type ServeProcess } from "../support/serve.js";

const fx = buildFixtures();
const work = makeTempDir("sbom-referrer");
const cache = join(work, "cache");
const COMMON = ["-q", "--cache-dir", cache, "--entrypoint", "/bin/hello"];

const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
const CYCLONEDX = "application/vnd.cyclonedx+json";
const SPDX = "application/spdx+json";
const PROVENANCE = "application/vnd.in-toto+json";
const EMPTY = {
  mediaType: "application/vnd.oci.empty.v1+json",
  digest: "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
  size: 2,
};

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  artifactType?: string;
  annotations?: Record<string, string>;
  platform?: Record<string, string>;
}
interface Index {
  mediaType?: string;
  manifests: Descriptor[];
}
interface ArtifactManifest {
  mediaType: string;
  artifactType: string;
  config: Descriptor;
  layers: Descriptor[];
  subject: Descriptor;
  annotations: Record<string, string>;
}

const closureOf = (...roots: string[]): string[] =>
  runText("nix-store", ["-qR", ...roots])
    .split("\n")
    .sort();
const helloClosure = closureOf(fx.hello);

let registry: Registry;
let serve: ServeProcess;
before(async () => {
  [registry, serve] = await Promise.all([startRegistry(), startNixociServe(join(work, "serve-storage"))]);
});
after(async () => {
  if (serve && serve.proc.exitCode === null) {
    serve.proc.kill("SIGTERM");
    await serve.exited;
  }
  await registry?.stop();
});

function blob(layout: string, digest: string): Buffer {
  return readFileSync(join(layout, "blobs/sha256", digest.slice("sha256:".length)));
}
function json<T>(bytes: Buffer | string): T {
  return JSON.parse(bytes.toString()) as T;
}
const sha256 = (b: Buffer): string => `sha256:${createHash("sha256").update(b).digest("hex")}`;

/** The referrer entries of a layout's index.json, with their manifests and documents, checked for shape. */
function layoutReferrers(layout: string, subject: Descriptor): Array<{ entry: Descriptor; doc: Buffer }> {
  const index = json<Index>(readFileSync(join(layout, "index.json")));
  const out: Array<{ entry: Descriptor; doc: Buffer }> = [];
  for (const entry of index.manifests.filter((m) => m.artifactType !== undefined)) {
    assert.equal(
      entry.annotations?.["org.opencontainers.image.ref.name"],
      undefined,
      "referrers are untagged",
    );
    const bytes = blob(layout, entry.digest);
    assert.equal(sha256(bytes), entry.digest);
    assert.equal(bytes.length, entry.size);
    const m = json<ArtifactManifest>(bytes);
    if (m.subject.digest !== subject.digest) continue;
    checkArtifact(m, entry, subject);
    const doc = blob(layout, m.layers[0].digest);
    assert.equal(sha256(doc), m.layers[0].digest);
    assert.equal(blob(layout, EMPTY.digest).toString(), "{}");
    out.push({ entry, doc });
  }
  return out;
}

/** An artifact manifest as the image spec 1.1 wants a referrer, listed by `entry`, about `subject`. */
function checkArtifact(m: ArtifactManifest, entry: Descriptor, subject: Descriptor): void {
  assert.equal(m.mediaType, OCI_MANIFEST);
  assert.equal(entry.mediaType, OCI_MANIFEST);
  assert.equal(m.artifactType, entry.artifactType);
  assert.deepEqual(m.config, EMPTY);
  assert.equal(m.layers.length, 1);
  assert.equal(m.layers[0].mediaType, m.artifactType);
  assert.match(m.layers[0].annotations?.["org.opencontainers.image.title"] ?? "", /\.json$/);
  assert.deepEqual(m.subject, { mediaType: subject.mediaType, digest: subject.digest, size: subject.size });
  assert.deepEqual(entry.annotations, m.annotations);
  assert.ok(m.annotations["org.opencontainers.image.created"]);
}

/** The store paths a document lists, whatever its format. */
function documentPaths(mediaType: string | undefined, doc: Buffer): string[] {
  if (mediaType === CYCLONEDX)
    return json<{ components: { "bom-ref": string }[] }>(doc)
      .components.map((c) => c["bom-ref"])
      .sort();
  if (mediaType === SPDX)
    return json<{ packages: { packageFileName: string }[] }>(doc)
      .packages.map((p) => p.packageFileName)
      .sort();
  if (mediaType === PROVENANCE)
    return json<{ predicate: { buildDefinition: { resolvedDependencies: { name: string }[] } } }>(doc)
      .predicate.buildDefinition.resolvedDependencies.map((d) => d.name)
      .filter((n) => n.startsWith("/nix/store/"))
      .sort();
  throw new Error(`unexpected document type ${mediaType}`);
}

function tagged(layout: string, tag: string): Descriptor {
  const entry = json<Index>(readFileSync(join(layout, "index.json"))).manifests.find(
    (m) => m.annotations?.["org.opencontainers.image.ref.name"] === tag,
  );
  assert.ok(entry, `${tag} in ${layout}`);
  return entry;
}

test("oci: layout: the tagged image plus an untagged referrer per format, each about the image, listing its closure", async () => {
  const layout = join(work, "layout");
  const digest = nixociOk([
    "build",
    ...COMMON,
    "--sbom",
    "cyclonedx,spdx",
    fx.hello,
    "-o",
    `oci:${layout}:v1`,
  ]).text.trim();
  const index = json<Index>(readFileSync(join(layout, "index.json")));
  assert.equal(index.manifests.length, 3, JSON.stringify(index));
  const image = tagged(layout, "v1");
  assert.equal(image.digest, digest);
  const referrers = layoutReferrers(layout, image);
  assert.deepEqual(referrers.map((r) => r.entry.artifactType).sort(), [CYCLONEDX, SPDX].sort());
  for (const r of referrers) {
    assert.deepEqual(documentPaths(r.entry.artifactType, r.doc), helloClosure);
    assert.equal(r.entry.annotations?.["org.opencontainers.image.created"], "1970-01-01T00:00:01Z");
  }
  const bom = referrers.find((r) => r.entry.artifactType === CYCLONEDX)!.doc.toString();
  assert.deepEqual(await new Validation.JsonStrictValidator(Spec.Version.v1dot6).validate(bom), null);
  assert.equal(
    json<{ metadata: { component: { "bom-ref": string } } }>(bom).metadata.component["bom-ref"],
    digest,
  );
  // Layout readers still find the image by its tag; the same build again adds nothing.
  assert.equal(sha256(Buffer.from(runText("skopeo", ["inspect", "--raw", `oci:${layout}:v1`]))), digest);
  const before = readFileSync(join(layout, "index.json"));
  nixociOk(["build", ...COMMON, "--sbom", "spdx", "--sbom", "cyclonedx", fx.hello, "-o", `oci:${layout}:v1`]);
  assert.deepEqual(json<Index>(readFileSync(join(layout, "index.json"))), json<Index>(before));
});

test("reproducible: the same inputs give the same referrer digests; another creation time gives others", () => {
  const digests = (dir: string, extra: string[] = []): string[] => {
    nixociOk([
      "build",
      "-q",
      "--no-cache",
      ...extra,
      "--sbom",
      "cyclonedx,provenance",
      fx.hello,
      "-o",
      `oci:${dir}`,
    ]);
    return json<Index>(readFileSync(join(dir, "index.json")))
      .manifests.filter((m) => m.artifactType)
      .map((m) => m.digest);
  };
  const a = digests(join(work, "repro-a"));
  assert.equal(a.length, 2);
  assert.deepEqual(digests(join(work, "repro-b")), a);
  const later = digests(join(work, "repro-c"), ["--created", "2024-01-02T03:04:05Z"]);
  assert.equal(later.length, 2);
  assert.ok(
    later.every((d) => !a.includes(d)),
    "the time is part of the referrer",
  );
  const m = json<ArtifactManifest>(blob(join(work, "repro-c"), later[0]));
  assert.equal(m.annotations["org.opencontainers.image.created"], "2024-01-02T03:04:05Z");
});

test("oci-archive: the layout inside the tar has the referrer; a docker-archive beside it gets a note", () => {
  const archive = join(work, "image.oci.tar");
  const dockerArchive = join(work, "image.docker.tar");
  const r = nixoci([
    "build",
    "--cache-dir",
    cache,
    "--sbom",
    "provenance",
    fx.hello,
    "-o",
    `oci-archive:${archive}:v2`,
    "-o",
    `docker-archive:${dockerArchive}`,
  ]);
  assert.equal(r.status, 0, r.stderr);
  const notes = r.stderr.split("\n").filter((l) => l.includes("referrers"));
  assert.deepEqual(notes, [
    `note: docker-archive:${dockerArchive} cannot carry referrers: the SBOM goes to the other outputs only`,
  ]);
  assert.ok(existsSync(dockerArchive));
  const out = join(work, "archive-unpacked");
  mkdirSync(out);
  run("tar", ["-xf", archive, "-C", out]);
  const image = tagged(out, "v2");
  const referrers = layoutReferrers(out, image);
  assert.deepEqual(
    referrers.map((x) => x.entry.artifactType),
    [PROVENANCE],
  );
  assert.deepEqual(documentPaths(PROVENANCE, referrers[0].doc), helloClosure);
  const statement = json<{ subject: { digest: { sha256: string } }[] }>(referrers[0].doc);
  assert.equal(`sha256:${statement.subject[0].digest.sha256}`, image.digest);
  assert.equal(json<Index>(readFileSync(join(out, "index.json"))).manifests.length, 2);
});

function skopeoRaw(ref: string): Buffer {
  return run("skopeo", ["inspect", "--raw", "--tls-verify=false", ref]);
}

test("docker-registry (no referrers API): the sha256-<hex> fallback index lists the referrers, once however often pushed", () => {
  const repo = `docker://${registry.host}/sbom/app`;
  const push = (
    formats: string,
  ): { referrers?: string[]; referrersTags?: string[]; manifestDigest: string } =>
    json<{ outputs: { referrers?: string[]; referrersTags?: string[]; manifestDigest: string }[] }>(
      nixociOk(["build", ...COMMON, "--json", "--sbom", formats, fx.hello, "-o", `${repo}:v1`]).stdout,
    ).outputs[0];
  const first = push("cyclonedx,spdx");
  const digest = first.manifestDigest;
  const tag = `sha256-${digest.slice("sha256:".length)}`;
  assert.deepEqual(first.referrersTags, [tag]);
  const fallback = (): Index => json<Index>(skopeoRaw(`${repo}:${tag}`));
  const index = fallback();
  assert.equal(index.mediaType, OCI_INDEX);
  assert.deepEqual(index.manifests.map((m) => m.artifactType).sort(), [CYCLONEDX, SPDX].sort());
  assert.deepEqual(index.manifests.map((m) => m.digest).sort(), [...first.referrers!].sort());
  const image = { mediaType: OCI_MANIFEST, digest, size: skopeoRaw(`${repo}@${digest}`).length };
  // The same referrers as the layout build of the same inputs (same cache, same flags).
  const layout = json<Index>(readFileSync(join(work, "layout", "index.json")))
    .manifests.filter((m) => m.artifactType)
    .map((m) => m.digest)
    .sort();
  assert.deepEqual(index.manifests.map((m) => m.digest).sort(), layout);
  for (const entry of index.manifests) {
    const bytes = skopeoRaw(`${repo}@${entry.digest}`);
    assert.equal(sha256(bytes), entry.digest);
    checkArtifact(json<ArtifactManifest>(bytes), entry, image);
  }
  // Again: nothing new, the tag stays; another format is added to the list.
  const again = push("spdx,cyclonedx");
  assert.equal(again.referrersTags, undefined);
  assert.equal(fallback().manifests.length, 2);
  push("provenance");
  assert.deepEqual(
    fallback()
      .manifests.map((m) => m.artifactType)
      .sort(),
    [CYCLONEDX, PROVENANCE, SPDX].sort(),
  );
  assert.deepEqual(
    fallback()
      .manifests.slice(0, 2)
      .map((m) => m.digest),
    index.manifests.map((m) => m.digest),
    "the old entries are kept as they were",
  );
});

test("docker-registry: a referrer another push's index replaced is written again (the fallback has no lock)", async () => {
  const repo = "sbom/race";
  const pushed = json<{ outputs: { manifestDigest: string }[] }>(
    nixociOk(["build", ...COMMON, "--json", fx.hello, "-o", `docker://${registry.host}/${repo}:v1`]).stdout,
  ).outputs[0];
  const subject = {
    mediaType: OCI_MANIFEST,
    digest: pushed.manifestDigest,
    size: skopeoRaw(`docker://${registry.host}/${repo}@${pushed.manifestDigest}`).length,
  };
  const referrer = (text: string) =>
    buildReferrer({
      subject,
      mediaType: "text/plain",
      document: text,
      title: "note.txt",
      created: "1970-01-01T00:00:01Z",
    });
  const [a, b] = [referrer("a\n"), referrer("b\n")];
  const target = { registry: registry.host, repository: repo };
  const tag = `sha256-${subject.digest.slice("sha256:".length)}`;
  const listed = (): string[] =>
    json<Index>(skopeoRaw(`docker://${registry.host}/${repo}:${tag}`))
      .manifests.map((m) => m.digest)
      .sort();
  assert.deepEqual((await pushReferrers([b], target, { insecure: true, confirmDelayMs: 10 })).fallbackTags, [
    tag,
  ]);
  const onlyB = skopeoRaw(`docker://${registry.host}/${repo}:${tag}`);
  // Another push that read the index before this one wrote puts its own after: the index without a.
  let turns = 0;
  const result = await pushReferrers([a], target, {
    insecure: true,
    confirmDelayMs: 10,
    afterFallbackWrite: async (t) => {
      if (turns++ > 0) return;
      const other = new RegistryClient(registry.host, repo, { insecure: true });
      try {
        await other.putManifest(t, onlyB, OCI_INDEX, sha256(onlyB));
      } finally {
        other.close();
      }
    },
  });
  assert.equal(turns, 2, "written twice: once more after the other push's index replaced it");
  assert.deepEqual(result.fallbackTags, [tag]);
  assert.deepEqual(listed(), [a.manifest.digest, b.manifest.digest].sort());
});

function get(
  host: string,
  path: string,
): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  const [hostname, port] = host.split(":");
  return new Promise((resolve, reject) => {
    const req = request({ hostname, port: Number(port), path, method: "GET" }, (res) => {
      let body = "";
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on("error", reject);
    req.end();
  });
}

test("nixoci serve (referrers API): GET /v2/NAME/referrers/DIGEST lists them, ?artifactType= filters, no fallback tag", async () => {
  const out = json<{ outputs: { referrers?: string[]; referrersTags?: string[]; manifestDigest: string }[] }>(
    nixociOk([
      "build",
      ...COMMON,
      "--json",
      "--sbom",
      "cyclonedx",
      "--sbom",
      "spdx",
      fx.hello,
      "-o",
      `docker://${serve.host}/sbom/app:v1`,
    ]).stdout,
  ).outputs[0];
  assert.equal(out.referrersTags, undefined, "the registry took them as referrers");
  const digest = out.manifestDigest;
  const all = await get(serve.host, `/v2/sbom/app/referrers/${digest}`);
  assert.equal(all.status, 200, all.body);
  const listed = json<Index>(all.body).manifests;
  assert.deepEqual(listed.map((m) => m.artifactType).sort(), [CYCLONEDX, SPDX].sort());
  assert.deepEqual(listed.map((m) => m.digest).sort(), [...out.referrers!].sort());
  for (const m of listed)
    assert.equal(m.annotations?.["org.opencontainers.image.created"], "1970-01-01T00:00:01Z");
  const spdx = await get(
    serve.host,
    `/v2/sbom/app/referrers/${digest}?artifactType=${encodeURIComponent(SPDX)}`,
  );
  assert.equal(spdx.headers["oci-filters-applied"], "artifactType");
  assert.deepEqual(
    json<Index>(spdx.body).manifests.map((m) => m.artifactType),
    [SPDX],
  );
  const tag = await get(serve.host, `/v2/sbom/app/manifests/sha256-${digest.slice("sha256:".length)}`);
  assert.equal(tag.status, 404);
});

test("multi-platform: one referrer per platform manifest, about that platform's closure, none about the index", async () => {
  const arm = buildArm64Fixtures();
  const layout = join(work, "multi");
  const digest = nixociOk([
    "build",
    ...COMMON,
    "--sbom",
    "cyclonedx",
    "--platform",
    `linux/amd64=${fx.hello}`,
    "--platform",
    `linux/arm64=${arm.hello}`,
    "-o",
    `oci:${layout}:v1`,
    "-o",
    `docker://${registry.host}/sbom/multi:v1`,
  ]).text.trim();
  const top = tagged(layout, "v1");
  assert.equal(top.mediaType, OCI_INDEX);
  assert.equal(top.digest, digest);
  assert.deepEqual(layoutReferrers(layout, top), []);
  const platforms = json<Index>(blob(layout, digest)).manifests;
  assert.equal(platforms.length, 2);
  for (const p of platforms) {
    const referrers = layoutReferrers(layout, p);
    assert.equal(referrers.length, 1, p.platform?.architecture);
    const root = p.platform?.architecture === "arm64" ? arm.hello : fx.hello;
    assert.deepEqual(documentPaths(CYCLONEDX, referrers[0].doc), closureOf(root));
    // The registry's fallback tag of each platform manifest lists that platform's referrer.
    const fallback = json<Index>(
      skopeoRaw(`docker://${registry.host}/sbom/multi:sha256-${p.digest.slice("sha256:".length)}`),
    );
    assert.deepEqual(
      fallback.manifests.map((m) => m.digest),
      [referrers[0].entry.digest],
    );
  }
  const indexTag = await get(
    registry.host,
    `/v2/sbom/multi/manifests/sha256-${digest.slice("sha256:".length)}`,
  );
  assert.equal(indexTag.status, 404, "no fallback tag for the index");
  assert.equal(json<Index>(readFileSync(join(layout, "index.json"))).manifests.length, 3);
});

test("bad input: one line, exit 2, before any work and without creating any file", () => {
  const fails = (args: string[], message: RegExp): void => {
    const r = nixoci(["build", "-q", "--no-cache", ...args]);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
    assert.match(r.stderr, message);
    assert.equal(r.stdout.length, 0);
  };
  const layout = join(work, "bad-layout");
  fails(
    ["--sbom", "nope", fx.hello, "-o", `oci:${layout}`],
    /--sbom: unknown format "nope" \(cyclonedx, spdx, provenance\)/,
  );
  fails(["--sbom", "cyclonedx,", fx.hello, "-o", `oci:${layout}`], /--sbom: unknown format ""/);
  assert.ok(!existsSync(layout));
  const tar = join(work, "x.tar");
  fails(
    ["--sbom", "cyclonedx", fx.hello, "-o", `docker-archive:${tar}`],
    /--sbom: only oci:, oci-archive: and docker:\/\/ outputs carry referrers, not docker-archive:.*x\.tar/,
  );
  assert.ok(!existsSync(tar));
  fails(["--sbom", "spdx", fx.hello, "-o", "nix:app", "-"], /carry referrers, not nix:app, -$/m);
  fails(["--sbom", "spdx", "--json", fx.hello], /--sbom: only .* carry referrers: add -o DEST/);
});
