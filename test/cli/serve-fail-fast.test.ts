// `nixoci serve` refuses a configuration it cannot serve before it listens (issue 13, items 8 and 1: a --meta
// naming packages the set lacks, an --arch Nix does not build for), and a build that fails reaches the client as
// the cause in the OCI error body, without the server's own paths (item 5).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { defaultArch } from "../../src/image/spec.js";
import { ROOT } from "../support/cli.js";
import { makeTempDir } from "../support/fixtures.js";
import { nixociAsNobodyArgv, withCheckoutForNobody } from "../support/run.js";
import { startNixociServe } from "../support/serve.js";
import { until } from "../support/poll.js";

/** Runs serve to its end (it must end: a serve that listens instead is killed at 30 s and fails the test). */
function serveExits(args: string[], env: NodeJS.ProcessEnv = {}): { status: number | null; stderr: string } {
  const r = spawnSync(
    process.execPath,
    [join(ROOT, "bin/nixoci.js"), "serve", "--listen", "127.0.0.1:0", ...args],
    { encoding: "utf8", timeout: 30_000, env: { ...process.env, ...env } },
  );
  assert.equal(r.signal, null, `serve should have exited by itself; it logged:\n${r.stderr}`);
  return { status: r.status, stderr: r.stderr };
}

test("a --nix-file that does not exist: one line naming it, exit 1, nothing listening", () => {
  const dir = makeTempDir("serve-fail-fast");
  const missing = join(dir, "missing.nix");
  const r = serveExits(["--storage", join(dir, "storage"), "--nix-file", missing]);
  assert.equal(r.status, 1);
  assert.equal(r.stderr, `nixoci: ${missing}: no such Nix file\n`);
});

test("a --meta naming packages the set lacks: one line naming it, did you mean, the fix; exit 2", () => {
  const dir = makeTempDir("serve-fail-fast-meta");
  const examples = join(ROOT, "examples/packages.nix");
  const serve = (...metas: string[]) =>
    serveExits([
      "--storage",
      join(dir, "storage"),
      "--nix-file",
      examples,
      ...metas.flatMap((m) => ["--meta", m]),
    ]);
  // What scripts/serve-example.sh's --meta used to hide: nixpkgs' bashInteractive is this set's bash.
  assert.deepEqual(serve("shell=bashInteractive,coreutils"), {
    status: 2,
    stderr:
      `nixoci: --meta shell=bashInteractive,coreutils: unknown package "bashInteractive" (did you mean bash?) ` +
      `in nix file ${examples}; give --meta shell=PKG,... with packages it has\n`,
  });
  assert.deepEqual(serve("tools=grep", "dev=bash,corutils,gerp,zzz"), {
    status: 2,
    stderr:
      `nixoci: --meta dev=bash,corutils,gerp,zzz: unknown packages "corutils" (did you mean coreutils?), ` +
      `"gerp" (did you mean grep?), "zzz" in nix file ${examples}; give --meta dev=PKG,... with packages it has\n`,
  });
});

test("an --arch Nix does not build for: one line naming it and what it builds for; exit 2", () => {
  const dir = makeTempDir("serve-fail-fast-arch");
  const examples = join(ROOT, "examples/packages.nix");
  const own = defaultArch();
  const other = own === "amd64" ? "arm64" : "amd64";
  const r = serveExits(["--storage", join(dir, "storage"), "--nix-file", examples, "--arch", other], {
    NIX_CONFIG: "extra-platforms =\nbuilders =",
  });
  assert.deepEqual(r, {
    status: 2,
    stderr:
      `nixoci: --arch ${other}: nix file ${examples} gives no packages for ${other} here (only for ${own}); ` +
      `give one of those (Nix builds for its system, extra-platforms and builders)\n`,
  });
});

test("a --trusted-proxy that is not an address or network: one line naming it, exit 2", () => {
  const dir = makeTempDir("serve-fail-fast-proxy");
  const r = serveExits(["--storage", join(dir, "storage"), "--trusted-proxy", "10.0.0.0/99"]);
  assert.deepEqual(r, {
    status: 2,
    stderr: `nixoci: --trusted-proxy: not an IP address or ADDRESS/BITS network: "10.0.0.0/99"\n`,
  });
});

test("a compression level the layers cannot be made with, or a limit out of range: exit 2 before the storage is made", () => {
  const dir = makeTempDir("serve-fail-fast-levels");
  const storage = join(dir, "storage");
  for (const [args, message] of [
    [
      ["--compression", "zstd", "--compression-level", "30"],
      "--compression-level: 30 is out of range for zstd (1..22)",
    ],
    [["--compression-level", "10"], "--compression-level: 10 is out of range for gzip (0..9)"],
    [
      ["--gzip-encoder", "isal", "--compression-level", "5"],
      "--compression-level: 5 is out of range for ISA-L gzip (0..3)",
    ],
    [
      ["--compression", "none", "--compression-level", "3"],
      "--compression-level: uncompressed layers (--compression none) take no level",
    ],
    [["--max-builds", "0"], "--max-builds"],
  ] as const) {
    const r = serveExits(["--storage", storage, ...args]);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stderr.split("\n").length, 2, `one line: ${r.stderr}`);
    assert.ok(r.stderr.startsWith(`nixoci: ${message}`), r.stderr);
  }
  assert.ok(!existsSync(storage), "nothing made before the refusal");
});

