// nixoci build against the real tools: images of a real Nix closure run under containerd + runc and dockerd,
// every output is read by skopeo/umoci, pushes interoperate with docker-registry, builds are deterministic
// and incremental (only changed layers are built), and bad input leaves no partial output.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { NIX_CLOSURE_ROOT_ANNOTATION, storePathsFromAnnotations } from "../../src/image/annotations.js";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  lstatSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { spawnSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { mkdtempSync } from "node:fs";
import {
  buildFixtures,
  generateCacheKey,
  makeNixCache,
  makeTempDir,
  PACKAGES_NIX,
} from "../support/fixtures.js";
import { nixociAsNobodyArgv, run, runText, withCheckoutForNobody } from "../support/run.js";
import { nixoci, nixociOk, ROOT } from "../support/cli.js";
import {
  startContainerd,
  startDockerd,
  startRegistry,
  type Containerd,
  type Dockerd,
  type Registry,
} from "../support/daemons.js";

const fx = buildFixtures();
const work = mkdtempSync(join(tmpdir(), "nixoci-build-test-"));
const cacheDir = join(work, "cache");
const GREETING = "Hello from nixoci!";
let registry: Registry;
let containerd: Containerd;
let dockerd: Dockerd;

before(async () => {
  [registry, containerd, dockerd] = await Promise.all([startRegistry(), startContainerd(), startDockerd()]);
});
after(async () => {
  await Promise.allSettled([registry?.stop(), containerd?.stop(), dockerd?.stop()]);
  run("chmod", ["-R", "u+w", work]);
  rmSync(work, { recursive: true, force: true });
});

interface Summary {
  manifestDigest: string;
  layers: {
    digest: string;
    diffId: string;
    size: number;
    paths: string[];
    status: string;
    uploaded: boolean;
  }[];
  outputs: { output: string; uploaded?: string[]; skipped?: string[] }[];
}

function build(args: string[], opts: { cache?: string; env?: NodeJS.ProcessEnv } = {}): Summary {
  const r = nixociOk(["build", "--json", "-q", "--cache-dir", opts.cache ?? cacheDir, ...args], {
    env: opts.env,
  });
  return JSON.parse(r.text) as Summary;
}

const helloArgs = ["--entrypoint", "/bin/hello", fx.hello];

test("an OCI layout of hello: skopeo and umoci read it; the rootfs is exactly the closure plus the farm", () => {
  const layout = join(work, "layout");
  const s = build([...helloArgs, "--output", `oci:${layout}:v1`]);
  assert.match(s.manifestDigest, /^sha256:[0-9a-f]{64}$/);
  const inspect = JSON.parse(runText("skopeo", ["inspect", `oci:${layout}:v1`]));
  assert.equal(inspect.Digest, s.manifestDigest);
  assert.equal(inspect.Layers.length, s.layers.length);

  const bundle = join(work, "bundle");
  run("umoci", ["unpack", "--rootless", "--image", `${layout}:v1`, bundle]);
  const rootfs = join(bundle, "rootfs");
  const closure = runText("nix-store", ["-qR", fx.hello]).split("\n").sort();
  assert.deepEqual(readdirSync(join(rootfs, "nix/store")).sort(), closure.map((p) => p.slice(11)).sort());
  for (const p of closure) {
    assert.ok(
      run("nix-store", ["--dump", join(rootfs, p)]).equals(run("nix-store", ["--dump", p])),
      `${p} intact in the image`,
    );
  }
  // The symlink farm: /bin points into hello's bin (a directory only hello has at top level... or merged).
  const bin = join(rootfs, "bin");
  const binHello = lstatSync(bin).isSymbolicLink()
    ? join(readlinkSync(bin), "hello")
    : readlinkSync(join(bin, "hello"));
  assert.ok(binHello.startsWith(fx.hello), `/bin/hello -> ${binHello}`);
  assert.equal((lstatSync(join(rootfs, "tmp")).mode & 0o7777).toString(8), "1777");
  assert.match(readFileSync(join(rootfs, "etc/passwd"), "utf8"), /^root:x:0:0:/);
  // Every store layer names its paths in annotations, as nix-snapshotter reads them, and the image's roots
  // (whose closure holds them: a node's GC root links those).
  const manifest = JSON.parse(readFileSync(join(layout, "blobs/sha256", s.manifestDigest.slice(7)), "utf8"));
  const layers = manifest.layers as { annotations?: Record<string, string> }[];
  const annotated = layers.flatMap((l) => storePathsFromAnnotations(l.annotations ?? {}));
  assert.deepEqual(annotated.sort(), closure);
  for (const l of layers.filter((x) => x.annotations))
    assert.deepEqual(storePathsFromAnnotations(l.annotations!, NIX_CLOSURE_ROOT_ANNOTATION), [fx.hello]);
});

