// Binary caches made by the real Nix (`nix copy --to file://...`, each compression, signed) are read and
// verified by nixoci, over file:// and over HTTP; caches nixoci writes are accepted by Nix with signature
// checking on; substitution into a store directory reproduces the exact NARs.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import {
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { addNotUtf8Path, buildFixtures, bytes, generateCacheKey, makeNixCache } from "../support/fixtures.js";
import { run, runText, nixCmd, nixCopyRequiringSigs } from "../support/run.js";
import { nixoci, nixociOk, type CliResult } from "../support/cli.js";
import { freePort } from "../support/daemons.js";
import { until } from "../support/poll.js";

const fx = buildFixtures();
const closure = runText("nix-store", ["-qR", fx.all]).split("\n").sort();
const work = mkdtempSync(join(tmpdir(), "nixoci-cache-test-"));
const key = generateCacheKey("test-cache-1", work);
const otherKey = generateCacheKey("other-cache-1", work);
after(() => {
  run("chmod", ["-R", "u+w", work]);
  rmSync(work, { recursive: true, force: true });
});

// What `cache push` offers; reading is also tested with br (Nix writes it, slowly).
const COMPRESSIONS = ["xz", "zstd", "bzip2", "none"] as const;

/** `nixoci substitute` of `paths` from `url` into the store directory `dest`, trusting the test cache's key. */
function substituteTrusting(url: string, dest: string, ...paths: string[]): CliResult {
  return nixoci([
    "substitute",
    "--from",
    url,
    "--trusted-public-key",
    key.publicKey,
    "--store-dir",
    dest,
    ...paths,
  ]);
}

function dumpEquals(realDir: string, path: string): boolean {
  const restored = join(realDir, path.slice("/nix/store/".length));
  return run("nix-store", ["--dump", restored]).equals(run("nix-store", ["--dump", path]));
}

for (const compression of [...COMPRESSIONS, "br"] as const) {
  test(`reads and verifies a signed ${compression} cache written by nix copy`, () => {
    const dir = join(work, `nix-${compression}`);
    const url = makeNixCache({ paths: [fx.all], dir, compression, secretKeyFile: key.secretKeyFile });
    const trust = ["--trusted-public-key", key.publicKey];

    assert.equal(nixociOk(["closure", "--store", url, ...trust, fx.all]).text, closure.join("\n") + "\n");
    const infos = JSON.parse(nixociOk(["path-info", "--json", "--store", url, ...trust, ...closure]).text);
    const local = JSON.parse(nixociOk(["path-info", "--json", ...closure]).text);
    for (const [i, info] of infos.entries()) {
      assert.equal(info.narHash, local[i].narHash);
      assert.equal(info.narSize, local[i].narSize);
      assert.deepEqual(info.references, local[i].references);
      assert.equal(info.compression, compression);
    }

    const storeDir = join(work, `store-${compression}`);
    const r = nixociOk(["substitute", "--from", url, ...trust, "--store-dir", storeDir, fx.all]);
    assert.equal(r.text, fx.all + "\n");
    for (const path of closure) assert.ok(dumpEquals(storeDir, path), `${path} restored from ${compression}`);
    assert.deepEqual(
      readdirSync(storeDir).filter((n) => n.startsWith(".") && n !== ".nixoci"),
      [],
    );
    // Everything is present now: a second run copies nothing.
    const again = nixociOk(["substitute", "--from", url, ...trust, "--store-dir", storeDir, fx.all]);
    assert.match(again.stderr, /0 paths copied/);
    // The substituted directory is itself a store nixoci can read.
    assert.equal(nixociOk(["closure", "--store", storeDir, fx.all]).text, closure.join("\n") + "\n");
  });
}

