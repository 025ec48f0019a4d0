// nixoci diff: two real images built by `nixoci build` from real store paths (fixtures plus versioned packages
// built here with nix), written to oci:, oci-archive:, docker-archive: and a real docker-registry, compared
// exactly; an image umoci made (no annotations, a whiteout) and a layout whose annotations were stripped,
// compared by scanning their layers; and malformed inputs, each one line and a non-zero exit.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createHash } from "node:crypto";
import { buildFixtures, GC_ROOTS_DIR, makeTempDir } from "../support/fixtures.js";
import { run, runText } from "../support/run.js";
import { nixoci, nixociOk } from "../support/cli.js";
import { startRegistry, type Registry } from "../support/daemons.js";

const fx = buildFixtures();
const work = makeTempDir("diff");

// Versioned packages: tool 1.0 → 1.1 (a new version), lib 2.0 → 2.0 (rebuilt: same name, other contents),
// gone (only in the first image), extra (only in the second).
const NIX = `
let mk = name: text: builtins.derivation {
  inherit name; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "export PATH=/bin:/usr/bin; mkdir -p $out/share; echo \${text} > $out/share/\${name}" ];
};
in {
  tool-a = mk "tool-1.0" "one"; tool-b = mk "tool-1.1" "one";
  lib-a = mk "lib-2.0" "first"; lib-b = mk "lib-2.0" "second";
  gone = mk "gone-1.0" "gone"; extra = mk "extra-0.5" "extra";
}`;
writeFileSync(join(work, "versions.nix"), NIX);
mkdirSync(GC_ROOTS_DIR, { recursive: true });
const [toolA, toolB, libA, libB, gone, extra] = runText("nix-build", [
  join(work, "versions.nix"),
  ...["tool-a", "tool-b", "lib-a", "lib-b", "gone", "extra"].flatMap((a) => ["-A", a]),
  "--out-link",
  join(GC_ROOTS_DIR, "diff-test"),
]).split("\n");

interface Report {
  manifestDigest: string;
  layers: { digest: string; size: number; mediaType: string; paths: string[] }[];
}

let registry: Registry;
let a: Report;
let b: Report;
const layout = join(work, "layout");

function build(args: string[], name: string): Report {
  return JSON.parse(
    nixociOk([
      "build",
      "--json",
      "-q",
      ...args,
      "-o",
      `oci:${layout}:${name}`,
      "-o",
      `oci-archive:${join(work, `${name}.tar`)}`,
      "-o",
      `docker-archive:${join(work, `${name}-docker.tar`)}`,
      "-o",
      `docker://${registry.host}/app:${name}`,
    ]).text,
  ) as Report;
}

before(async () => {
  registry = await startRegistry();
  a = build(
    [
      fx.hello,
      fx["long-names"],
      toolA,
      libA,
      gone,
      "--cmd",
      "/bin/hello",
      "-e",
      "MODE=a",
      "-e",
      "KEEP=1",
      "--label",
      "version=1",
    ],
    "a",
  );
  b = build(
    [
      fx.hello,
      fx["long-names"],
      toolB,
      libB,
      extra,
      "--cmd",
      "/bin/hello --loud",
      "-e",
      "MODE=b",
      "-e",
      "KEEP=1",
      "-e",
      "NEW=x",
      "--label",
      "version=2",
      "--workdir",
      "/srv",
    ],
    "b",
  );
});
after(async () => {
  await registry?.stop();
});

function human(n: number): string {
  return n < 1024
    ? `${n} B`
    : n < 1 << 20
      ? `${(n / 1024).toFixed(1)} KiB`
      : `${(n / (1 << 20)).toFixed(1)} MiB`;
}
const nameOf = (p: string): string => p.slice(p.lastIndexOf("/") + 34);
const hash8 = (p: string): string => p.slice(p.lastIndexOf("/") + 1, p.lastIndexOf("/") + 9);

/** The layers of `x` whose digest `y` does not have, as the diff lists them. */
function onlyIn(x: Report, y: Report): Report["layers"] {
  const have = new Set(y.layers.map((l) => l.digest));
  return x.layers.filter((l) => !have.has(l.digest));
}
const unchangedLayers = (): number =>
  b.layers.filter((l) => a.layers.some((x) => x.digest === l.digest)).length;

