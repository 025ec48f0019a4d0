// Linux images from a machine without Nix (issue 16): in a pristine Debian 12 root with no nix-bin, no /nix and a
// non-root user (scripts/install-no-nix-root.sh; see test/support/no-nix-root.ts), nixoci builds images of real
// store paths substituted from a signed binary cache on loopback, writes them to `oci:` and pushes them to a real
// docker-registry, and serves them on demand from a package index (`serve --index`). The host side checks the
// results with its own tools: skopeo and umoci read them, the store paths in them dump identical to the host's
// (built by the host's nix), and containerd pulls them and runs them. The store commands (substitute, closure,
// path-info, nar, cache push) work there too; what does need nix (-f, serve --nix-file) says so, and a missing
// run-time package (xz-utils) is named.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chownSync, copyFileSync, existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { buildFixtures, makeSignedNixCache, makeTempDir } from "../support/fixtures.js";
import {
  freePort,
  mountsUnder,
  startContainerd,
  startRegistry,
  type Containerd,
  type Registry,
} from "../support/daemons.js";
import { BUILDER, NO_NIX_ROOT, openNoNixRoot, type NoNixRoot } from "../support/no-nix-root.js";
import { GiveUp, until } from "../support/poll.js";
import { nixCopyRequiringSigs, run, runText } from "../support/run.js";

const GREETING = "Hello from nixoci!";
const fx = buildFixtures();
const work = makeTempDir("no-nix");
const closure = runText("nix-store", ["-qR", fx.hello]).split("\n").sort();
const cache = makeSignedNixCache(join(work, "host"), "no-nix-test-1", [fx.hello], "xz");
let root: NoNixRoot;
let cacheServer: ChildProcess | undefined;
let cacheUrl: string;
let registry: Registry;
let containerd: Containerd;
let servePid: number | undefined;

before(async () => {
  // The host's side: the clients and servers scripts/install-test-deps.sh installs (unshare: util-linux).
  for (const tool of ["skopeo", "umoci", "docker-registry", "python3", "unshare"])
    assert.ok(
      spawnSync("sh", ["-c", `command -v ${tool}`]).status === 0,
      `${tool} is not installed: scripts/install-test-deps.sh installs it`,
    );
  root = openNoNixRoot(join(work, "root"));
  [cacheUrl, registry, containerd] = await Promise.all([
    serveCache(cache.dir),
    startRegistry(),
    startContainerd(),
  ]);
});
after(async () => {
  cacheServer?.kill();
  await Promise.allSettled([registry?.stop(), containerd?.stop()]);
});

/** The cache directory over HTTP on 127.0.0.1 (python3's static web server: the root cannot see host files). */
async function serveCache(dir: string): Promise<string> {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  cacheServer = spawn(
    "python3",
    ["-m", "http.server", "--bind", "127.0.0.1", "--directory", dir, String(port)],
    {
      stdio: "ignore",
    },
  );
  const server = cacheServer;
  await until(
    "the cache's web server (python3, scripts/install-test-deps.sh) to answer",
    30_000,
    async () => {
      if (server.exitCode !== null) throw new GiveUp(`python3 -m http.server exited ${server.exitCode}`);
      assert.ok((await fetch(`${url}/nix-cache-info`)).ok, "GET /nix-cache-info failed");
    },
    100,
  );
  return url;
}

/** Every store path of `closure` in `storeRoot` (a rootfs's /nix/store) dumps as the host's does. */
function assertStorePathsIdentical(storeRoot: string, what: string): void {
  assert.deepEqual(readdirSync(storeRoot).sort(), closure.map((p) => p.slice("/nix/store/".length)).sort());
  for (const p of closure)
    assert.ok(
      run("nix-store", ["--dump", join(storeRoot, p.slice("/nix/store/".length))]).equals(
        run("nix-store", ["--dump", p]),
      ),
      `${p} in ${what} dumps as the host's`,
    );
}

/** containerd pulls REF over plain HTTP and runs ARGS in it; the output, trimmed. */
function pullAndRun(ref: string, id: string, args: string[] = []): string {
  containerd.ctr(["images", "pull", "--plain-http", ref]);
  return containerd
    .ctr(["run", "--rm", ref, id, ...args])
    .toString()
    .trim();
}

