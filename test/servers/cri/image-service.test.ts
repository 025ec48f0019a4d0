// `nixoci image-service` with the real containerd CRI plugin (NIXOCI_CONTAINERD) and nixoci's snapshotter: a nixoci image written
// into the Nix store as a description (`nixoci build --output nix:NAME`) is pulled through the image service as
// `nix:0/nix/store/<hash>-NAME` with no registry involved, its store layers are committed by the snapshotter from
// the store (none unpacked), CRI ImageStatus / ListImages / RemoveImage answer for it, and `ctr -n k8s.io run`
// runs it. Ordinary references are proxied to containerd's CRI; bad references and descriptions get clear gRPC
// errors within a bound; `nixoci k8s pod` prints a pod that uses the reference. When the snapshotter is not
// nixoci's (containerd's own overlayfs here), the store layers are generated from the store and must unpack to
// the config's diff_ids.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parse as parseYaml } from "yaml";
import { criImageName } from "../../../src/servers/cri/image-service.js";
import { buildFixtures, generateCacheKey } from "../../support/fixtures.js";
import { nixoci, nixociOk } from "../../support/cli.js";
import { runText } from "../../support/run.js";
import { freePort, mountsUnder } from "../../support/daemons.js";
import { CRI_NAMESPACE, pushNixociImage, startCriStack, type CriStack } from "../../support/cri.js";
import { tail } from "../../support/snapshotter.js";
import { buildDescription, startImageService, type ImageService } from "../../support/image-service.js";
import { containerdUnderTest } from "../../support/containerd-release.js";

/** The digest of the (one) manifest a description's index.json lists. */
function manifestOf(desc: string): string {
  const index = JSON.parse(readFileSync(join(desc, "index.json"), "utf8")) as {
    manifests: Array<{ digest: string }>;
  };
  return index.manifests[0].digest;
}

function grpcCode(p: Promise<unknown>): Promise<{ code: number; details: string }> {
  return p.then(
    () => assert.fail("expected a gRPC error"),
    (e: { code: number; details: string }) => ({ code: e.code, details: e.details }),
  );
}

