// NixEvalResolver against the real nix: a Nix file (packages.nix), a nixpkgs-like git checkout (pinned commits
// through builtins.fetchGit, offline), a local path: flake; unknown names, revisions, the system argument, and
// killing nix on abort and timeout.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { defaultArch } from "../../src/image/spec.js";
import { hashNixSources, NixEvalResolver, runProcess } from "../../src/resolve/nix-eval.js";
import { nixSystems } from "../../src/resolve/nix-systems.js";
import { RevisionUnavailableError, UnknownPackageError } from "../../src/resolve/resolver.js";
import { NixociError } from "../../src/util/errors.js";
import { buildFixtures, makeTempDir, PACKAGES_NIX } from "../support/fixtures.js";
import { GiveUp, until } from "../support/poll.js";
import { runText } from "../support/run.js";

const fx = buildFixtures();
const work = makeTempDir("nix-eval");

function git(dir: string, ...args: string[]): string {
  return runText("git", ["-C", dir, "-c", "user.email=t@example.org", "-c", "user.name=t", ...args]);
}

test("resolves attributes of a Nix file to the store paths nix-build gives", async () => {
  const r = new NixEvalResolver({ nixFile: PACKAGES_NIX });
  const revision = await r.currentRevision();
  assert.match(revision, /^[0-9a-f]{20}$/);
  assert.equal(await r.servesRevision(revision), true);
  assert.equal(await r.servesRevision("0123456789abcdef0123"), false);
  const paths = await r.resolve(["hello", "busybox", "hello"], { revision, arch: "amd64" });
  assert.deepEqual(paths.sort(), [fx.busybox, fx.hello].sort());
  // Cached existence answers: a second resolve gives the same.
  assert.deepEqual((await r.resolve(["busybox"], { revision, arch: "amd64" })).sort(), [fx.busybox]);
});

test("unknown attributes (and attributes that are not derivations) are all named", async () => {
  const dir = join(work, "nonpkg");
  mkdirSync(dir, { recursive: true });
  const file = join(dir, "pkgs.nix");
  writeFileSync(
    file,
    `let p = import ${PACKAGES_NIX} { }; in p // { lib = { x = 1; }; notAnything = 3; broken = throw "gone"; nested = { hello = p.hello; }; }\n`,
  );
  const r = new NixEvalResolver({ nixFile: file });
  const revision = await r.currentRevision();
  await assert.rejects(
    r.resolve(["hello", "nope", "lib", "notAnything", "broken", "zz-missing", "Bad Name!"], {
      revision,
      arch: "amd64",
    }),
    (err: unknown) => {
      assert.ok(err instanceof UnknownPackageError);
      assert.deepEqual(err.packages, ["Bad Name!", "broken", "lib", "nope", "notAnything", "zz-missing"]);
      assert.match(err.message, /unknown packages: .*nope/);
      return true;
    },
  );
  // Attribute paths reach nested packages.
  assert.deepEqual(await r.resolve(["nested.hello"], { revision, arch: "amd64" }), [fx.hello]);
  await assert.rejects(
    r.resolve(["nested.nope"], { revision, arch: "amd64" }),
    (e: unknown) => e instanceof UnknownPackageError && e.packages[0] === "nested.nope",
  );
});

test("the revision follows the file and the files it imports by relative path", async () => {
  const dir = join(work, "revs");
  mkdirSync(join(dir, "lib"), { recursive: true });
  copyFileSync(PACKAGES_NIX, join(dir, "lib", "packages.nix"));
  writeFileSync(join(dir, "lib", "default.nix"), "import ./packages.nix\n");
  writeFileSync(join(dir, "default.nix"), "{ system ? null }: import ./lib { }\n");
  const r = new NixEvalResolver({ nixFile: dir, revisionCacheMs: 0 });
  const r1 = await r.currentRevision();
  assert.equal(r1, await hashNixSources(join(dir, "default.nix")));
  assert.deepEqual(await r.resolve(["greeting"], { revision: r1, arch: "amd64" }), [fx.greeting]);

  // An imported file changes: a new revision, and the old one is no longer served.
  const pkgs = readFileSync(join(dir, "lib", "packages.nix"), "utf8");
  writeFileSync(join(dir, "lib", "packages.nix"), pkgs.replace("Hello from nixoci!", "Changed greeting"));
  const r2 = await r.currentRevision();
  assert.notEqual(r2, r1);
  assert.equal(await r.servesRevision(r1), false);
  await assert.rejects(r.resolve(["greeting"], { revision: r1, arch: "amd64" }), RevisionUnavailableError);
  const [changed] = await r.resolve(["greeting"], { revision: r2, arch: "amd64" });
  assert.notEqual(changed, fx.greeting);
  assert.equal(readFileSync(join(changed, "share/greeting.txt"), "utf8"), "Changed greeting\n");

  // The top file itself changes.
  writeFileSync(join(dir, "default.nix"), "{ system ? null }: import ./lib { } # edited\n");
  assert.notEqual(await r.currentRevision(), r2);
});