test("signatures are checked by default: untrusted or missing keys fail, --no-check-sigs allows", () => {
  const url = makeNixCache({
    paths: [fx.hello],
    dir: join(work, "signed"),
    compression: "xz",
    secretKeyFile: key.secretKeyFile,
  });
  const unsignedUrl = makeNixCache({ paths: [fx.hello], dir: join(work, "unsigned"), compression: "xz" });
  const dest = join(work, "sig-store");
  let r = nixoci([
    "substitute",
    "--from",
    url,
    "--trusted-public-key",
    otherKey.publicKey,
    "--store-dir",
    dest,
    fx.hello,
  ]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /narinfo.*(signature|trusted)/);
  r = nixoci([
    "substitute",
    "--from",
    unsignedUrl,
    "--trusted-public-key",
    key.publicKey,
    "--store-dir",
    dest,
    fx.hello,
  ]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /signature/);
  assert.ok(!existsSync(join(dest, fx.hello.slice(11))), "nothing substituted from an untrusted cache");
  nixociOk(["substitute", "--from", unsignedUrl, "--no-check-sigs", "--store-dir", dest, fx.hello]);
  assert.ok(dumpEquals(dest, fx.hello));
});

test("a content-addressed path (fixed:r:sha256) needs no signature; its name must follow from its NarHash", () => {
  const src = join(work, "ca-src");
  run("mkdir", ["-p", join(src, "sub")]);
  writeFileSync(join(src, "sub", "file"), `content-addressed ${Math.random()}\n`);
  const caPath = runText("nix-store", ["--add-fixed", "--recursive", "sha256", src]);
  const dir = join(work, "ca-cache");
  const url = makeNixCache({ paths: [caPath], dir, compression: "xz" });
  const narinfo = join(dir, `${caPath.slice(11, 43)}.narinfo`);
  assert.match(readFileSync(narinfo, "utf8"), /^CA: fixed:r:sha256:/m);
  assert.doesNotMatch(readFileSync(narinfo, "utf8"), /^Sig:/m);
  const dest = join(work, "ca-store");
  nixociOk(["substitute", "--from", url, "--trusted-public-key", key.publicKey, "--store-dir", dest, caPath]);
  assert.ok(dumpEquals(dest, caPath));
  // A CA claim that does not match the path is no excuse for a missing signature.
  writeFileSync(
    narinfo,
    readFileSync(narinfo, "utf8").replace(
      /^CA: fixed:r:sha256:.*$/m,
      "CA: fixed:r:sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
    ),
  );
  const r = nixoci(["path-info", "--store", url, "--trusted-public-key", key.publicKey, caPath]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /signature/);
  run("nix-store", ["--delete", caPath]);
});

test("flat and text content-addressed paths need no signature either; their one file must have the claimed hash", () => {
  const file = join(work, "flat-src.txt");
  writeFileSync(file, `flat ${Math.random()}\n`);
  const flat = runText("nix-store", ["--add-fixed", "sha256", file]);
  const drv = runText("nix-instantiate", [
    "-E",
    `derivation { name = "text-ca-${Math.random().toString(36).slice(2)}"; system = builtins.currentSystem; builder = "/bin/sh"; }`,
  ]);
  const dir = join(work, "flat-cache");
  const url = makeNixCache({ paths: [flat], dir, compression: "none" });
  nixCmd(["copy", "--derivation", "--to", `${url}?compression=none`, drv]); // the .drv itself, not its build
  const narinfoOf = (p: string) => join(dir, `${p.slice(11, 43)}.narinfo`);
  assert.match(readFileSync(narinfoOf(flat), "utf8"), /^CA: fixed:sha256:/m);
  assert.match(readFileSync(narinfoOf(drv), "utf8"), /^CA: text:sha256:/m);
  const substitute = (dest: string, ...paths: string[]) => substituteTrusting(url, dest, ...paths);
  const dest = join(work, "flat-store");
  const ok = substitute(dest, flat, drv);
  assert.equal(ok.status, 0, ok.stderr);
  assert.ok(dumpEquals(dest, flat));
  assert.ok(dumpEquals(dest, drv));

  // Another file's NAR under the flat path's narinfo, its NarHash and sizes made to match: refused, nothing added.
  const other = join(work, "flat-other.txt");
  writeFileSync(other, "not the flat file\n");
  const otherNar = run("nix-store", ["--dump", other]);
  const narinfo = readFileSync(narinfoOf(flat), "utf8");
  const narUrl = /^URL: (.*)$/m.exec(narinfo)![1];
  writeFileSync(join(dir, narUrl), otherNar);
  const narHash = `sha256:${runText("nix-hash", ["--type", "sha256", "--flat", "--base32", join(dir, narUrl)])}`;
  writeFileSync(
    narinfoOf(flat),
    narinfo
      .replace(/^NarHash: .*$/m, `NarHash: ${narHash}`)
      .replace(/^FileHash: .*$/m, `FileHash: ${narHash}`)
      .replace(/^NarSize: .*$/m, `NarSize: ${otherNar.length}`)
      .replace(/^FileSize: .*$/m, `FileSize: ${otherNar.length}`),
  );
  const dest2 = join(work, "flat-store-2");
  const r = substitute(dest2, flat);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /the file's sha256 is not the one its content address names/);
  assert.ok(!existsSync(join(dest2, flat.slice(11))));
  run("nix-store", ["--delete", flat, drv]);
});