test("the text summary of two nixoci images in an OCI layout, exactly", () => {
  const r = nixociOk(["diff", `oci:${layout}:a`, `oci:${layout}:b`]);
  const col = (w: string, rest: string): string => `  ${w.padEnd(9)}${rest}`;
  const layerLine = (w: string, l: Report["layers"][number]): string =>
    col(
      w,
      `${l.digest.slice(0, 19)}  ${human(l.size)}  ${l.paths.length ? [...l.paths].sort().map(nameOf).join(", ") : "(no store paths)"}`,
    );
  const expected = [
    `--- oci:${layout}:a (${a.manifestDigest}, linux/amd64)`,
    `+++ oci:${layout}:b (${b.manifestDigest}, linux/amd64)`,
    // hello, greeting, busybox and long-names are in both.
    "store paths: 1 added, 1 removed, 2 changed, 4 unchanged",
    col("added", extra),
    col("removed", gone),
    col("changed", `lib: 2.0 rebuilt (${hash8(libA)} → ${hash8(libB)})`),
    col("changed", "tool: 1.0 → 1.1"),
    `layers: ${onlyIn(b, a).length} added, ${onlyIn(a, b).length} removed, ${unchangedLayers()} unchanged`,
    ...onlyIn(b, a).map((l) => layerLine("added", l)),
    ...onlyIn(a, b).map((l) => layerLine("removed", l)),
    "config: 5 changed",
    col("cmd", '["/bin/hello"] → ["/bin/hello","--loud"]'),
    col("env", 'MODE: "a" → "b"'),
    col("env", 'NEW: (none) → "x"'),
    col("workdir", '(none) → "/srv"'),
    col("label", 'version: "1" → "2"'),
  ];
  assert.equal(r.text, expected.join("\n") + "\n");
  // The layers that changed hold exactly the paths that changed (and the customisation layer).
  const added = onlyIn(b, a).flatMap((l) => l.paths);
  for (const p of [toolB, libB, extra]) assert.ok(added.includes(p), `${p} in an added layer`);
});

test("--json: the documented object", () => {
  const d = JSON.parse(nixociOk(["diff", "--json", `oci:${layout}:a`, `oci:${layout}:b`]).text) as Record<
    string,
    unknown
  >;
  const entry = (l: Report["layers"][number]) => ({
    digest: l.digest,
    mediaType: l.mediaType,
    size: l.size,
    storePaths: [...l.paths].sort(),
  });
  assert.deepEqual(d, {
    from: {
      ref: `oci:${layout}:a`,
      manifest: a.manifestDigest,
      config: (d.from as { config: string }).config,
      platform: "linux/amd64",
    },
    to: {
      ref: `oci:${layout}:b`,
      manifest: b.manifestDigest,
      config: (d.to as { config: string }).config,
      platform: "linux/amd64",
    },
    differ: true,
    storePaths: {
      added: [extra],
      removed: [gone],
      changed: [
        { name: "lib", from: libA, to: libB, fromVersion: "2.0", toVersion: "2.0", rebuilt: true },
        { name: "tool", from: toolA, to: toolB, fromVersion: "1.0", toVersion: "1.1", rebuilt: false },
      ],
      unchanged: 4,
    },
    layers: {
      added: onlyIn(b, a).map(entry),
      removed: onlyIn(a, b).map(entry),
      unchanged: unchangedLayers(),
    },
    config: {
      changes: [
        { field: "cmd", from: ["/bin/hello"], to: ["/bin/hello", "--loud"] },
        { field: "env", key: "MODE", from: "a", to: "b" },
        { field: "env", key: "NEW", from: null, to: "x" },
        { field: "workdir", from: null, to: "/srv" },
        { field: "label", key: "version", from: "1", to: "2" },
      ],
      otherChanges: false,
    },
  });
});