test("a function of system is called with the architecture's Nix system", async () => {
  const file = join(work, "system.nix");
  writeFileSync(
    file,
    `{ system ? "unset", other ? "x" }: {
       which = derivation { name = "which-system-\${builtins.substring 0 6 (builtins.hashString "sha256" "${Math.random()}")}";
         inherit system; builder = "/bin/sh"; args = [ "-c" "echo \${system} > $out" ]; };
     }\n`,
  );
  const r = new NixEvalResolver({ nixFile: file });
  const revision = await r.currentRevision();
  const [p] = await r.resolve(["which"], { revision, arch: "amd64" });
  assert.equal(readFileSync(p, "utf8"), "x86_64-linux\n");
  // arm64 asks for aarch64-linux: the attribute exists, but this machine cannot build it.
  await assert.rejects(r.resolve(["which"], { revision, arch: "arm64" }), (err: unknown) => {
    assert.ok(err instanceof NixociError && !(err instanceof UnknownPackageError));
    assert.match(err.message, /build failed.*aarch64-linux/);
    return true;
  });
  await assert.rejects(r.resolve(["which"], { revision, arch: "mips" }), /no Nix system/);
});

test("a nixpkgs git checkout: latest is HEAD, any commit can be pinned (fetchGit, offline)", async () => {
  const dir = join(work, "nixpkgs");
  mkdirSync(dir, { recursive: true });
  git(dir, "init", "-q");
  copyFileSync(PACKAGES_NIX, join(dir, "default.nix"));
  git(dir, "add", ".");
  git(dir, "commit", "-qm", "one");
  const first = git(dir, "rev-parse", "HEAD");
  writeFileSync(
    join(dir, "default.nix"),
    readFileSync(PACKAGES_NIX, "utf8").replace("Hello from nixoci!", "Second commit"),
  );
  git(dir, "commit", "-qam", "two");
  const second = git(dir, "rev-parse", "HEAD");

  const r = new NixEvalResolver({ nixpkgs: dir, revisionCacheMs: 0 });
  assert.equal(await r.currentRevision(), second);
  assert.equal(await r.servesRevision(first), true);
  assert.equal(await r.servesRevision("f".repeat(40)), false);
  assert.equal(await r.servesRevision("latest"), false);
  const [pinned] = await r.resolve(["greeting"], { revision: first, arch: "amd64" });
  assert.equal(pinned, fx.greeting);
  const [head] = await r.resolve(["greeting"], { revision: second, arch: "amd64" });
  assert.equal(readFileSync(join(head, "share/greeting.txt"), "utf8"), "Second commit\n");
  await assert.rejects(
    r.resolve(["greeting"], { revision: "f".repeat(40), arch: "amd64" }),
    RevisionUnavailableError,
  );
  // Uncommitted changes are not part of any revision.
  writeFileSync(join(dir, "default.nix"), 'throw "uncommitted"\n');
  assert.deepEqual(await r.resolve(["greeting"], { revision: second, arch: "amd64" }), [head]);
});

test("a tree without git uses .git-revision, and says so when it has none", async () => {
  const dir = join(work, "channel");
  mkdirSync(dir, { recursive: true });
  copyFileSync(PACKAGES_NIX, join(dir, "default.nix"));
  const r = new NixEvalResolver({ nixpkgs: dir, revisionCacheMs: 0 });
  await assert.rejects(r.currentRevision(), /neither a git checkout nor a tree with a \.git-revision/);
  writeFileSync(join(dir, ".git-revision"), "abc123def\n");
  assert.equal(await r.currentRevision(), "abc123def");
  assert.deepEqual(await r.resolve(["hello"], { revision: "abc123def", arch: "amd64" }), [fx.hello]);
});