/** `nixoci cache push --to file://DIR --sign-key KEY ARGS...`: how these tests write a signed cache of ours. */
function pushSigned(dir: string, args: string[]): CliResult {
  return nixociOk(["cache", "push", "--to", `file://${dir}`, "--sign-key", key.secretKeyFile, ...args]);
}

test("cache URLs: Nix's ?priority= and ?want-mass-query= are read, other parameters refused, not dropped", () => {
  const dir = mkdtempSync(join(tmpdir(), "nixoci-cache-params-"));
  try {
    pushSigned(dir, [fx.hello]);
    // Read through a URL with parameters (the cache is the directory without them).
    const info = JSON.parse(
      nixociOk([
        "path-info",
        "--json",
        "--store",
        `file://${dir}?priority=10&want-mass-query=true`,
        "--trusted-public-key",
        key.publicKey,
        fx.hello,
      ]).text,
    ) as unknown;
    assert.ok(JSON.stringify(info).includes(fx.hello));
    for (const [url, message] of [
      [`file://${dir}/typo`, /typo: no such directory$/m],
      [`file://${dir}?trusted=1`, /unknown store URL parameter "trusted"/],
      [`file://${dir}?priority=high`, /priority="high" is not a non-negative integer/],
    ] as const) {
      const r = nixoci(["path-info", "--store", url, "--trusted-public-key", key.publicKey, fx.hello]);
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, message);
    }
    // Written: ?secret-key= and ?compression= are Nix's; here they are flags, and a dropped key is no signature.
    for (const param of ["secret-key=/k.sec", "compression=zstd"]) {
      const target = join(dir, "other");
      const r = nixoci(["cache", "push", "--to", `file://${target}?${param}`, fx.hello]);
      assert.equal(r.status, 1, r.stderr);
      assert.match(r.stderr, /unknown store URL parameter .*give --compression and --sign-key instead/);
      assert.ok(!existsSync(target), "nothing written");
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("cache push refuses a cache of another store directory (its nix-cache-info's StoreDir)", () => {
  const dir = mkdtempSync(join(tmpdir(), "nixoci-cache-gnu-"));
  try {
    writeFileSync(join(dir, "nix-cache-info"), "StoreDir: /gnu/store\nWantMassQuery: 1\nPriority: 40\n");
    const r = nixoci(["cache", "push", "--to", `file://${dir}`, "--sign-key", key.secretKeyFile, fx.hello]);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /nix-cache-info: the cache is for store \/gnu\/store, not \/nix\/store/);
    assert.deepEqual(
      readdirSync(dir).filter((n) => n.endsWith(".narinfo")),
      [],
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** `nix store verify -r` of fx.all's closure in the cache at DIR, trusting only `publicKey`: Nix's own check. */
function nixVerifyAll(dir: string, publicKey: string): void {
  nixCmd([
    "store",
    "verify",
    "--store",
    `file://${dir}`,
    "--option",
    "trusted-public-keys",
    publicKey,
    "-r",
    fx.all,
  ]);
}

test("nix copy --from accepts a cache nixoci wrote, with signature checking on", () => {
  for (const compression of COMPRESSIONS) {
    const dir = join(work, `ours-${compression}`);
    pushSigned(dir, ["--compression", compression, fx.all]);
    const narinfos = readdirSync(dir).filter((n) => n.endsWith(".narinfo"));
    assert.equal(narinfos.length, closure.length);
    // Nix checks every signature and every NAR's hash against its narinfo.
    nixVerifyAll(dir, key.publicKey);
    // And copies the closure into a fresh chroot store, requiring signatures.
    const root = join(work, `nixroot-${compression}`);
    nixCopyRequiringSigs(`file://${dir}`, root, key.publicKey, [fx.all]);
    for (const path of closure)
      assert.ok(dumpEquals(join(root, "nix/store"), path), `${path} via nix copy (${compression})`);
    // A second push skips everything.
    const again = pushSigned(dir, [fx.all]);
    assert.match(again.stderr, /pushed 0 paths/);
  }
});

test("nix store verify rejects our cache under a key it does not trust (the check can fail)", () => {
  const dir = join(work, "ours-xz");
  assert.throws(() => nixVerifyAll(dir, otherKey.publicKey));
});

async function serveDirectory(dir: string): Promise<{ url: string; proc: ChildProcess }> {
  const port = await freePort();
  const proc = spawn(
    "python3",
    ["-m", "http.server", "--bind", "127.0.0.1", "--directory", dir, String(port)],
    {
      stdio: "ignore",
    },
  );
  const url = `http://127.0.0.1:${port}`;
  try {
    await until(
      "the http server to answer",
      30_000,
      async () => assert.ok((await fetch(`${url}/nix-cache-info`)).ok, "GET /nix-cache-info failed"),
      100,
    );
  } catch (err) {
    proc.kill();
    throw err;
  }
  return { url, proc };
}

test("reads a binary cache over HTTP (a real static web server)", async () => {
  const dir = join(work, "http-cache");
  makeNixCache({ paths: [fx.all], dir, compression: "zstd", secretKeyFile: key.secretKeyFile });
  const { url, proc } = await serveDirectory(dir);
  try {
    const trust = ["--trusted-public-key", key.publicKey];
    const res = await runAsync(["closure", "--store", url, ...trust, fx.all]);
    assert.equal(res.text, closure.join("\n") + "\n");
    const dest = join(work, "http-store");
    await runAsync(["substitute", "--from", url, ...trust, "--store-dir", dest, fx.all]);
    for (const path of closure) assert.ok(dumpEquals(dest, path));
    const missing = await runAsync(
      ["path-info", "--store", url, ...trust, "/nix/store/00000000000000000000000000000000-absent"],
      1,
    );
    assert.match(missing.stderr, /not valid/);
  } finally {
    proc.kill();
  }
});

/** The CLI without blocking the event loop (the HTTP server is a child of this process). */
function runAsync(args: string[], expectStatus = 0): Promise<{ text: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [
      join(import.meta.dirname ?? "", "../../../bin/nixoci.js"),
      ...args,
    ]);
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => (out += d));
    child.stderr.on("data", (d) => (err += d));
    child.on("close", (code) =>
      code === expectStatus ? resolve({ text: out, stderr: err }) : reject(new Error(`exit ${code}: ${err}`)),
    );
  });
}

test("substitutes into the real Nix store and registers the paths so Nix sees them valid", () => {
  // A fresh path (random nonce) that references a fixture, cached by nix, then deleted from the store.
  const nonce = Math.random().toString(36).slice(2);
  const expr = `derivation { name = "subst-victim"; nonce = "${nonce}"; system = builtins.currentSystem;
    builder = "/bin/sh"; args = ["-c" "echo \${builtins.storePath "${fx.busybox}"}/bin/sh > $out"]; }`;
  const victim = runText("nix-build", ["--no-out-link", "-E", expr]);
  const expectedHash = runText("nix-store", ["-q", "--hash", victim]);
  const dir = join(work, "victim-cache");
  const url = makeNixCache({ paths: [victim], dir, compression: "xz", secretKeyFile: key.secretKeyFile });
  run("nix-store", ["--delete", victim]);
  assert.ok(!existsSync(victim));
  nixociOk(["substitute", "--from", url, "--trusted-public-key", key.publicKey, victim]);
  // Nix itself now considers it valid, with the right hash and references, and its contents verify.
  run("nix-store", ["--check-validity", victim]);
  assert.equal(runText("nix-store", ["-q", "--hash", victim]), expectedHash);
  assert.equal(runText("nix-store", ["-q", "--references", victim]), fx.busybox);
  run("nix-store", ["--verify-path", victim]);
  assert.equal(readFileSync(victim, "utf8"), `${fx.busybox}/bin/sh\n`);
  run("nix-store", ["--delete", victim]);
});

test("a path whose names and symlink targets are not UTF-8: substituted byte for byte, listed, imaged (as Nix keeps them)", () => {
  const at = bytes;
  const path = addNotUtf8Path(work);
  const dir = join(work, "not-utf8-cache");
  const url = makeNixCache({ paths: [path], dir, compression: "xz", secretKeyFile: key.secretKeyFile });
  const storeDir = join(work, "not-utf8-store");
  const r = substituteTrusting(url, storeDir, path);
  assert.equal(r.status, 0, r.stderr);
  assert.ok(dumpEquals(storeDir, path));
  const restored = join(storeDir, path.slice("/nix/store/".length));
  assert.deepEqual(
    readlinkSync(at(restored, "/link-", [0xe9]), { encoding: "buffer" }),
    at("caf", [0xe9], "/na", [0xef, 0x76, 0x65]),
  );
  // `nar ls` of the NAR lists the names as Nix's .ls does: as their bytes.
  const narFile = join(work, "not-utf8.nar");
  writeFileSync(narFile, run("nix-store", ["--dump", path]));
  const listing = nixociOk(["nar", "ls", narFile]).stdout;
  assert.ok(
    listing.includes(at('"na', [0xef, 0x76, 0x65], '":{"type":"regular","size":8,')),
    listing.toString("latin1"),
  );
  assert.ok(listing.includes(at('"target":"caf', [0xe9], "/na", [0xef, 0x76, 0x65], '"')));
  // An image of the path: its top-level names get links of the same bytes (umoci unpacks them so).
  const layout = join(work, "not-utf8-layout");
  nixociOk(["build", "-q", "--cache-dir", join(work, "not-utf8-layers"), path, "-o", `oci:${layout}:x`]);
  const bundle = join(work, "not-utf8-bundle");
  run("umoci", ["unpack", "--rootless", "--image", `${layout}:x`, bundle]);
  const rootfs = join(bundle, "rootfs");
  assert.deepEqual(
    readlinkSync(at(rootfs, "/caf", [0xe9]), { encoding: "buffer" }),
    at(path, "/caf", [0xe9]),
  );
  assert.equal(
    readFileSync(at(rootfs, path, "/caf", [0xe9], "/na", [0xef, 0x76, 0x65]), "utf8"),
    "latin-1\n",
  );
  assert.deepEqual(
    readlinkSync(at(rootfs, "/link-", [0xe9]), { encoding: "buffer" }),
    at(path, "/link-", [0xe9]),
  );
});

/** The pids of `pid` and its descendants (from /proc). */
function processTree(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    const tasks = `/proc/${out[i]}/task`;
    if (!existsSync(tasks)) continue;
    for (const t of readdirSync(tasks)) {
      const children = readFileSync(`${tasks}/${t}/children`, "utf8").trim();
      if (children) out.push(...children.split(/\s+/).map(Number));
    }
  }
  return out;
}

/** Whether any of the processes has `file` open. */
function holdsOpen(pids: number[], file: string): boolean {
  return pids.some((pid) => {
    try {
      return readdirSync(`/proc/${pid}/fd`).some((fd) => {
        try {
          return readlinkSync(`/proc/${pid}/fd/${fd}`) === file;
        } catch {
          return false;
        }
      });
    } catch {
      return false;
    }
  });
}

test("substitute into the real Nix store waits on Nix's lock on the path instead of replacing what Nix is writing", async () => {
  const nonce = Math.random().toString(36).slice(2);
  const expr = `derivation { name = "subst-locked"; nonce = "${nonce}"; system = builtins.currentSystem;
    builder = "/bin/sh"; args = ["-c" "echo locked > $out"]; }`;
  const victim = runText("nix-build", ["--no-out-link", "-E", expr]);
  const url = makeNixCache({
    paths: [victim],
    dir: join(work, "locked-cache"),
    compression: "none",
    secretKeyFile: key.secretKeyFile,
  });
  run("nix-store", ["--delete", victim]);
  // As Nix substituting it: the lock on <path>.lock held (flock(2), as Nix takes it), the path half-written.
  const lockFile = `${victim}.lock`;
  const nix = spawn("flock", ["--exclusive", lockFile, "sleep", "600"], { stdio: "ignore", detached: true });
  const letGo = () => {
    try {
      process.kill(-nix.pid!, "SIGKILL"); // flock and its sleep, which shares the lock
    } catch {
      // gone already
    }
  };
  try {
    await until("the test holds the lock", 10_000, () =>
      assert.equal(spawnSync("flock", ["--nonblock", lockFile, "true"]).status, 1),
    );
    writeFileSync(victim, "half");
    const sub = spawn(process.execPath, [
      join(import.meta.dirname ?? "", "../../../bin/nixoci.js"),
      "substitute",
      "-q",
      "--from",
      url,
      "--trusted-public-key",
      key.publicKey,
      victim,
    ]);
    let stderr = "";
    sub.stderr.on("data", (d) => (stderr += d));
    const exited = new Promise<number | null>((resolve) => sub.on("close", resolve));
    // It waits on the lock (a process of its tree has the lock file open), Nix's file untouched.
    await until("substitute waits on Nix's lock", 30_000, () => {
      assert.equal(sub.exitCode, null, `substitute ended without waiting: ${stderr}`);
      assert.ok(holdsOpen(processTree(sub.pid!), lockFile));
    });
    assert.equal(readFileSync(victim, "utf8"), "half");
    assert.equal(spawnSync("nix-store", ["--check-validity", victim]).status, 1);
    // Nix gives up (removes its partial path) and lets go: substitute takes its turn and adds the path.
    rmSync(victim);
    letGo();
    assert.equal(await exited, 0, stderr);
    run("nix-store", ["--verify-path", victim]);
    assert.equal(readFileSync(victim, "utf8"), "locked\n");
    assert.ok(!existsSync(lockFile), "the lock file is removed, as Nix removes it");
  } finally {
    letGo();
    spawnSync("nix-store", ["--delete", victim]);
  }
});

test("cache push removes what killed pushes left (temporaries of dead pids), and nothing of a live one", () => {
  const dir = mkdtempSync(join(tmpdir(), "nixoci-push-leftovers-"));
  try {
    pushSigned(dir, [fx.hello]);
    // A pid that no longer runs, and this test's own (alive).
    const dead = spawnSync(process.execPath, ["-e", "0"]).pid!;
    const leftovers = [
      join(dir, "nar", `.upload.tmp-${dead}-0123456789ab`),
      join(dir, `.x.narinfo.tmp-${dead}-0123456789ab`),
    ];
    const live = join(dir, "nar", `.upload.tmp-${process.pid}-0123456789ab`);
    for (const f of [...leftovers, live]) writeFileSync(f, "partial");
    pushSigned(dir, [fx.hello]);
    for (const f of leftovers) assert.ok(!existsSync(f), `${f} removed`);
    assert.ok(existsSync(live), "a live writer's temporary kept");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("substitute takes a result symlink for the path it points to, whether it exists here or not", () => {
  const dir = mkdtempSync(join(tmpdir(), "nixoci-subst-link-"));
  try {
    const cache = join(dir, "cache");
    pushSigned(cache, [fx.hello]);
    // A link to a path this machine has, and one whose target is gone here (as on a machine that never built it).
    symlinkSync(fx.hello, join(dir, "result"));
    const gone = fx.hello.replace(/-[^/]*$/, "-gone-here");
    symlinkSync(gone, join(dir, "result-gone"));
    const storeDir = join(dir, "store");
    const substitute = (link: string) =>
      nixoci(
        [
          "substitute",
          "-q",
          "--from",
          `file://${cache}`,
          "--trusted-public-key",
          key.publicKey,
          "--store-dir",
          storeDir,
          link,
        ],
        { cwd: dir },
      );
    const r = substitute("./result");
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.text, `${fx.hello}\n`);
    const missing = substitute("./result-gone");
    assert.equal(missing.status, 1);
    assert.match(
      missing.stderr,
      new RegExp(`${gone.replace(/[/.]/g, "\\$&")}`),
      "the link's target is what was looked for",
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
