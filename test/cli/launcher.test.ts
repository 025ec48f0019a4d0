// bin/nixoci.js runs the CLI bundled into dist/nixoci.cjs (scripts/bundle-cli.mjs) through V8's code cache the
// build made: the cache fits this Node and is used; the bundle finds the package's root from its own place (as
// package-files.ts does for the tool launcher's child and the workers, whose places under dist/ the compiled
// modules' tests check); a missing or foreign cache only costs compile time; a missing bundle is one line, exit 1;
// NIXOCI_NO_BUNDLE=1 runs the compiled modules.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { nixoci, ROOT } from "../support/cli.js";
import { makeTempDir } from "../support/fixtures.js";

const VERSION = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;

test("the build's code cache fits this Node and is used; the bundle knows the package's version", () => {
  const r = nixoci(["--version"], { env: { NIXOCI_DEBUG: "1" } });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.toString(), `nixoci ${VERSION}\n`);
  assert.match(r.stderr, /^nixoci: code cache used: .*\/dist\/nixoci\.cjs\.cache$/m);
});

/** A copy of the package's launcher and bundle (node_modules linked) to spoil. */
function packageCopy(name: string): string {
  const root = makeTempDir(name);
  mkdirSync(join(root, "bin"));
  mkdirSync(join(root, "dist"));
  copyFileSync(join(ROOT, "bin/nixoci.js"), join(root, "bin/nixoci.js"));
  copyFileSync(join(ROOT, "package.json"), join(root, "package.json"));
  copyFileSync(join(ROOT, "dist/nixoci.cjs"), join(root, "dist/nixoci.cjs"));
  symlinkSync(join(ROOT, "node_modules"), join(root, "node_modules"));
  return root;
}

function run(root: string, args: string[]) {
  const r = spawnSync(process.execPath, [join(root, "bin/nixoci.js"), ...args], {
    env: { ...process.env, NIXOCI_DEBUG: "1" },
    encoding: "utf8",
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test("without a code cache, or with one V8 cannot use, the bundle is compiled and runs", () => {
  const root = packageCopy("launcher-nocache");
  let r = run(root, ["--version"]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, `nixoci ${VERSION}\n`);
  assert.match(r.stderr, /code cache absent/);

  writeFileSync(join(root, "dist/nixoci.cjs.cache"), Buffer.alloc(4096, 0x5a));
  r = run(root, ["--version"]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, `nixoci ${VERSION}\n`);
  assert.match(r.stderr, /code cache rejected/);
});

test("NIXOCI_NO_BUNDLE=1 runs the compiled modules instead", () => {
  const r = nixoci(["--version"], { env: { NIXOCI_DEBUG: "1", NIXOCI_NO_BUNDLE: "1" } });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.toString(), `nixoci ${VERSION}\n`);
  assert.doesNotMatch(r.stderr, /code cache/);
});

test("a missing bundle is one line naming it, exit 1", () => {
  const root = makeTempDir("launcher-nobundle");
  mkdirSync(join(root, "bin"));
  copyFileSync(join(ROOT, "bin/nixoci.js"), join(root, "bin/nixoci.js"));
  const r = run(root, ["--version"]);
  assert.equal(r.status, 1);
  assert.equal(r.stdout, "");
  assert.match(r.stderr, /^nixoci: cannot read .*\/dist\/nixoci\.cjs \(ENOENT\): run `npm run build`\n$/);
});