test("a local path: flake: packages.<system>, revision from its NAR hash", async () => {
  const dir = join(work, "flake");
  mkdirSync(dir, { recursive: true });
  copyFileSync(PACKAGES_NIX, join(dir, "packages.nix"));
  writeFileSync(
    join(dir, "flake.nix"),
    `{ outputs = { self }: { packages.x86_64-linux = import ./packages.nix { }; }; }\n`,
  );
  const r = new NixEvalResolver({ flake: `path:${dir}`, revisionCacheMs: 0 });
  const revision = await r.currentRevision();
  assert.match(revision, /^nar-[0-9a-f]{32}$/);
  assert.deepEqual(await r.resolve(["hello"], { revision, arch: "amd64" }), [fx.hello]);
  await assert.rejects(
    r.resolve(["hello", "nope"], { revision, arch: "amd64" }),
    (e: unknown) => e instanceof UnknownPackageError && e.packages.join() === "nope",
  );
  // arm64 has no packages in this flake.
  await assert.rejects(
    r.resolve(["hello"], { revision, arch: "arm64" }),
    (e: unknown) => e instanceof UnknownPackageError,
  );
  writeFileSync(join(dir, "flake.nix"), readFileSync(join(dir, "flake.nix"), "utf8") + "# changed\n");
  assert.notEqual(await r.currentRevision(), revision);
});

/**
 * A package whose build sleeps 90-99 s: `/bin/sleep SECONDS`, with SECONDS unique to this call (fractional), so
 * that its builder is told apart from any other (another test run's) by its command line.
 */
function slowFile(): { nixFile: string; builder: string } {
  const nixFile = join(work, `slow-${Math.random().toString(36).slice(2)}.nix`);
  const builder = `/bin/sleep ${(90 + Math.random() * 9).toFixed(4)}`;
  writeFileSync(
    nixFile,
    `{ slow = derivation { name = "slow"; nonce = "${Math.random()}"; system = builtins.currentSystem;
       builder = "/bin/sh"; args = [ "-c" "${builder}; echo > $out" ]; }; }\n`,
  );
  return { nixFile, builder };
}

/** The pids of running processes whose command line is `builder`, as pgrep prints them ("" for none). */
function running(builder: string): string {
  try {
    return execFileSync("pgrep", ["-f", `^${builder.replace(/\./g, "\\.")}$`])
      .toString()
      .trim();
  } catch {
    return "";
  }
}

// The builders sleep 90 s or more; the tests' timeouts (60 s) are the liveness bounds: an abort or a time limit
// that did not stop the build would wait for it. (How soon they stop is measured in bench/limits.ts.)
test("an abort kills nix and its builder promptly", { timeout: 60_000 }, async () => {
  const slow = slowFile();
  const r = new NixEvalResolver({ nixFile: slow.nixFile });
  const revision = await r.currentRevision();
  const controller = new AbortController();
  const resolving = r.resolve(["slow"], { revision, arch: "amd64", signal: controller.signal });
  let settled = false;
  resolving.then(
    () => (settled = true),
    () => (settled = true),
  );
  // Abort while the build runs: once nix has started the builder.
  await until(
    "nix to start the builder",
    40_000,
    () => {
      if (settled) throw new GiveUp("the resolution ended before the build started");
      assert.notEqual(running(slow.builder), "", "no builder yet");
    },
    50,
  );
  controller.abort();
  await assert.rejects(resolving, /build cancelled/);
  // Nix's builder (sleep) is gone too.
  await until("the builder to be gone", 15_000, () => assert.equal(running(slow.builder), ""), 50);
});

test("a timeout stops the evaluation/build with a clear error", { timeout: 60_000 }, async () => {
  const slow = slowFile();
  const r = new NixEvalResolver({ nixFile: slow.nixFile, timeoutMs: 1000 });
  const revision = await r.currentRevision();
  await assert.rejects(r.resolve(["slow"], { revision, arch: "amd64" }), /build timed out after 1 s/);
  await until("the builder to be gone", 15_000, () => assert.equal(running(slow.builder), ""), 50);
});