test("the same difference from oci-archive, docker-archive and the registry", { timeout: 120_000 }, () => {
  const body = (args: string[]) => {
    const d = JSON.parse(nixociOk(["diff", "--json", ...args]).text) as Record<string, unknown>;
    return { storePaths: d.storePaths, layers: d.layers, config: d.config, differ: d.differ };
  };
  const want = body([`oci:${layout}:a`, `oci:${layout}:b`]);
  assert.deepEqual(body([`oci-archive:${join(work, "a.tar")}`, `oci-archive:${join(work, "b.tar")}`]), want);
  assert.deepEqual(body([`docker://${registry.host}/app:a`, `docker://${registry.host}/app:b`]), want);
  assert.deepEqual(body([`oci:${layout}:a`, `docker://${registry.host}/app:b`]), want);
  // A docker-archive has no layer annotations: its store paths come from scanning the layers, and agree.
  assert.deepEqual(
    body([`docker-archive:${join(work, "a-docker.tar")}`, `docker-archive:${join(work, "b-docker.tar")}`]),
    want,
  );
  // By digest, too.
  assert.deepEqual(
    body([`docker://${registry.host}/app@${a.manifestDigest}`, `oci-archive:${join(work, "b.tar")}`]),
    want,
  );
});

test("a multi-platform index resolves to --platform, else to this machine's", () => {
  // An arm64 build of hello, and an index tagged multi listing it with image a (amd64).
  const arm = JSON.parse(
    nixociOk(["build", "--json", "-q", "--arch", "arm64", fx.hello, "-o", `oci:${layout}:arm`]).text,
  ) as Report;
  const blob = (d: string): string => join(layout, "blobs/sha256", d.slice(7));
  const entry = (r: Report, architecture: string) => ({
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    digest: r.manifestDigest,
    size: readFileSync(blob(r.manifestDigest)).length,
    platform: { architecture, os: "linux" },
  });
  const index = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [entry(a, "amd64"), entry(arm, "arm64")],
    }),
  );
  const digest = `sha256:${createHash("sha256").update(index).digest("hex")}`;
  writeFileSync(blob(digest), index);
  const top = JSON.parse(readFileSync(join(layout, "index.json"), "utf8")) as { manifests: unknown[] };
  top.manifests.push({
    mediaType: "application/vnd.oci.image.index.v1+json",
    digest,
    size: index.length,
    annotations: { "org.opencontainers.image.ref.name": "multi" },
  });
  writeFileSync(join(layout, "index.json"), JSON.stringify(top));
  const manifests = (args: string[]): [string, string] => {
    const d = JSON.parse(nixociOk(["diff", "--json", ...args]).text) as {
      from: { manifest: string; platform: string };
      to: { manifest: string };
    };
    return [d.from.manifest, d.from.platform];
  };
  assert.deepEqual(manifests([`oci:${layout}:multi`, `oci:${layout}:a`]), [a.manifestDigest, "linux/amd64"]);
  assert.deepEqual(manifests(["--platform", "linux/arm64", `oci:${layout}:multi`, `oci:${layout}:arm`]), [
    arm.manifestDigest,
    "linux/arm64",
  ]);
  // arm64/v8 is arm64 (containerd's and Docker's default variant): the entry without a variant is the one.
  assert.deepEqual(manifests(["--platform", "linux/arm64/v8", `oci:${layout}:multi`, `oci:${layout}:arm`]), [
    arm.manifestDigest,
    "linux/arm64",
  ]);
  // A config field longer than the label column keeps a space before its values.
  assert.match(
    nixociOk(["diff", `oci:${layout}:a`, `oci:${layout}:arm`]).text,
    /^ {2}architecture "amd64" → "arm64"$/m,
  );
});

test("--exit-code: 1 when the images differ, 0 when they do not; 0 without it", () => {
  const same = nixoci(["diff", "--exit-code", `oci:${layout}:a`, `docker://${registry.host}/app:a`]);
  assert.equal(same.status, 0, same.stderr);
  assert.match(same.text, /\nthe images do not differ\n$/);
  assert.match(same.text, /^store paths: 0 added, 0 removed, 0 changed, 7 unchanged$/m);
  assert.equal(nixoci(["diff", "--exit-code", `oci:${layout}:a`, `oci:${layout}:b`]).status, 1);
  assert.equal(nixoci(["diff", `oci:${layout}:a`, `oci:${layout}:b`]).status, 0);
});