test("runs under containerd + runc (oci-archive import) and dockerd (docker-archive on stdout)", () => {
  const archive = join(work, "hello.oci.tar");
  build([...helloArgs, "-o", `oci-archive:${archive}:latest`]);
  containerd.ctr(["images", "import", "--base-name", "nixoci/hello", "--digests", archive]);
  const images = containerd.ctr(["images", "ls", "-q"]).toString().trim().split("\n");
  const ref = images.find((i) => i.startsWith("nixoci/hello"))!;
  assert.ok(ref, `imported: ${images.join(",")}`);
  const out = containerd.ctr(["run", "--rm", ref, "hello-ctr"]).toString();
  assert.equal(out.trim(), GREETING);

  const stream = nixociOk([
    "build",
    "-q",
    "--cache-dir",
    cacheDir,
    ...helloArgs,
    "--tag",
    "nixoci-hello:test",
    "-",
  ]).stdout;
  dockerd.docker(["load"], { input: stream });
  assert.equal(
    dockerd.docker(["run", "--rm", "--network", "none", "nixoci-hello:test"]).toString().trim(),
    GREETING,
  );
});

test("an oci-archive of an image named with --tag carries its full name: ctr import names it so", () => {
  const archive = join(work, "named.oci.tar");
  build([...helloArgs, "--tag", "nixoci/named-archive:v7", "-o", `oci-archive:${archive}`]);
  const index = JSON.parse(runText("tar", ["-xOf", archive, "index.json"])) as {
    manifests: Array<{ annotations?: Record<string, string> }>;
  };
  assert.deepEqual(index.manifests[0].annotations, {
    "io.containerd.image.name": "docker.io/nixoci/named-archive:v7",
    "org.opencontainers.image.ref.name": "v7",
  });
  containerd.ctr(["images", "import", archive]);
  assert.equal(
    containerd.ctr(["run", "--rm", "docker.io/nixoci/named-archive:v7", "hello-named"]).toString().trim(),
    GREETING,
  );
  // Without --tag only the tag is recorded (ctr import --base-name names it, as before).
  const plain = join(work, "plain.oci.tar");
  build([...helloArgs, "-o", `oci-archive:${plain}:v8`]);
  const plainIndex = JSON.parse(runText("tar", ["-xOf", plain, "index.json"])) as typeof index;
  assert.deepEqual(plainIndex.manifests[0].annotations, { "org.opencontainers.image.ref.name": "v8" });
});

test("push to docker-registry; ctr pulls it back and runs it; skopeo copies it; a second push uploads nothing", () => {
  const ref = `${registry.host}/nixoci/hello:v1`;
  const first = build([...helloArgs, "-o", `docker://${ref}`]);
  assert.ok(first.outputs[0].uploaded!.length > 0);
  containerd.ctr(["images", "pull", "--plain-http", ref]);
  assert.equal(containerd.ctr(["run", "--rm", ref, "hello-pulled"]).toString().trim(), GREETING);
  const copied = join(work, "copied");
  run("skopeo", ["copy", "--src-tls-verify=false", `docker://${ref}`, `oci:${copied}:x`]);
  assert.equal(JSON.parse(runText("skopeo", ["inspect", `oci:${copied}:x`])).Digest, first.manifestDigest);
  const second = build([...helloArgs, "-o", `docker://${ref}`]);
  assert.equal(second.manifestDigest, first.manifestDigest);
  assert.deepEqual(second.outputs[0].uploaded, []);
  assert.ok(second.layers.every((l) => l.status === "reused"));
});