test("missingPackages evaluates without building; packageNames lists the set's attributes", async () => {
  const dir = join(work, "missing");
  mkdirSync(dir, { recursive: true });
  const file = join(dir, "pkgs.nix");
  writeFileSync(
    file,
    `(import ${PACKAGES_NIX} { }) // {
      failing = derivation { name = "failing"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "exit 1" ]; };
      lib = { x = 1; };
    }\n`,
  );
  const r = new NixEvalResolver({ nixFile: file });
  const opts = { revision: await r.currentRevision(), arch: "amd64" };
  // `failing` is a package (its build would fail, but nothing is built); lib is no package.
  assert.deepEqual(await r.missingPackages(["failing", "hello", "nope", "lib", "Bad Name!"], opts), [
    "Bad Name!",
    "lib",
    "nope",
  ]);
  assert.deepEqual(await r.missingPackages([], opts), []);
  const names = await r.packageNames(opts);
  for (const n of ["busybox", "failing", "hello", "lib"]) assert.ok(names.includes(n), n);
  assert.ok(!names.includes("nope"));
  await assert.rejects(r.missingPackages(["hello"], { ...opts, revision: "gone" }), RevisionUnavailableError);
});

test("many names asked at once: one nix-instantiate at a time, each checking every name asked meanwhile", async () => {
  const dir = join(work, "batched");
  mkdirSync(dir, { recursive: true });
  // nix-instantiate behind a wrapper that records each run (and how many run at once) before running it.
  const log = join(dir, "runs");
  const wrapper = join(dir, "nix-instantiate");
  const real = runText("sh", ["-c", "command -v nix-instantiate"]);
  writeFileSync(
    wrapper,
    `#!/bin/sh\necho start >> ${log}\n"${real}" "$@"\nstatus=$?\necho end >> ${log}\nexit $status\n`,
    { mode: 0o755 },
  );
  const r = new NixEvalResolver({ nixFile: PACKAGES_NIX, nixInstantiate: wrapper });
  const opts = { revision: await r.currentRevision(), arch: "amd64" };
  const asked = Array.from({ length: 40 }, (_, i) => [`nope${i}`, i % 2 ? "hello" : "busybox"]);
  const answers = await Promise.all(asked.map((names) => r.missingPackages(names, opts)));
  assert.deepEqual(
    answers,
    asked.map(([nope]) => [nope]),
  );
  const runs = readFileSync(log, "utf8").trim().split("\n");
  assert.ok(runs.length <= 2 * 3, `${runs.length / 2} evaluations for 40 requests`);
  let atOnce = 0;
  for (const line of runs) {
    atOnce += line === "start" ? 1 : -1;
    assert.ok(atOnce <= 1, "one evaluation at a time");
  }
  // Known now: asked again, nothing runs.
  assert.deepEqual(await r.missingPackages(["nope7", "hello"], opts), ["nope7"]);
  assert.equal(readFileSync(log, "utf8").trim().split("\n").length, runs.length);
});

test("architectures: what Nix builds for, its system, extra-platforms and remote builders' systems", async () => {
  const saved = process.env.NIX_CONFIG;
  const machines = join(work, "machines");
  writeFileSync(machines, "# a comment\nssh://arm aarch64-linux /key 4\nssh://local - /key\n");
  try {
    process.env.NIX_CONFIG = "extra-platforms =\nbuilders =";
    assert.deepEqual(await new NixEvalResolver({ nixFile: PACKAGES_NIX }).architectures(), [defaultArch()]);
    process.env.NIX_CONFIG = `extra-platforms = i686-linux\nbuilders = @${machines}`;
    assert.deepEqual(
      await new NixEvalResolver({ nixFile: PACKAGES_NIX }).architectures(),
      [...new Set([defaultArch(), "386", "arm64"])].sort(),
    );
  } finally {
    if (saved === undefined) delete process.env.NIX_CONFIG;
    else process.env.NIX_CONFIG = saved;
  }
  // Older nix prints plain values; builders may be inline, `;`-separated.
  assert.deepEqual(
    await nixSystems(
      JSON.stringify({
        system: "x86_64-linux",
        "extra-platforms": "i686-linux x86_64-v2-linux",
        builders: "ssh://a aarch64-linux,riscv64-linux; ssh://b",
      }),
    ),
    ["x86_64-linux", "i686-linux", "x86_64-v2-linux", "aarch64-linux", "riscv64-linux"],
  );
});

test("runProcess: no shell, failures are one line naming the program", async () => {
  assert.equal(await runProcess("/bin/echo", ["$HOME; ls"]), "$HOME; ls\n");
  await assert.rejects(runProcess("nixoci-no-such-program", []), /nixoci-no-such-program is not installed/);
  await assert.rejects(
    runProcess("/bin/sh", ["-c", "echo 'error: first\nsecond' >&2; exit 3"], { what: "thing" }),
    /thing failed \(exit 3\): error: first$/,
  );
});