/** A copy of the layout whose manifest for `tag` has no layer annotations (an image as another tool writes it). */
function stripAnnotations(src: string, dest: string, tag: string): void {
  cpSync(src, dest, { recursive: true });
  const index = JSON.parse(readFileSync(join(dest, "index.json"), "utf8")) as {
    manifests: { digest: string; size: number; annotations?: Record<string, string> }[];
  };
  const entry = index.manifests.find((m) => m.annotations?.["org.opencontainers.image.ref.name"] === tag)!;
  const blob = (d: string): string => join(dest, "blobs/sha256", d.slice(7));
  const manifest = JSON.parse(readFileSync(blob(entry.digest), "utf8")) as {
    layers: { annotations?: unknown }[];
  };
  for (const l of manifest.layers) delete l.annotations;
  const bytes = Buffer.from(JSON.stringify(manifest));
  entry.digest = `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
  entry.size = bytes.length;
  writeFileSync(blob(entry.digest), bytes);
  writeFileSync(join(dest, "index.json"), JSON.stringify(index));
}

test("a layout without annotations is scanned: same store paths and layers", () => {
  const stripped = join(work, "stripped");
  stripAnnotations(layout, stripped, "a");
  const d = JSON.parse(nixociOk(["diff", "--json", `oci:${layout}:a`, `oci:${stripped}:a`]).text) as {
    differ: boolean;
    storePaths: { unchanged: number; added: string[] };
    layers: { unchanged: number };
  };
  assert.equal(d.differ, false);
  assert.equal(d.storePaths.unchanged, 7);
  assert.equal(d.layers.unchanged, a.layers.length);
  // Against b, the scan finds the same changes the annotations give.
  const viaScan = JSON.parse(nixociOk(["diff", "--json", `oci:${stripped}:a`, `oci:${layout}:b`]).text) as {
    storePaths: unknown;
  };
  const viaAnnotations = JSON.parse(
    nixociOk(["diff", "--json", `oci:${layout}:a`, `oci:${layout}:b`]).text,
  ) as {
    storePaths: unknown;
  };
  assert.deepEqual(viaScan.storePaths, viaAnnotations.storePaths);
});

test(
  "an image umoci made: store paths from its layers, a deletion's whiteout respected",
  { timeout: 120_000 },
  () => {
    const dir = join(work, "umoci");
    const bundle = join(work, "bundle");
    run("umoci", ["init", "--layout", dir]);
    run("umoci", ["new", "--image", `${dir}:base`]);
    run("umoci", ["unpack", "--rootless", "--image", `${dir}:base`, bundle]);
    const store = join(bundle, "rootfs/nix/store");
    mkdirSync(store, { recursive: true });
    for (const p of [toolA, gone]) cpSync(p, join(store, p.slice("/nix/store/".length)), { recursive: true });
    run("umoci", ["repack", "--image", `${dir}:one`, bundle]);
    // The second image is the first plus a layer that deletes gone (a whiteout) and adds extra.
    const bundle2 = join(work, "bundle2");
    run("umoci", ["unpack", "--rootless", "--image", `${dir}:one`, bundle2]);
    const store2 = join(bundle2, "rootfs/nix/store");
    rmSync(join(store2, gone.slice("/nix/store/".length)), { recursive: true, force: true });
    cpSync(extra, join(store2, extra.slice("/nix/store/".length)), { recursive: true });
    run("umoci", ["repack", "--image", `${dir}:two`, bundle2]);
    const d = JSON.parse(nixociOk(["diff", "--json", `oci:${dir}:one`, `oci:${dir}:two`]).text) as {
      storePaths: { added: string[]; removed: string[]; changed: unknown[]; unchanged: number };
      layers: { added: { storePaths: string[] }[]; removed: unknown[] };
    };
    assert.deepEqual(d.storePaths, { added: [extra], removed: [gone], changed: [], unchanged: 1 });
    assert.deepEqual(d.layers.removed, []);
    assert.deepEqual(
      d.layers.added.map((l) => l.storePaths),
      [[extra]],
    );
    // Against the nixoci image: tool 1.0 is in both; the rest of a is not in the umoci image.
    const t = nixociOk(["diff", `oci:${layout}:a`, `oci:${dir}:one`]).text;
    assert.match(t, /^store paths: 0 added, 5 removed, 0 changed, 2 unchanged$/m);
  },
);

/** Runs a diff that must fail: one line on stderr naming `where`, the exit status given, nothing on stdout. */
function fails(args: string[], status: number, message: RegExp): void {
  const r = nixoci(["diff", ...args]);
  assert.equal(r.status, status, r.stderr);
  assert.equal(r.text, "");
  assert.equal(r.stderr.trimEnd().split("\n").length, 1, r.stderr);
  assert.match(r.stderr.trimEnd(), message);
}

test("malformed inputs: one line each, exit 1 (2 for usage)", () => {
  const ok = `oci:${layout}:a`;
  fails([`oci:${join(work, "missing")}`, ok], 1, /^nixoci: oci:.*missing: no such directory$/);
  fails(
    [`oci:${layout}:nope`, ok],
    1,
    /^nixoci: oci:.*:nope: no image tagged "nope" in index\.json \(tags: a, (arm, )?b(, multi)?\)$/,
  );
  fails([`oci:${layout}:b@d`, ok], 1, /invalid tag "b@d"/);
  fails([ok], 2, /^nixoci: missing IMAGE: give two images; run 'nixoci diff --help'/);
  fails([ok, ok, "--platform", "linux"], 2, /--platform: "linux" is not OS\/ARCH/);
  fails(
    [ok, ok, "--platform", "linux/arm64"],
    1,
    /:a: the image is linux\/amd64, not linux\/arm64 \(and not an index/,
  );
  fails(
    [`oci:${layout}:multi`, ok, "--platform", "linux/s390x"],
    1,
    /:multi: no linux\/s390x image in the index \(it has linux\/amd64, linux\/arm64\); choose one with --platform$/,
  );
  const garbage = join(work, "garbage.tar");
  writeFileSync(garbage, Buffer.from("this is not a tar archive at all ".repeat(40)));
  fails(
    [`oci-archive:${garbage}`, ok],
    1,
    /^nixoci: oci-archive:.*garbage\.tar: not a tar archive \(the first header's checksum is wrong\)$/,
  );
  fails(
    [`docker-archive:${join(work, "a.tar")}`, ok],
    1,
    /docker-archive:.*a\.tar: no manifest\.json \(not a docker-archive\)$/,
  );

  // A config blob whose bytes do not match its digest.
  const badConfig = join(work, "bad-config");
  cpSync(layout, badConfig, { recursive: true });
  const index = JSON.parse(readFileSync(join(badConfig, "index.json"), "utf8")) as {
    manifests: { digest: string; annotations: Record<string, string> }[];
  };
  const m = index.manifests.find((x) => x.annotations["org.opencontainers.image.ref.name"] === "a")!;
  const manifest = JSON.parse(readFileSync(join(badConfig, "blobs/sha256", m.digest.slice(7)), "utf8")) as {
    config: { digest: string };
  };
  const cfg = join(badConfig, "blobs/sha256", manifest.config.digest.slice(7));
  const bytes = readFileSync(cfg);
  bytes[bytes.length - 2] ^= 1;
  writeFileSync(cfg, bytes);
  fails([`oci:${badConfig}:a`, ok], 1, /: config sha256:[0-9a-f]{64} does not match its digest$/);

  // A layer blob that does not match: found when the layer is scanned (the stripped layout has to scan it).
  const badLayer = join(work, "bad-layer");
  stripAnnotations(layout, badLayer, "a");
  const layer = join(badLayer, "blobs/sha256", a.layers[0].digest.slice(7));
  const lb = readFileSync(layer);
  lb[20] ^= 0xff;
  writeFileSync(layer, lb);
  fails(
    [`oci:${badLayer}:a`, ok],
    1,
    new RegExp(`^nixoci: oci:.*bad-layer:a: blob ${a.layers[0].digest} does not match its digest$`),
  );
});
