// The `node --test` command line of the test command (scripts/run-tests.mjs), shared with the harness
// self-test (test/support-selftest/harness.test.ts), which runs files the same way.
import { join } from "node:path";
import { pathToFileURL } from "node:url";

/** node's arguments to run `files`, every test process loading the harness (dist/test/support/harness.js). */
export function nodeTestArgs(root, files) {
  const harness = pathToFileURL(join(root, "dist/test/support/harness.js")).href;
  return ["--test", "--import", harness, "--test-reporter=spec", ...files];
}
