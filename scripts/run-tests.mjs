#!/usr/bin/env node
// The test command: installs the real components the tests use, then runs every compiled test file with
// Node's test runner (whose closing "# pass / # fail" summary CI reads). Build first: `npm test` does.
//
// The containerd matrix: every file runs against the containerd NIXOCI_CONTAINERD selects (default 1.6, bookworm's;
// see test/support/containerd-release.ts), and the suites whose outcome depends on containerd's release
// (CONTAINERD_SUITES) run again against each release of NIXOCI_CONTAINERD_MATRIX (space- or comma-separated;
// default "1.7 2.1"; empty for none), all in the one run of the test runner, so there is one summary and one
// exit status. Each extra run of a suite is a small wrapper module that sets NIXOCI_CONTAINERD before importing
// it; its tests' names say which release they ran against.
//
// The Docker matrix, likewise: every file runs against the Docker NIXOCI_DOCKER selects (default 20.10, bookworm's;
// see test/support/docker-release.ts), and the BuildKit suites (DOCKER_SUITES) run again against each release of
// NIXOCI_DOCKER_MATRIX (default "28.5 26.1"; empty for none), through wrappers that set NIXOCI_DOCKER.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, relative } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { nodeTestArgs } from "./node-test-args.mjs";

/**
 * The compiled suites that run images through containerd with nixoci's snapshotter or image service, or write to
 * it with ctr. (The snapshotter's other suites, gcroots, mounts and nix-image, never start containerd.)
 */
const CONTAINERD_SUITES = [
  "dist/test/servers/snapshotter/overlay.test.js",
  "dist/test/servers/snapshotter/nix-layers.test.js",
  "dist/test/servers/snapshotter/target-mode.test.js",
  "dist/test/servers/cri/",
  "dist/test/outputs/containerd.test.js",
  "dist/test/drill/cri.test.js",
];

/** The compiled suites that build through dockerd's BuildKit, whose outcome depends on Docker's release. */
const DOCKER_SUITES = [
  "dist/test/servers/buildkit/frontend.test.js",
  "dist/test/servers/buildkit/docker-releases.test.js",
  "dist/test/servers/buildkit/buildx.test.js",
];

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const install = spawnSync("bash", [join(root, "scripts/install-test-deps.sh")], { stdio: "inherit" });
if (install.status !== 0) process.exit(install.status ?? 1);

function findTests(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...findTests(p));
    else if (name.endsWith(".test.js")) out.push(p);
  }
  return out;
}

const filter = process.argv.slice(2);
let files = findTests(join(root, "dist/test"));
if (filter.length) files = files.filter((f) => filter.some((s) => f.includes(s)));
if (!files.length) {
  console.error("run-tests: no test files found under dist/test (did the build run?)");
  process.exit(1);
}
const wrappers = mkdtempSync(join(tmpdir(), "nixoci-test-matrix-"));
/**
 * Adds, for each release of `matrixVar` (other than the one `baseVar` already selects for every file), a wrapper
 * per suite of `suites` found in `files` that sets `baseVar` to that release before importing the suite.
 */
function addMatrix(component, suites, baseVar, baseDefault, matrixVar, matrixDefault) {
  const matrix = (process.env[matrixVar] ?? matrixDefault).split(/[\s,]+/).filter(Boolean);
  const base = process.env[baseVar] || baseDefault;
  const selected = files.filter((f) => suites.some((s) => relative(root, f).startsWith(s)));
  for (const release of matrix.filter((r) => r !== base))
    for (const f of selected) {
      const name = relative(join(root, "dist/test"), f)
        .replace(/\.test\.js$/, "")
        .replace(/\//g, "-");
      const wrapper = join(wrappers, `${component}-${release}-${name}.test.mjs`);
      writeFileSync(
        wrapper,
        `process.env.${baseVar} = ${JSON.stringify(release)};\n` +
          `await import(${JSON.stringify(pathToFileURL(f).href)});\n`,
      );
      files.push(wrapper);
    }
}
addMatrix("containerd", CONTAINERD_SUITES, "NIXOCI_CONTAINERD", "1.6", "NIXOCI_CONTAINERD_MATRIX", "1.7 2.1");
addMatrix("docker", DOCKER_SUITES, "NIXOCI_DOCKER", "20.10", "NIXOCI_DOCKER_MATRIX", "28.5 26.1");
// Each test file runs in its own process with test/support/harness.ts loaded: late uncaught errors fail it.
const run = spawnSync(process.execPath, nodeTestArgs(root, files), {
  stdio: "inherit",
  cwd: root,
});
rmSync(wrappers, { recursive: true, force: true });
process.exit(run.status ?? 1);
