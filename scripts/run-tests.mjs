#!/usr/bin/env node
// The test command: installs the real components the tests use, then runs every compiled test file with
// Node's test runner (whose closing "# pass / # fail" summary CI reads). Build first: `npm test` does.
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { nodeTestArgs } from "./node-test-args.mjs";

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
// Each test file runs in its own process with test/support/harness.ts loaded: late uncaught errors fail it.
const run = spawnSync(process.execPath, nodeTestArgs(root, files), {
  stdio: "inherit",
  cwd: root,
});
process.exit(run.status ?? 1);
