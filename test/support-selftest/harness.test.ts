// The test harness (test/support/harness.ts) as the test command loads it: small test files run through
// `node` with scripts/node-test-args.mjs's arguments, as scripts/run-tests.mjs runs every test file. A file
// whose process meets an uncaught error must fail even when its tests passed and something resets the exit
// code afterwards; a clean file must still pass.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { ROOT } from "../support/cli.js";
import { makeTempDir } from "../support/fixtures.js";

type NodeTestArgs = (root: string, files: string[]) => string[];
const { nodeTestArgs } = (await import(pathToFileURL(join(ROOT, "scripts/node-test-args.mjs")).href)) as {
  nodeTestArgs: NodeTestArgs;
};

const dir = makeTempDir("harness-selftest");

/** Runs a one-file test run of `body` the way the test command does (or without the harness's --import). */
function runTestFile(name: string, body: string, opts: { harness?: boolean } = {}) {
  const file = join(dir, `${name}.test.mjs`);
  writeFileSync(
    file,
    `import { test } from "node:test";\nimport { EventEmitter } from "node:events";\n${body}\n`,
  );
  let args = nodeTestArgs(ROOT, [file]);
  if (opts.harness === false) args = args.filter((a, i) => a !== "--import" && args[i - 1] !== "--import");
  // NODE_TEST_CONTEXT (set in this test process) would make the child skip its files as a nested run.
  const env = { ...process.env, NODE_TEST_CONTEXT: undefined };
  const r = spawnSync(process.execPath, args, { encoding: "utf8", timeout: 120_000, env });
  return { status: r.status, output: `${r.stdout}\n${r.stderr}` };
}

// A test passes; later a stream-like emitter fails with nobody listening; an exit hook registered at load time
// (as a CLI's own exit handling might) then sets the exit code back to 0.
const LATE_ERROR_EVENT = `
test("passes", () => {
  setTimeout(() => new EventEmitter().emit("error", new Error("late unhandled error event")), 50);
});
process.on("exit", () => { process.exitCode = 0; });
`;

test("the test command's arguments load the harness into the test process", () => {
  const args = nodeTestArgs(ROOT, ["x.test.js"]);
  assert.deepEqual(args.slice(0, 2), ["--test", "--import"]);
  assert.match(args[2], /\/dist\/test\/support\/harness\.js$/);
});

test("without the harness, node:test lets such a file pass (why the harness exists)", () => {
  const r = runTestFile("late-error-no-harness", LATE_ERROR_EVENT, { harness: false });
  assert.equal(r.status, 0, r.output);
  assert.match(r.output, /ℹ pass 1\s+ℹ fail 0/); // the run really happened, and passed
  assert.match(r.output, /late unhandled error event/);
});

test("an unhandled 'error' event after the file's test passed fails the run", () => {
  const r = runTestFile("late-error", LATE_ERROR_EVENT);
  assert.notEqual(r.status, 0, r.output);
  assert.match(r.output, /test harness: 1 uncaught error\(s\) in this test process/);
  assert.match(r.output, /late unhandled error event/);
});

test("an unhandled rejection after the file's test passed fails the run", () => {
  const r = runTestFile(
    "late-rejection",
    `test("passes", () => { setTimeout(() => Promise.reject(new Error("late rejection")), 50); });
process.on("exit", () => { process.exitCode = 0; });`,
  );
  assert.notEqual(r.status, 0, r.output);
  assert.match(r.output, /late rejection/);
});

test("an uncaught exception during a test fails that test with the error", () => {
  const r = runTestFile(
    "during-test",
    `test("fails", async () => {
  setTimeout(() => { throw new Error("uncaught during the test"); }, 10);
  await new Promise((ok) => setTimeout(ok, 500));
});`,
  );
  assert.notEqual(r.status, 0, r.output);
  assert.match(r.output, /✖ fails[\s\S]*uncaught during the test/);
});

test("an unhandled rejection before any test still crashes the file", () => {
  const r = runTestFile(
    "before-tests",
    `Promise.reject(new Error("rejected at load time"));
await new Promise((ok) => setTimeout(ok, 100));
test("never reached", () => {});`,
  );
  assert.notEqual(r.status, 0, r.output);
  assert.match(r.output, /rejected at load time/);
});

test("a clean file still passes", () => {
  const r = runTestFile("clean", `test("passes", () => {});`);
  assert.equal(r.status, 0, r.output);
  assert.doesNotMatch(r.output, /test harness/);
});