describe(`nixoci image-service: nix:0 references from the store through containerd ${containerdUnderTest().series}'s CRI`, () => {
  let stack: CriStack;
  let svc: ImageService;
  let fx: ReturnType<typeof buildFixtures>;
  let description: string;
  let ref: string;
  let metricsPort: number;
  /** A description of the fixtures' hello (entrypoint /bin/hello), with `extra` build options. */
  const helloDescription = (name: string, extra: string[] = []): string =>
    buildDescription(name, [...extra, "--entrypoint", `${fx.hello}/bin/hello`, fx.hello]);

  before(async () => {
    fx = buildFixtures();
    description = buildDescription("nixoci-test-hello", ["--entrypoint", `${fx.hello}/bin/hello`, fx.hello]);
    assert.match(description, /^\/nix\/store\/[0-9a-z]{32}-nixoci-test-hello$/);
    ref = `nix:0${description}`;
    stack = await startCriStack({ snapshotterArgs: [], prefix: "imgsvc" });
    metricsPort = await freePort();
    svc = await startImageService(stack.dir, "is", [
      "--containerd",
      stack.containerd.address,
      "--snapshotter",
      "nixoci",
      "--metrics-address",
      `127.0.0.1:${metricsPort}`,
    ]);
  });

  after(async () => {
    await svc?.stop();
    await stack?.stop();
  });

  test("the description is a valid store path that references the image's closure", () => {
    runText("nix-store", ["--verify-path", description]);
    const refs = runText("nix-store", ["-q", "--references", description]).trim().split("\n");
    assert.ok(refs.includes(fx.hello), `references ${refs.join(" ")}`);
    for (const f of ["oci-layout", "index.json"]) assert.ok(existsSync(join(description, f)));
  });

  test("PullImage of a nix:0 reference loads it without a registry; the store layers come from the store", async () => {
    const registryBefore = stack.registry.log().length;
    const pulled = await svc.client.pullImage({ image: { image: ref } }, { timeoutMs: 120_000 });
    assert.match(pulled.image_ref, /^sha256:[0-9a-f]{64}$/);
    // No registry anywhere: its log did not grow.
    assert.equal(stack.registry.log().length, registryBefore);
    const log = readFileSync(svc.logFile, "utf8");
    const loaded = log
      .split("\n")
      .filter((l) => l.includes('"nix image loaded"'))
      .map(
        (l) => JSON.parse(l) as { fromStore: number; applied: number; generated: number; present: number },
      );
    assert.equal(loaded.length, 1, log);
    assert.ok(loaded[0].fromStore >= 1, `store layers made by the snapshotter: ${JSON.stringify(loaded[0])}`);
    assert.equal(loaded[0].generated, 0);
    assert.equal(loaded[0].applied, 1, "the customisation layer is applied from its blob");
    assert.match(readFileSync(stack.sn.logFile, "utf8"), /nix layer: committed from the store/);

    // ImageStatus and ListImages through the image service (forwarded to containerd's CRI) know it.
    for (const name of [ref, criImageName(description)]) {
      const st = await svc.client.imageStatus({ image: { image: name } });
      assert.ok(st.image, `ImageStatus ${name}`);
      assert.equal(st.image.id, pulled.image_ref);
      assert.ok(st.image.repo_tags.includes(criImageName(description)), st.image.repo_tags.join(" "));
    }
    const list = await svc.client.listImages({});
    assert.ok(list.images.some((i) => i.id === pulled.image_ref));

    // A second pull is idempotent and quick (the image and its snapshots are there).
    const again = await svc.client.pullImage({ image: { image: `${ref}:latest` } });
    assert.equal(again.image_ref, pulled.image_ref);
  });

  test("the pulled image runs through the snapshotter and prints its greeting", () => {
    const out = stack.run(criImageName(description), "imgsvc-hello");
    assert.match(out, /Hello from nixoci!/);
  });

  test("a tag or digest in the reference must be the description's; the image is recorded under the reference asked", async () => {
    const tagged = helloDescription("nixoci-test-hello-tagged", ["--tag", "hello-tagged:v3"]);
    // Its tag: ImageStatus of the same reference (what a kubelet asks before and after pulling) finds it.
    const pulled = await svc.client.pullImage(
      { image: { image: `nix:0${tagged}:v3` } },
      { timeoutMs: 120_000 },
    );
    const st = await svc.client.imageStatus({ image: { image: `nix:0${tagged}:v3` } });
    assert.equal(st.image?.id, pulled.image_ref);
    // A tag or digest it does not have: NOT_FOUND, as a registry answers; nothing recorded under it.
    const manifest = manifestOf(tagged);
    const other = `sha256:${"1".repeat(64)}`;
    for (const [asked, message] of [
      [`nix:0${tagged}:v9`, /the description has no tag "v9" \(its tag is "v3"\)/],
      [`nix:0${description}:v9`, /the description has no tag "v9" \(its tag is "latest"\)/],
      [`nix:0${tagged}@${other}`, new RegExp(`the description's manifest is ${manifest}, not ${other}`)],
    ] as const) {
      const e = await grpcCode(svc.client.pullImage({ image: { image: asked } }, { timeoutMs: 60_000 }));
      assert.equal(e.code, 5, `${asked}: ${e.details}`);
      assert.match(e.details, message);
      assert.equal((await svc.client.imageStatus({ image: { image: asked } })).image ?? null, null);
    }
    // Its own digest: pulled, and found by it.
    const byDigest = `nix:0${tagged}@${manifest}`;
    assert.equal(
      (await svc.client.pullImage({ image: { image: byDigest } }, { timeoutMs: 60_000 })).image_ref,
      pulled.image_ref,
    );
    assert.equal((await svc.client.imageStatus({ image: { image: byDigest } })).image?.id, pulled.image_ref);
  });

  test("a --compression auto description (zstd: its only reader is containerd) loads and runs too", async () => {
    const desc = helloDescription("nixoci-test-hello-zstd", ["--compression", "auto"]);
    const blob = (digest: string) => readFileSync(join(desc, "blobs/sha256", digest.slice(7)), "utf8");
    const manifest = JSON.parse(blob(manifestOf(desc))) as { layers: Array<{ mediaType: string }> };
    assert.ok(manifest.layers.length >= 2);
    for (const l of manifest.layers) assert.equal(l.mediaType, "application/vnd.oci.image.layer.v1.tar+zstd");
    const pulled = await svc.client.pullImage({ image: { image: `nix:0${desc}` } }, { timeoutMs: 120_000 });
    assert.match(pulled.image_ref, /^sha256:[0-9a-f]{64}$/);
    assert.match(stack.run(criImageName(desc), "imgsvc-hello-zstd"), /Hello from nixoci!/);
  });

  test("an ordinary registry reference is proxied to containerd's CRI", async () => {
    const img = pushNixociImage(stack.registry, {
      installables: [fx.greeting],
      repo: "proxied/greeting",
      workDir: stack.dir,
    });
    const pulled = await svc.client.pullImage({ image: { image: img.ref } }, { timeoutMs: 120_000 });
    assert.match(pulled.image_ref, /^sha256:/);
    const st = await svc.client.imageStatus({ image: { image: img.ref } });
    assert.ok(st.image?.repo_tags.includes(img.ref));
    await svc.client.removeImage({ image: { image: img.ref } });
    assert.equal((await svc.client.imageStatus({ image: { image: img.ref } })).image, null);
    const fs = await svc.client.imageFsInfo({});
    assert.ok(fs.image_filesystems.length >= 1);
  });

  test("bad references and descriptions get clear errors, never a hang", async () => {
    const bad = async (image: string, code: number, re: RegExp): Promise<void> => {
      const e = await grpcCode(svc.client.pullImage({ image: { image } }, { timeoutMs: 30_000 }));
      assert.equal(e.code, code, `${image}: ${e.details}`);
      assert.match(e.details, re);
    };
    await bad("nix:0/nix/store/../etc/passwd", 3, /not directly inside|normalised|invalid/i);
    await bad("nix:0/etc/passwd", 3, /not in|store/i);
    // 100 KB of a name: refused at once, and logged cut short.
    await bad(
      `nix:0/nix/store/${"0".repeat(32)}-${"a".repeat(100_000)}`,
      3,
      /^a reference of 100049 characters/,
    );
    assert.ok(
      readFileSync(svc.logFile, "utf8")
        .split("\n")
        .every((l) => l.length < 5000),
      "no log line holds the whole reference",
    );
    await bad(`nix:0/nix/store/${"0".repeat(32)}-missing-image`, 5, /not in the store/);
    // A store path that is not a description (the package itself).
    await bad(`nix:0${fx.hello}`, 9, /corrupt image description.*oci-layout/);
    // A description whose manifest blob is missing.
    const dir = mkdtempSync(join(stack.dir, "corrupt-"));
    const d = join(dir, "nixoci-corrupt-image");
    mkdirSync(join(d, "blobs", "sha256"), { recursive: true });
    writeFileSync(join(d, "oci-layout"), '{"imageLayoutVersion":"1.0.0"}');
    writeFileSync(
      join(d, "index.json"),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [
          {
            mediaType: "application/vnd.oci.image.manifest.v1+json",
            digest: `sha256:${"a".repeat(64)}`,
            size: 10,
          },
        ],
      }),
    );
    const corrupt = runText("nix-store", ["--add", d]).trim();
    await bad(`nix:0${corrupt}`, 9, /corrupt image description: manifest blob .* is missing/);
    // An image for another architecture: refused up front (the CRI plugin would never list it).
    const arm = buildDescription("nixoci-test-arm64", ["--arch", "arm64", fx.greeting]);
    await bad(`nix:0${arm}`, 9, /for linux\/arm64, this node is linux\//);
    // Nothing was left mounted by the failed pulls.
    assert.deepEqual(
      mountsUnder(stack.dir).filter((m) => !m.includes("/root/")),
      [],
    );
  });

  test("an OCI archive in the store (nix-snapshotter's image tarballs) loads too, store layers from the store", async () => {
    const work = mkdtempSync(join(stack.dir, "archive-"));
    const tarFile = join(work, "hello-oci.tar");
    nixociOk([
      "build",
      "-q",
      "--entrypoint",
      `${fx.hello}/bin/hello`,
      fx.hello,
      "-o",
      `oci-archive:${tarFile}`,
    ]);
    const archive = runText("nix-store", ["--add", tarFile]).trim();
    const from = readFileSync(svc.logFile, "utf8").length;
    const pulled = await svc.client.pullImage(
      { image: { image: `nix:0${archive}` } },
      { timeoutMs: 120_000 },
    );
    assert.match(pulled.image_ref, /^sha256:/);
    const line = readFileSync(svc.logFile, "utf8")
      .slice(from)
      .split("\n")
      .find((l) => l.includes('"nix image loaded"'));
    assert.ok(line, "loaded");
    const counts = JSON.parse(line) as { fromStore: number; present: number; generated: number };
    assert.equal(counts.generated, 0);
    assert.ok(counts.fromStore + counts.present >= 1, line);
    assert.match(stack.run(criImageName(archive), "imgsvc-archive"), /Hello from nixoci!/);
    // Not a tar at all: a clear error.
    writeFileSync(join(work, "junk.tar"), "not a tar archive\n");
    const junk = runText("nix-store", ["--add", join(work, "junk.tar")]).trim();
    const e = await grpcCode(
      svc.client.pullImage({ image: { image: `nix:0${junk}` } }, { timeoutMs: 30_000 }),
    );
    assert.equal(e.code, 9, e.details);
    assert.match(e.details, /not a tar archive|corrupt image/);
  });

  test("RemoveImage of a nix:0 image removes it from CRI", async () => {
    await svc.client.pullImage({ image: { image: ref } });
    await svc.client.removeImage({ image: { image: ref } });
    assert.equal((await svc.client.imageStatus({ image: { image: ref } })).image, null);
    assert.doesNotMatch(stack.ctr(["images", "ls", "-q"]), new RegExp(description.slice(11, 43)));
  });

  test("an image service whose containerd socket is gone fails calls promptly", async () => {
    const other = await startImageService(stack.dir, "gone", [
      "--containerd",
      join(stack.dir, "no-such.sock"),
    ]);
    try {
      // Promptly: a call that waited for containerd would end with DEADLINE_EXCEEDED (4) at its 30 s deadline,
      // not UNAVAILABLE (bench/limits.ts measures how soon the answer comes).
      const e = await grpcCode(other.client.pullImage({ image: { image: ref } }, { timeoutMs: 30_000 }));
      assert.equal(e.code, 14, e.details); // UNAVAILABLE
      const e2 = await grpcCode(other.client.listImages({}, { timeoutMs: 30_000 }));
      assert.equal(e2.code, 14, e2.details);
    } finally {
      await other.stop();
    }
  });

  test("with containerd's own overlayfs snapshotter the store layers are generated and match the diff_ids", async () => {
    const other = await startImageService(stack.dir, "ovl", [
      "--containerd",
      stack.containerd.address,
      "--snapshotter",
      "overlayfs",
    ]);
    // Also an image built with dockerd 20.10's tar headers: its layers are generated in that format.
    const docker20 = buildDescription("nixoci-test-hello-docker20", [
      "--tar-format",
      "docker20",
      "--entrypoint",
      `${fx.hello}/bin/hello`,
      fx.hello,
    ]);
    try {
      for (const [desc, name] of [
        [description, "imgsvc-ovl"],
        [docker20, "imgsvc-ovl-docker20"],
      ])
        await pullAndRun(desc, name);
    } finally {
      await other.stop();
    }

    async function pullAndRun(desc: string, name: string): Promise<void> {
      // CRI's configured snapshotter is nixoci, so CRI's view is not checked here: the import itself is.
      const e = await other.client
        .pullImage({ image: { image: `nix:0${desc}` } }, { timeoutMs: 120_000 })
        .catch((err) => err);
      const log = readFileSync(other.logFile, "utf8");
      const loaded = log
        .split("\n")
        .filter((l) => l.includes('"nix image loaded"'))
        .find((l) => (JSON.parse(l) as { image: string }).image === criImageName(desc));
      assert.ok(loaded, `no import logged: ${String((e as Error)?.message ?? "")}\n${tail(other.logFile)}`);
      const counts = JSON.parse(loaded) as { generated: number; fromStore: number };
      assert.equal(counts.fromStore, 0);
      assert.ok(counts.generated >= 1, loaded);
      const out = stack.containerd
        .ctr(["-n", CRI_NAMESPACE, "run", "--snapshotter", "overlayfs", "--rm", criImageName(desc), name])
        .toString();
      assert.match(out, /Hello from nixoci!/);
    }
  });

  test("a description missing from the store is substituted from a signed binary cache", async () => {
    // Its own description (another name), pushed to a cache, then deleted from the store.
    const desc = buildDescription("nixoci-test-subst", ["--entrypoint", `${fx.hello}/bin/hello`, fx.hello]);
    const keys = generateCacheKey("imgsvc-test", join(stack.dir, "keys"));
    const other = generateCacheKey("imgsvc-other", join(stack.dir, "keys"));
    const cache = join(stack.dir, "cache");
    nixociOk(["cache", "push", "--to", `file://${cache}`, "--sign-key", keys.secretKeyFile, "-q", desc]);
    runText("nix-store", ["--delete", desc]);
    assert.ok(!existsSync(desc));
    // A cache signed by a key the service does not trust: NOT_FOUND, naming why.
    const untrusted = await startImageService(stack.dir, "untrusted", [
      "--containerd",
      stack.containerd.address,
      "--substituter",
      `file://${cache}`,
      "--trusted-public-key",
      other.publicKey,
    ]);
    try {
      const e = await grpcCode(untrusted.client.pullImage({ image: { image: `nix:0${desc}` } }));
      assert.equal(e.code, 5, e.details);
      assert.match(e.details, /not substitutable.*signature/i);
      assert.ok(!existsSync(desc));
    } finally {
      await untrusted.stop();
    }
    // A cache that is down when the service starts does not stop it: pulls that need no cache work, one that
    // does is UNAVAILABLE, naming why.
    const down = await startImageService(stack.dir, "down", [
      "--containerd",
      stack.containerd.address,
      "--substituter",
      `http://127.0.0.1:${await freePort()}`,
    ]);
    try {
      assert.match(
        (await down.client.pullImage({ image: { image: ref } }, { timeoutMs: 120_000 })).image_ref,
        /^sha256:/,
      );
      const e = await grpcCode(down.client.pullImage({ image: { image: `nix:0${desc}` } }));
      assert.equal(e.code, 14, e.details);
      assert.match(e.details, /not in the store, and no --substituter could be reached/);
      assert.match(readFileSync(down.logFile, "utf8"), /substituter unavailable/);
    } finally {
      await down.stop();
    }
    const subst = await startImageService(stack.dir, "subst", [
      "--containerd",
      stack.containerd.address,
      "--substituter",
      `file://${cache}`,
      "--trusted-public-key",
      keys.publicKey,
    ]);
    try {
      const pulled = await subst.client.pullImage(
        { image: { image: `nix:0${desc}` } },
        { timeoutMs: 120_000 },
      );
      assert.match(pulled.image_ref, /^sha256:/);
      runText("nix-store", ["--verify-path", desc]);
      const outRun = stack.run(criImageName(desc), "imgsvc-subst");
      assert.match(outRun, /Hello from nixoci!/);
    } finally {
      await subst.stop();
    }
  });

  test("/healthz and /metrics on --metrics-address", async () => {
    const get = async (path: string): Promise<{ status: number; body: string }> => {
      const r = await fetch(`http://127.0.0.1:${metricsPort}${path}`);
      return { status: r.status, body: await r.text() };
    };
    assert.deepEqual(await get("/healthz"), { status: 200, body: "ok\n" });
    const m = (await get("/metrics")).body;
    assert.match(m, /nixoci_nix_image_pulls_total\{result="success"\} [1-9]/);
    assert.match(m, /nixoci_nix_image_pulls_total\{result="failure"\} [1-9]/);
    assert.match(m, /nixoci_cri_calls_total\{method="ImageStatus",code="OK"\} [1-9]/);
    assert.match(m, /nixoci_cri_calls_total\{method="PullImage",code="INVALID_ARGUMENT"\} [1-9]/);
    assert.match(m, /nixoci_nix_image_layers_total\{source="fromStore"\} [1-9]/);
    assert.equal((await get("/nope")).status, 404);
  });

  test("nixoci k8s pod prints a pod spec with the nix:0 reference and no registry", () => {
    const yaml = nixociOk(["k8s", "pod", description, "--name", "hello", "--", "hello", "-g", "hi"]).text;
    const pod = parseYaml(yaml) as {
      kind: string;
      metadata: { name: string };
      spec: { containers: Array<{ image: string; command: string[]; imagePullPolicy: string }> };
    };
    assert.equal(pod.kind, "Pod");
    assert.equal(pod.metadata.name, "hello");
    assert.equal(pod.spec.containers[0].image, ref);
    assert.deepEqual(pod.spec.containers[0].command, ["hello", "-g", "hi"]);
    assert.equal(pod.spec.containers[0].imagePullPolicy, "IfNotPresent");
    const def = parseYaml(nixociOk(["k8s", "pod", ref]).text) as { metadata: { name: string } };
    assert.equal(def.metadata.name, "nixoci-test-hello");
    // Not a description, a missing path, a bad name: one-line errors.
    const notDesc = nixoci(["k8s", "pod", fx.hello]);
    assert.equal(notDesc.status, 1);
    assert.match(notDesc.stderr, /corrupt image description/);
    const missing = nixoci(["k8s", "pod", `nix:0/nix/store/${"0".repeat(32)}-x`]);
    assert.notEqual(missing.status, 0);
    assert.match(missing.stderr, /not a valid path/);
    const badName = nixoci(["k8s", "pod", description, "--name", "Bad_Name"]);
    assert.equal(badName.status, 2);
    assert.match(badName.stderr, /DNS-1123/);
    // A tag is kept in the pod's image when the description has it, refused when it has not.
    const latest = parseYaml(nixociOk(["k8s", "pod", `${ref}:latest`]).text) as typeof pod;
    assert.equal(latest.spec.containers[0].image, `${ref}:latest`);
    const noTag = nixoci(["k8s", "pod", `${ref}:v2`]);
    assert.equal(noTag.status, 1);
    assert.equal(noTag.stderr, `nixoci: ${ref}:v2: the description has no tag "v2" (its tag is "latest")\n`);
  });

  test("nix: output names are checked", () => {
    const r = nixoci(["build", "-q", fx.hello, "-o", "nix:Bad Name"]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /nix:Bad Name/);
    assert.equal(r.stderr.trim().split("\n").length, 1);
  });
});