test("a rebuild that finds every layer cached loads no code that makes layers, substitutes or writes NARs", () => {
  // The modules each build loaded, recorded by a module hook (test/support/module-trace.ts), with the compiled
  // modules run one by one (the bundle bin/nixoci.js runs keeps the same lazy imports: their modules' code runs on
  // first use, and the npm packages they require are loaded then).
  const traced = (name: string): string[] => {
    const trace = join(work, `modules-${name}.txt`);
    const s = build([...helloArgs, "-o", `oci:${join(work, `lazy-${name}`)}:x`], {
      cache: join(work, "cache-lazy"),
      env: {
        NODE_OPTIONS: `--import=${join(ROOT, "dist/test/support/module-trace.js")}`,
        NIXOCI_TEST_MODULE_TRACE: trace,
        NIXOCI_NO_BUNDLE: "1",
      },
    });
    assert.equal(
      s.layers.some((l) => l.status === "built"),
      name === "cold",
    );
    return readFileSync(trace, "utf8")
      .split("\n")
      .filter((u) => u.includes("/dist/src/"))
      .map((u) => u.replace(/^.*\/dist\/src\//, ""));
  };
  const layerMaking = [
    "image/layer-factory.js",
    "image/layer-builder.js",
    "util/compressor-batch.js",
    "util/compression.js",
    "util/tool-launcher.js",
  ];
  const cold = traced("cold");
  for (const m of [...layerMaking, "image/build.js"]) assert.ok(cold.includes(m), `a cold build loads ${m}`);
  const cached = traced("cached");
  assert.ok(cached.includes("image/build.js"), "the trace holds the build's modules");
  for (const m of [...layerMaking, "store/substituter.js", "nix/nar-writer.js", "store/nar-verify.js"])
    assert.ok(!cached.includes(m), `a cached rebuild does not load ${m}`);
});

test("deterministic: other cache dirs, parallelism and layering runs give identical digests", () => {
  const a = build(["-j", "1", ...helloArgs, fx.tree], { cache: join(work, "cache-a") });
  const b = build(["-j", "4", ...helloArgs, fx.tree], { cache: join(work, "cache-b") });
  assert.equal(a.manifestDigest, b.manifestDigest);
  assert.deepEqual(
    a.layers.map((l) => l.digest),
    b.layers.map((l) => l.digest),
  );
  const c = nixociOk(["build", "--no-cache", "--json", "-q", ...helloArgs, fx.tree]);
  assert.equal(JSON.parse(c.text).manifestDigest, a.manifestDigest);
});

test("after one package changes, only the layers holding changed paths are built", () => {
  const base = build(["--max-layers", "20", "--entrypoint", "/bin/hello", fx.all]);
  const changedHello = runText("nix-build", [
    "--no-out-link",
    PACKAGES_NIX,
    "-A",
    "hello",
    "--argstr",
    "greetingText",
    "Changed!",
  ]);
  const changedGreeting = runText("nix-store", ["-q", "--references", changedHello])
    .split("\n")
    .find((p) => p.endsWith("-greeting"))!;
  const next = build(["--max-layers", "20", "--entrypoint", "/bin/hello", changedHello, fx.all]);
  const built = next.layers.filter((l) => l.status === "built");
  const builtPaths = built.flatMap((l) => l.paths);
  assert.ok(
    builtPaths.includes(changedHello) && builtPaths.includes(changedGreeting),
    "changed paths are in built layers",
  );
  const baseDigests = new Set(base.layers.map((l) => l.digest));
  for (const l of next.layers.filter((x) => x.status === "reused")) assert.ok(baseDigests.has(l.digest));
  // Unchanged store paths that shared no layer with changed ones were not re-tarred.
  assert.ok(
    next.layers.filter((l) => l.status === "reused").length >= base.layers.length - 3,
    JSON.stringify(built.map((l) => l.paths)),
  );
});

test("--tar-format: each header format has its own layers in the cache, each reused by its own rebuild", () => {
  const cache = join(work, "tar-format-cache");
  const standard = build(helloArgs, { cache });
  const docker20 = build(["--tar-format", "docker20", ...helloArgs], { cache });
  assert.ok(docker20.layers.every((l) => l.status === "built"));
  assert.equal(docker20.layers.length, standard.layers.length);
  for (const [i, l] of docker20.layers.entries()) {
    assert.notEqual(l.diffId, standard.layers[i].diffId);
    assert.deepEqual(l.paths, standard.layers[i].paths);
  }
  for (const [args, first] of [
    [helloArgs, standard],
    [["--tar-format", "docker20", ...helloArgs], docker20],
  ] as const) {
    const again = build([...args], { cache });
    assert.ok(again.layers.every((l) => l.status === "reused"));
    assert.equal(again.manifestDigest, first.manifestDigest);
  }
  // A spec's tarFormat is the flag's.
  const spec = join(work, "tar-format.json");
  writeFileSync(spec, JSON.stringify({ tarFormat: "docker20", entrypoint: ["/bin/hello"] }));
  assert.equal(build(["--spec", spec, fx.hello], { cache }).manifestDigest, docker20.manifestDigest);
  writeFileSync(spec, JSON.stringify({ tarFormat: "pax" }));
  const r = nixoci(["build", "--spec", spec, fx.hello, "--json"]);
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /tar-format\.json: tarFormat "pax" is not one of standard, docker20\n/);
});

test("bad input: clear errors, non-zero exit, no partial output", () => {
  const out = join(work, "bad-out");
  mkdirSync(out, { recursive: true });
  const specFile = join(work, "bad.yaml");
  writeFileSync(specFile, "entrypoint: [/bin/hello\nbogus: 1\n");
  const unknownKey = join(work, "unknown.json");
  writeFileSync(unknownKey, JSON.stringify({ entrypiont: ["/bin/hello"] }));
  const cases: [string[], RegExp][] = [
    [
      ["/nix/store/00000000000000000000000000000000-missing", "-o", `oci:${out}/a`],
      /00000000000000000000000000000000-missing/,
    ],
    [["--spec", specFile, fx.hello, "-o", `oci:${out}/b`], /bad\.yaml/],
    [
      ["--spec", unknownKey, fx.hello, "-o", `oci:${out}/c`],
      /unknown\.json: unknown key "entrypiont" \(did you mean entrypoint\?\)\n/,
    ],
    [[fx.hello, "-o", "nonsense:foo"], /nonsense:foo/],
    [[fx.hello, "-o", "docker://"], /docker:\/\//],
    [[fx.hello, "-o", `docker://${registry.host}/UPPER/case:x`], /UPPER/],
    [[fx.hello, "--env", "NOEQUALS", "-o", `oci:${out}/d`], /NOEQUALS/],
    [[fx.hello, "--created", "yesterday", "-o", `oci:${out}/e`], /yesterday/],
    [[fx.hello, "--layering", "random", "-o", `oci:${out}/f`], /layering/],
    [[fx.hello, "-o", `docker://127.0.0.1:1/nixoci/hello:x`], /127\.0\.0\.1:1/],
    [[fx.hello, "--compression", "lzma", "-o", `oci:${out}/g`], /compression/],
    [[fx.hello, "--max-layers", "1", "-o", `oci:${out}/h`], /max-layers/],
    [
      [fx.hello, "--tar-format", "gnu", "-o", `oci:${out}/h`],
      /--tar-format "gnu" is not one of standard, docker20/,
    ],
    [
      [fx.hello, "--tag", "Bad Name", "-o", `oci:${out}/i`],
      /tag "Bad Name" is not \[HOST\[:PORT\]\/\]NAME\[:TAG\]/,
    ],
    [[fx.hello, "--tag", "ok/name:bad tag", "-o", `oci:${out}/i`], /tag "ok\/name:bad tag"/],
    [[fx.hello, "--arch", "foo", "-o", `oci:${out}/j`], /architecture "foo" is not one of amd64, arm64/],
    [["--no-cache", fx.hello, "-o", `oci:${out}/k`], /--no-cache and --cache-dir contradict each other/],
    [[fx.hello, "-o", "-", "-o", "-"], /^nixoci: standard output \(-o -\) is given more than once\n$/],
    [
      [fx.hello, "-o", `oci:${out}/l`, "-o", `oci:${out}/l`],
      /^nixoci: -o oci:\S+\/l is given more than once\n$/,
    ],
  ];
  for (const [args, pattern] of cases) {
    const r = nixoci(["build", "--cache-dir", cacheDir, ...args]);
    assert.notEqual(r.status, 0, `nixoci build ${args.join(" ")} should fail`);
    assert.match(r.stderr, pattern, `nixoci build ${args.join(" ")}: ${r.stderr}`);
    assert.ok(!/\n\s+at /.test(r.stderr), `no stack trace: ${r.stderr}`);
  }
  assert.deepEqual(readdirSync(out), [], "no partial outputs");
});

test("a malformed flag value is a usage error (exit 2) naming the flag, before any work", () => {
  const cache = makeTempDir("build-bad-flag-values");
  const out = makeTempDir("build-bad-flag-values-out");
  for (const [args, line] of [
    [
      ["--created", "2024-02-30T00:00:00Z"],
      '--created: created "2024-02-30T00:00:00Z" is not an RFC 3339 time',
    ],
    [["--env", "NOEQUALS"], '--env: env entry "NOEQUALS" is not NAME=VALUE'],
    [["--expose", "99999"], '--expose: exposed port "99999" is not PORT[/tcp|udp|sctp]'],
    [["--label", "=v"], '--label: "=v" is not KEY=VALUE'],
    [["--user", "a:b:c"], '--user: user "a:b:c" is not NAME[:GROUP] or UID[:GID]'],
    [["--entrypoint", '["x'], '--entrypoint: malformed JSON array "[\\"x"'],
    [["--trusted-public-key", "garbage"], '--trusted-public-key: public key is not "<name>:<base64>"'],
    // Numbers are digits: Number() would take these.
    [["--compression-level", "1e1"], '--compression-level must be an integer >= 0, got "1e1"'],
    [["--max-layers", "0x10"], '--max-layers must be an integer >= 2, got "0x10"'],
    // A value forgotten before the next option; an encoder of gzip for layers that are not gzip.
    [
      ["--compression-level", "--json"],
      "option --compression-level needs a value (the next argument is an option; write --compression-level=VALUE for a value starting with \"-\"); run 'nixoci build --help' for its options",
    ],
    [["--gzip-encoder", "isal", "--compression", "zstd"], "--gzip-encoder: zstd layers are not gzip"],
    [["--gzip-encoder", "zlib", "--compression", "none"], "--gzip-encoder: uncompressed layers are not gzip"],
  ] as const) {
    const r = nixoci(["build", "--cache-dir", cache, ...args, fx.hello, "-o", `oci:${out}/x`]);
    assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.equal(r.stderr, `nixoci: ${line}\n`);
  }
  assert.deepEqual(readdirSync(cache), [], "no layer was built");
  assert.deepEqual(readdirSync(out), [], "no output");
});

test("a compression level off its compression's scale is a usage error before any work", () => {
  const cache = makeTempDir("build-bad-level");
  const out = makeTempDir("build-bad-level-out");
  for (const [args, message] of [
    [["--compression", "zstd", "--compression-level", "23"], "23 is out of range for zstd (1..22)"],
    [["--compression", "zstd", "--compression-level", "0"], "0 is out of range for zstd (1..22)"],
    [["--compression-level", "10"], "10 is out of range for gzip (0..9)"],
    [
      ["--compression", "none", "--compression-level", "5"],
      "uncompressed layers (--compression none) take no level",
    ],
  ] as const) {
    const r = nixoci(["build", "--cache-dir", cache, ...args, fx.hello, "-o", `oci:${out}/x`]);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stderr, `nixoci: --compression-level: ${message}\n`);
  }
  assert.deepEqual(readdirSync(cache), [], "no layer was built");
  assert.deepEqual(readdirSync(out), [], "no output");
});

test("a spec's compressionLevel off its scale or with compression none is named as the spec's key, before any work", () => {
  const cache = makeTempDir("build-bad-spec-level");
  const out = makeTempDir("build-bad-spec-level-out");
  for (const [spec, message] of [
    [
      { compression: "none", compressionLevel: 5 },
      "compressionLevel: uncompressed layers (compression: none) take no level",
    ],
    [{ compression: "zstd", compressionLevel: 50 }, "compressionLevel: 50 is out of range for zstd (1..22)"],
  ] as const) {
    const file = join(out, "spec.json");
    writeFileSync(file, JSON.stringify({ packages: [fx.hello], ...spec }));
    const r = nixoci(["build", "--cache-dir", cache, "--spec", file, "-o", `oci:${out}/x`]);
    assert.equal(r.status, 1, r.stderr);
    assert.equal(r.stderr, `nixoci: ${file}: ${message}\n`);
  }
  // The command line's compression overrides the spec's, and its level with it.
  const file = join(out, "spec.json");
  writeFileSync(file, JSON.stringify({ packages: [fx.hello], compression: "zstd", compressionLevel: 19 }));
  assert.equal(
    nixoci(["build", "--cache-dir", cache, "--spec", file, "--compression", "none", "-o", `oci:${out}/y`])
      .status,
    0,
  );
  assert.deepEqual(readdirSync(out).sort(), ["spec.json", "y"]);
});

test("a docker-archive of zstd layers says that Docker before 23 cannot load it (20.10 fails to); of gzip layers nothing", () => {
  const cache = makeTempDir("build-zstd-archive");
  const out = makeTempDir("build-zstd-archive-out");
  // A path of its own beside hello: dockerd skips the layers it already has (earlier tests loaded hello's), and
  // would then "load" a zstd archive without reading a byte of it.
  const own = join(out, "own");
  mkdirSync(own);
  writeFileSync(join(own, "nonce"), `${process.pid} ${Date.now()} ${Math.random()}\n`);
  const ownPath = runText("nix-store", ["--add", own]);
  const note = (compression: string): string[] => {
    const file = join(out, `${compression}.tar`);
    const r = nixoci([
      "build",
      "--cache-dir",
      cache,
      "--compression",
      compression,
      fx.hello,
      ownPath,
      "--entrypoint",
      "/bin/hello",
      "-o",
      `docker-archive:${file}:nixoci-hello:${compression}`,
    ]);
    assert.equal(r.status, 0, r.stderr);
    return r.stderr.split("\n").filter((l) => l.startsWith("note:"));
  };
  assert.deepEqual(note("zstd"), [
    `note: docker-archive:${join(out, "zstd.tar")}:nixoci-hello:zstd has zstd layers: docker load before Docker 23 cannot read them`,
  ]);
  assert.deepEqual(note("gzip"), []);
  // The note's claim, on Debian's dockerd 20.10.24: the zstd archive is refused (its own layer cannot be read), the
  // gzip one loads and runs.
  assert.throws(
    () => dockerd.docker(["load", "-i", join(out, "zstd.tar")]),
    /Error processing tar file|invalid tar header|unexpected EOF/,
  );
  dockerd.docker(["load", "-i", join(out, "gzip.tar")]);
  assert.equal(
    dockerd.docker(["run", "--rm", "--network", "none", "nixoci-hello:gzip"]).toString().trim(),
    GREETING,
  );
});

test("no -o and no --json: a usage error naming the choices, before any work, nothing on stdout", () => {
  const cache = makeTempDir("build-no-output");
  const r = nixoci(["build", "--cache-dir", cache, fx.hello]);
  assert.equal(r.status, 2, r.stderr);
  assert.equal(r.text, "", "nothing on stdout");
  assert.equal(
    r.stderr,
    "nixoci: no output given: add -o DEST (oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:NAME:TAG], " +
      "docker://HOST/NAME[:TAG], nix:[NAME], or - for a docker-archive on stdout), or --json to build into the layer " +
      "cache and print the report; run 'nixoci build --help' for its options\n",
  );
  assert.deepEqual(readdirSync(cache), [], "no layer was built");
  // --json alone is the explicit cache fill: it builds and reports.
  const report = JSON.parse(nixociOk(["build", "--json", "-q", "--cache-dir", cache, fx.hello]).text) as {
    layers: unknown[];
    outputs: unknown[];
  };
  assert.ok(report.layers.length > 0);
  assert.deepEqual(report.outputs, []);
});

test("-o - on a terminal is refused (a pty from script(1)); tags with a registry host and port are accepted", () => {
  const cmd = [
    process.execPath,
    join(ROOT, "bin/nixoci.js"),
    "build",
    "--cache-dir",
    cacheDir,
    fx.hello,
    "-o",
    "-",
  ];
  // The command line is ours (test paths without quotes); script(1) runs it with stdout on a pseudo-terminal.
  const r = spawnSync("script", ["-qec", cmd.map((a) => `'${a}'`).join(" "), "/dev/null"], {
    encoding: "utf8",
  });
  assert.equal(r.status, 2, r.stdout + r.stderr);
  assert.match(r.stdout, /refusing to write a docker-archive to a terminal: redirect stdout/);
  const dir = makeTempDir("build-tags");
  for (const tag of ["localhost:5000/team/app:v1", "registry.example:443/x", "plain", "a/b/c:1.0-rc_1"])
    nixociOk([
      "build",
      "-q",
      "--cache-dir",
      cacheDir,
      "--tag",
      tag,
      fx.hello,
      "-o",
      `oci:${dir}/${tag.length}`,
    ]);
});

test("destinations and the layer cache are checked before any work; nothing on stdout when it fails", () => {
  const cache = makeTempDir("build-preflight");
  const dir = makeTempDir("build-preflight-out");
  const cases: Array<[string[], string]> = [
    [
      ["--cache-dir", cache, fx.hello, "-o", `oci-archive:${dir}/missing/x.tar`],
      `nixoci: oci-archive:${dir}/missing/x.tar: the directory ${dir}/missing does not exist; create it first or choose another path`,
    ],
    [
      ["--cache-dir", cache, fx.hello, "-o", "docker://127.0.0.1:1/nixoci/hello:x"],
      "nixoci: 127.0.0.1:1/nixoci/hello: registry check failed: connect ECONNREFUSED 127.0.0.1:1",
    ],
    [
      ["--cache-dir", "/proc/nixoci-cache", fx.hello, "-o", `oci:${dir}/layout`],
      "nixoci: /proc/nixoci-cache: cannot write the layer cache here (no such file or directory); give --cache-dir DIR (a writable directory) or --no-cache",
    ],
  ];
  for (const [args, line] of cases) {
    const r = nixoci(["build", ...args]);
    assert.equal(r.status, 1, r.stderr);
    assert.equal(r.text, "", "nothing on stdout");
    assert.equal(r.stderr, `${line}\n`);
  }
  assert.deepEqual(readdirSync(cache), [], "no layer was built");
  assert.deepEqual(readdirSync(dir), [], "nothing written");
  // -o nix: as a user who cannot write the store: the store and the fix are named (setpriv: nobody).
  const r = withCheckoutForNobody(ROOT, (root) =>
    spawnSync("setpriv", nixociAsNobodyArgv(root, ["build", "--no-cache", fx.hello, "-o", "nix:"]), {
      encoding: "utf8",
    }),
  );
  assert.equal(r.status, 1, r.stderr);
  assert.equal(r.stdout, "");
  assert.equal(
    r.stderr,
    "nixoci: nix:: cannot write to the store /nix/store (permission denied): nix: outputs go into the store; run as its owner (root) or give --store DIR\n",
  );
});

test("paths missing locally come from --substituter caches (signed); unsigned or unreachable caches fail", () => {
  const nonce = Math.random().toString(36).slice(2);
  const expr = `derivation { name = "build-victim"; nonce = "${nonce}"; system = builtins.currentSystem;
    builder = "/bin/sh"; args = ["-c" "export PATH=/bin:/usr/bin; mkdir -p $out/bin; printf '#!\${builtins.storePath "${fx.busybox}"}/bin/sh\\necho substituted\\n' > $out/bin/victim; chmod +x $out/bin/victim"]; }`;
  const victim = runText("nix-build", ["--no-out-link", "-E", expr]);
  const key = generateCacheKey("build-test-1", work);
  const signed = makeNixCache({
    paths: [victim],
    dir: join(work, "victim-signed"),
    compression: "zstd",
    secretKeyFile: key.secretKeyFile,
  });
  const unsigned = makeNixCache({ paths: [victim], dir: join(work, "victim-unsigned"), compression: "xz" });
  run("nix-store", ["--delete", victim]);
  const out = join(work, "victim-out");
  const trust = ["--trusted-public-key", key.publicKey];
  const attempts: [string[], RegExp][] = [
    [[], /build-victim.*not valid.*--substituter/],
    [["--substituter", unsigned, ...trust], /signature/],
    [["--substituter", "http://127.0.0.1:1", ...trust], /127\.0\.0\.1:1/],
  ];
  for (const [extra, pattern] of attempts) {
    const r = nixoci([
      "build",
      "--cache-dir",
      cacheDir,
      ...extra,
      "--entrypoint",
      "/bin/victim",
      victim,
      "-o",
      `oci:${out}:x`,
    ]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, pattern);
    assert.ok(!existsSync(out), "no output written");
    assert.ok(!existsSync(victim), "nothing substituted");
  }
  const s = build([
    "--substituter",
    signed,
    ...trust,
    "--entrypoint",
    "/bin/victim",
    victim,
    "-o",
    `oci-archive:${out}.tar`,
  ]);
  assert.ok(s.layers.some((l) => l.paths.includes(victim)));
  containerd.ctr(["images", "import", "--base-name", "nixoci/victim", "--digests", `${out}.tar`]);
  const ref = containerd
    .ctr(["images", "ls", "-q"])
    .toString()
    .trim()
    .split("\n")
    .find((i) => i.startsWith("nixoci/victim"))!;
  assert.equal(containerd.ctr(["run", "--rm", ref, "victim"]).toString().trim(), "substituted");
  run("nix-store", ["--delete", victim]);
});