test("the root has no Nix: no /nix, no nix programs, a non-root user; Node and nixoci run", () => {
  const out = root.sh(`
    echo "uid $(id -u)"; echo "user $(id -un)"
    if [ -e /nix ]; then echo "found /nix"; fi
    for p in nix nix-store nix-build nix-env nix-daemon nix-instantiate; do
      if command -v "$p"; then echo "found $p"; fi
    done
    if dpkg-query -W -f='\${Status}\\n' nix-bin 2>/dev/null | grep -q " installed"; then echo "found nix-bin"; fi
    if getent group nixbld; then echo "found nixbld"; fi
    echo "node $(node --version)"
    echo "nixoci $(nixoci --version)"
  `);
  const lines = out.trim().split("\n");
  assert.deepEqual(
    lines.filter((l) => l.startsWith("found")),
    [],
    "nothing of Nix in the root",
  );
  assert.ok(lines.includes(`uid ${BUILDER.uid}`) && BUILDER.uid !== 0, out);
  assert.ok(lines.includes(`user ${BUILDER.name}`), out);
  assert.ok(lines.includes(`node ${process.version}`), out);
  assert.ok(
    lines.some((l) => /^nixoci .*\d+\.\d+\.\d+/.test(l)),
    out,
  );
});

test("without xz-utils the cache's xz NARs cannot be read: the build fails naming the package", () => {
  // PATH with nothing but node and nixoci: what a machine without the run-time packages of the README has.
  assert.throws(
    () =>
      root.sh(
        `PATH=/usr/local/bin; exec nixoci build -q --store "$HOME/store-without-xz" --substituter "$1" \
          --trusted-public-key "$2" "$3" -o oci:/exchange/never:v1`,
        [cacheUrl, cache.key.publicKey, fx.hello],
      ),
    /cannot run xz \(is Debian's xz-utils package installed\?\)/,
  );
  assert.ok(!existsSync(join(root.exchange, "never")), "no output written");
});

test("nixoci build from a signed cache over HTTP, as the user, to oci: and docker://: the host reads and runs them", () => {
  const ref = `${registry.host}/no-nix/hello:v1`;
  const digest = root
    .sh(
      `exec nixoci build -q --store "$HOME/store" --substituter "$1" --trusted-public-key "$2" \
        --entrypoint /bin/hello "$3" -o oci:/exchange/hello-oci:v1 -o "docker://$4"`,
      [cacheUrl, cache.key.publicKey, fx.hello, ref],
    )
    .trim();
  assert.match(digest, /^sha256:[0-9a-f]{64}$/);

  // oci: skopeo and umoci read the layout; its store paths are the host's, byte for byte.
  const layout = join(root.exchange, "hello-oci");
  assert.equal(JSON.parse(runText("skopeo", ["inspect", `oci:${layout}:v1`])).Digest, digest);
  const bundle = join(work, "bundle");
  run("umoci", ["unpack", "--rootless", "--image", `${layout}:v1`, bundle]);
  assertStorePathsIdentical(join(bundle, "rootfs/nix/store"), "the oci: image");

  // docker://: the registry has the same image, and containerd runs it.
  const remote = JSON.parse(runText("skopeo", ["inspect", "--tls-verify=false", `docker://${ref}`]));
  assert.equal(remote.Digest, digest);
  assert.equal(pullAndRun(ref, "no-nix-build"), GREETING);

  // The paths were substituted into the user's store directory, and no /nix was made.
  const listed = root.sh(`ls "$HOME/store"`).trim().split("\n").sort();
  assert.deepEqual(listed, closure.map((p) => p.slice("/nix/store/".length)).sort());
  assert.ok(!existsSync(join(root.upper, "nix")), "no /nix was made in the root");
});

test("nixoci serve --index, as the user, builds images from the cache on demand: skopeo copies one, containerd runs it", async () => {
  const system = process.arch === "arm64" ? "aarch64-linux" : "x86_64-linux";
  writeFileSync(
    join(root.exchange, "index.json"),
    JSON.stringify({
      revision: "no-nix-1",
      packages: { [system]: { hello: fx.hello, busybox: fx.busybox } },
    }),
  );
  const host = `127.0.0.1:${await freePort()}`;
  // A store of its own: the server substitutes from the cache itself.
  const serve = root.spawn(
    `exec nixoci serve --listen "$1" --storage "$HOME/registry" --store "$HOME/serve-store" --index /exchange/index.json \
      --substituter "$2" --trusted-public-key "$3" --log-format json`,
    [host, cacheUrl, cache.key.publicKey],
  );
  servePid = serve.pid;
  let log = "";
  serve.stderr!.on("data", (d) => (log += d));
  serve.stdout!.resume();
  const exited = new Promise<number | null>((resolve) => serve.once("exit", (code) => resolve(code)));
  try {
    await until(
      "nixoci serve in the root to listen",
      60_000,
      () => {
        if (serve.exitCode !== null) throw new GiveUp(`exited ${serve.exitCode}:\n${log}`);
        assert.ok(log.includes('"msg":"listening"'), "not listening yet");
      },
      100,
    );
    const copied = join(work, "served-oci");
    run("skopeo", ["copy", "--src-tls-verify=false", `docker://${host}/hello:latest`, `oci:${copied}:x`]);
    const bundle = join(work, "served-bundle");
    run("umoci", ["unpack", "--rootless", "--image", `${copied}:x`, bundle]);
    // The served image's store paths are hello's closure (busybox is part of it), as the host has them.
    assertStorePathsIdentical(join(bundle, "rootfs/nix/store"), "the served image");
    assert.equal(pullAndRun(`${host}/hello:latest`, "no-nix-serve", [`${fx.hello}/bin/hello`]), GREETING);
  } finally {
    serve.kill("SIGTERM");
    const code = await exited;
    assert.equal(code, 0, `nixoci serve stopped cleanly:\n${log}`);
  }
  assert.ok(!existsSync(join(root.upper, "nix")), "no /nix was made in the root");
});

test("closure, path-info, substitute, nar, cache push and build -o nix: need no nix; -f and serve --nix-file say they do", () => {
  const sh = (script: string): string => root.sh(script, [cacheUrl, cache.key.publicKey, fx.hello]).trim();
  const trusted = `--store "$1" --trusted-public-key "$2"`;
  assert.deepEqual(sh(`nixoci closure ${trusted} "$3"`).split("\n"), closure);
  const [info] = JSON.parse(sh(`nixoci path-info --json ${trusted} "$3"`)) as {
    narSize: number;
    references: string[];
  }[];
  assert.equal(info.narSize, Number(runText("nix-store", ["-q", "--size", fx.hello])));
  assert.deepEqual(
    info.references.sort(),
    runText("nix-store", ["-q", "--references", fx.hello]).split("\n").sort(),
  );
  assert.equal(
    sh(`nixoci substitute -q --from "$1" --trusted-public-key "$2" --store-dir "$HOME/subst" "$3"`),
    fx.hello,
  );
  for (const p of closure) {
    const substituted = join(root.upper, BUILDER.home, "subst", p.slice("/nix/store/".length));
    assert.ok(
      run("nix-store", ["--dump", substituted]).equals(run("nix-store", ["--dump", p])),
      `${p} substituted`,
    );
  }
  // nar dump is nix-store --dump, byte for byte.
  sh(`nixoci nar dump "$HOME/subst/$(basename "$3")" > /exchange/hello.nar`);
  assert.ok(readFileSync(join(root.exchange, "hello.nar")).equals(run("nix-store", ["--dump", fx.hello])));
  // A signed cache of the user's store, which the host's Nix copies requiring signatures by the key.
  copyFileSync(cache.key.secretKeyFile, join(root.exchange, "key.sec"));
  chownSync(join(root.exchange, "key.sec"), BUILDER.uid, BUILDER.uid);
  sh(
    `nixoci cache push -q --store "$HOME/subst" --sign-key /exchange/key.sec --to file:///exchange/pushed "$3"`,
  );
  const nixRoot = join(work, "nix-copy");
  nixCopyRequiringSigs(`file://${join(root.exchange, "pushed")}`, nixRoot, cache.key.publicKey, [fx.hello]);
  for (const p of closure)
    assert.ok(
      run("nix-store", ["--dump", join(nixRoot, p)]).equals(run("nix-store", ["--dump", p])),
      `${p} via nix copy`,
    );
  assert.match(
    sh(`nixoci build -q --store "$HOME/subst" --entrypoint /bin/hello "$3" -o nix:hello`),
    /\/nix\/store\/\S+-hello$/m,
  );
  writeFileSync(join(root.exchange, "packages.nix"), "{ }\n");
  assert.throws(
    () => sh(`nixoci build -q --store "$HOME/subst" -f /exchange/packages.nix -A hello -o oci:/tmp/never`),
    /nix-build is not installed \(-f needs the nix binary\)/,
  );
  assert.throws(
    () => sh(`nixoci serve --nix-file /exchange/packages.nix --store "$HOME/subst" --storage "$HOME/never"`),
    /nix-instantiate is not installed/,
  );
});

test("nothing is left: no mount under the test's directory or of the cached root, the server's process gone", () => {
  assert.deepEqual(mountsUnder(work), []);
  const mountinfo = readFileSync("/proc/self/mountinfo", "utf8");
  assert.ok(!mountinfo.includes(NO_NIX_ROOT), "no mount of the cached root in this namespace");
  assert.ok(servePid, "the serve test ran");
  assert.throws(() => process.kill(servePid!, 0), /ESRCH/, "nixoci serve's process is gone");
});
