// nixoci build --user / --perm / --uid / --gid: images whose files belong to the app user, checked by running
// them in dockerd as that user, and reproducible (same inputs, same digest).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { storePathsFromAnnotations } from "../../src/image/annotations.js";
import { nixoci, nixociOk } from "../support/cli.js";
import { startDockerd, type Dockerd } from "../support/daemons.js";
import { buildFixtures } from "../support/fixtures.js";

const fx = buildFixtures();
const work = mkdtempSync(join(tmpdir(), "nixoci-permissions-test-"));
let dockerd: Dockerd;

before(async () => {
  dockerd = await startDockerd();
});
after(async () => {
  await dockerd?.stop();
  rmSync(work, { recursive: true, force: true });
});

const TREE_RULE = `^/nix/store/[^/]+-tree(/|$)=0770:1000:1000`;
const SH = ["--entrypoint", JSON.stringify([`${fx.busybox}/bin/sh`, "-c"])];

/** Builds into an OCI layout and returns the manifest digest and its layers. */
function buildLayout(args: string[], cache: string, name: string) {
  const layout = join(work, name);
  const digest = nixociOk([
    "build",
    "-q",
    "--cache-dir",
    cache,
    ...args,
    "-o",
    `oci:${layout}:x`,
  ]).text.trim();
  const manifest = JSON.parse(readFileSync(join(layout, "blobs/sha256", digest.slice(7)), "utf8")) as {
    layers: Array<{ digest: string; annotations?: Record<string, string> }>;
  };
  return { digest, layers: manifest.layers };
}

/** Loads the build's docker-archive into dockerd and runs `script` in it; stdout lines. */
function runIn(args: string[], tag: string, script: string): string[] {
  const archive = nixociOk([
    "build",
    "-q",
    "--cache-dir",
    join(work, "cache"),
    ...args,
    "--tag",
    tag,
    "-",
  ]).stdout;
  dockerd.docker(["load"], { input: archive });
  return dockerd.docker(["run", "--rm", "--network", "none", tag, script]).toString().trim().split("\n");
}

test("--user app: runs as 1000 with a home it owns; a --perm rule lets it write into one store path only", () => {
  const bb = `${fx.busybox}/bin/busybox`;
  const out = runIn(
    ["--user", "app", "--perm", TREE_RULE, ...SH, fx.hello, fx.tree],
    "perms:user",
    [
      `${bb} id -u`,
      "echo $HOME",
      `${bb} stat -c '%u:%g %a' $HOME`,
      "echo written > $HOME/f && cat $HOME/f",
      `${bb} touch /etc/x 2>/dev/null && echo etc-writable || echo etc-denied`,
      `${bb} touch ${fx.tree}/new && echo tree-writable || echo tree-denied`,
      `${bb} stat -c '%u:%g %a' ${fx.tree}/data`,
      `${bb} touch ${fx.hello}/new 2>/dev/null && echo hello-writable || echo hello-denied`,
    ].join("; "),
  );
  assert.deepEqual(out, [
    "1000",
    "/home/app",
    "1000:1000 755",
    "written",
    "etc-denied",
    "tree-writable",
    "1000:1000 770",
    "hello-denied",
  ]);
});

test("--user with a group: root in a named group and a user in group root run under docker", () => {
  const bb = `${fx.busybox}/bin/busybox`;
  const id = `${bb} id -u; ${bb} id -g; ${bb} id -gn`;
  assert.deepEqual(runIn(["--user", "root:app", ...SH, fx.hello], "perms:rootgroup", id), [
    "0",
    "1000",
    "app",
  ]);
  assert.deepEqual(runIn(["--user", "app:root", ...SH, fx.hello], "perms:grouproot", id), [
    "1000",
    "0",
    "root",
  ]);
});

test("--uid/--gid: every store file is owned by them, /nix/store itself stays root's", () => {
  const bb = `${fx.busybox}/bin/busybox`;
  const out = runIn(
    ["--uid", "1000", "--gid", "100", ...SH, fx.hello],
    "perms:uid",
    `${bb} stat -c '%u:%g %a %n' ${bb} ${fx.hello} /nix/store /nix /etc/passwd`,
  );
  assert.deepEqual(out, [
    `1000:100 555 ${bb}`,
    `1000:100 555 ${fx.hello}`,
    "0:0 755 /nix/store",
    "0:0 755 /nix",
    "0:0 644 /etc/passwd",
  ]);
});

test("reproducible: the same rules give the same digest from other caches and -j 1; untouched layers keep theirs", () => {
  const args = ["--user", "app", "--perm", TREE_RULE, ...SH, fx.hello, fx.tree];
  const a = buildLayout(args, join(work, "cache-a"), "a");
  const b = buildLayout([...args, "-j", "1"], join(work, "cache-b"), "b");
  assert.equal(a.digest, b.digest);
  const plain = buildLayout(["--user", "app", ...SH, fx.hello, fx.tree], join(work, "cache-a"), "plain");
  assert.notEqual(plain.digest, a.digest);
  // The layer holding tree (with hello: the small roots) changed and no longer says it is those store paths
  // (it is not the store's tar of them: the snapshotter must download it); the layers below are the same.
  const storeLayers = a.layers.slice(0, -1);
  const treeLayer = plain.layers.findIndex((l) =>
    storePathsFromAnnotations(l.annotations ?? {}).includes(fx.tree),
  );
  assert.ok(treeLayer >= 0);
  assert.equal(a.layers[treeLayer].annotations, undefined);
  assert.notEqual(a.layers[treeLayer].digest, plain.layers[treeLayer].digest);
  for (const [i, l] of storeLayers.entries())
    if (i !== treeLayer) {
      assert.equal(l.digest, plain.layers[i].digest, `layer ${i} untouched`);
      assert.deepEqual(l.annotations, plain.layers[i].annotations);
    }
});

test("bad rules and ids: one line, exit 2 (a usage error), before any work", () => {
  for (const [args, message] of [
    [["--perm", "no-equals"], /^nixoci: --perm: "no-equals" is not REGEX=MODE\[:UID\[:GID\]\]/],
    [["--perm", "x=rwx"], /^nixoci: --perm: "x=rwx" is not REGEX=MODE.*the mode is octal/],
    [["--perm", "(=0755"], /^nixoci: --perm: "\(=0755": the pattern is not a valid regular expression/],
    [["--uid=-5"], /^nixoci: --uid: uid "-5" is not a number from 0 to 2097151/],
    [["--gid", "4000000"], /^nixoci: --gid: gid "4000000" is not a number from 0 to 2097151/],
  ] as const) {
    const r = nixoci(["build", "-q", "--no-cache", ...args, fx.hello, "-o", `oci:${join(work, "bad")}`]);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, message);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
  }
});