test("two package sources, or a password file or package index that cannot be read: one line, before storage is made", () => {
  const dir = makeTempDir("serve-fail-fast-sources");
  const storage = join(dir, "storage");
  const missing = join(dir, "missing");
  for (const [args, status, line] of [
    [
      ["--nix-file", missing, "--index", missing],
      2,
      "nixoci: give one package source: --nix-file and --index were both given\n",
    ],
    [["--auth", `htpasswd:${missing}`], 1, `nixoci: ${missing}: cannot read (no such file or directory)\n`],
    [
      ["--index", missing],
      1,
      `nixoci: ${missing}: cannot read the package index (no such file or directory)\n`,
    ],
  ] as const) {
    const r = serveExits(["--storage", storage, ...args]);
    assert.deepEqual(r, { status, stderr: line });
  }
});

test("a --storage that cannot be written: one line naming it, exit 1", () => {
  const r = serveExits(["--storage", "/proc/nixoci-nope"]);
  assert.equal(r.status, 1);
  assert.match(
    r.stderr,
    /^nixoci: \/proc\/nixoci-nope: --storage: cannot write here \(no such file or directory\); give a writable directory\n$/,
  );
  const dir = makeTempDir("serve-fail-fast-ro");
  const ro = join(dir, "ro");
  mkdirSync(ro);
  chmodSync(ro, 0o555);
  // As root the mode alone does not stop writes: run it as nobody, as a real unprivileged user would.
  const r2 = withCheckoutForNobody(ROOT, (root) =>
    spawnSync(
      "setpriv",
      nixociAsNobodyArgv(root, ["serve", "--listen", "127.0.0.1:0", "--storage", join(ro, "storage")]),
      { encoding: "utf8", timeout: 30_000 },
    ),
  );
  assert.equal(r2.signal, null, r2.stderr);
  assert.equal(r2.status, 1, r2.stderr);
  assert.match(r2.stderr, /--storage: cannot write here \(permission denied\); give a writable directory\n$/);
});

test("a failed build: 500 with the cause in the error body; the server's paths redacted there and in details", async () => {
  const dir = makeTempDir("serve-build-fails");
  const nixFile = join(dir, "packages.nix");
  writeFileSync(
    nixFile,
    `{
      broken = throw "cannot open /srv/secret/credentials";
      failing = derivation {
        name = "failing"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "exit 1" ];
      };
    }\n`,
  );
  const s = await startNixociServe(join(dir, "storage"), ["--nix-file", nixFile]);
  try {
    const res = await fetch(`http://${s.host}/v2/failing/manifests/latest`);
    assert.equal(res.status, 500);
    const body = (await res.json()) as { errors: Array<{ code: string; message: string }> };
    const { code, message } = body.errors[0];
    assert.equal(code, "UNKNOWN");
    assert.match(
      message,
      /^building the image failing failed: nix file <server path>: build failed .*failing\.drv/,
    );
    assert.ok(!message.includes(dir), `no server path: ${message}`);
    // An attribute that throws is not a package: 404 NAME_UNKNOWN, whose detail names the source without its path.
    const unknown = await fetch(`http://${s.host}/v2/broken/manifests/latest`);
    assert.equal(unknown.status, 404);
    const text = await unknown.text();
    assert.match(text, /"source":"nix file <server path>"/);
    assert.ok(!text.includes(dir), text);
  } finally {
    s.proc.kill("SIGTERM");
    await s.exited;
  }
});

test("SIGTERM with a build no one waits for any more: the build is stopped and the server exits, not when nix finishes", async () => {
  const dir = makeTempDir("serve-stop-builds");
  const nixFile = join(dir, "packages.nix");
  writeFileSync(
    nixFile,
    `{
      slow = derivation {
        name = "slow"; system = builtins.currentSystem; builder = "/bin/busybox";
        args = [ "sh" "-c" "/bin/busybox sleep 300; /bin/busybox mkdir $out" ];
      };
    }\n`,
  );
  const s = await startNixociServe(join(dir, "storage"), ["--nix-file", nixFile]);
  let exited = false;
  try {
    const client = new AbortController();
    const request = fetch(`http://${s.host}/v2/slow/manifests/latest`, { signal: client.signal }).catch(
      () => undefined,
    );
    await until("the build started", 60_000, () => assert.match(s.log(), /"msg":"build-start"/));
    client.abort(); // the client goes away; the build goes on for anyone else who asks
    await request;
    s.proc.kill("SIGTERM");
    const code = await Promise.race([
      s.exited,
      new Promise((r) => setTimeout(r, 60_000, "still running").unref()),
    ]);
    exited = code !== "still running";
    assert.equal(code, 0, `the server exits once its connections are closed:\n${s.log()}`);
    assert.match(s.log(), /"msg":"builds stopped","builds":1/);
  } finally {
    if (!exited) s.proc.kill("SIGKILL");
    await s.exited;
  }
});
