// The last line of a failed frontend build: the failed step named, not its command line (a plan step's carries
// every path and cache option, a Nix file's a whole script), and the gateway method's name dropped.
import { test } from "node:test";
import assert from "node:assert/strict";
import { buildErrorLine } from "../../../src/servers/buildkit/step-errors.js";

test("a failed step is named by what it does, in one short line", () => {
  const node = "/nix/store/miyfyy8fn3m6mlfzsh4fzmdkh4y37h9x-nodejs/bin/node";
  const self = "/nix/store/fv0l3pvznwyy5lvsvsb9hssv07nmnw0b-nixoci/bin/nixoci.js";
  const plan =
    `/moby.buildkit.v1.frontend.LLBBridge/ReadFile: process "${node} ${self} frontend plan --out /out/plan.json ` +
    `--batch-scope [\\"\\",\\"fetch\\",\\"--from\\",\\"http://127.0.0.1:38261\\"] --from http://127.0.0.1:38261 ` +
    `/nix/store/6ygxw347bmkg1jrysiw4yfykf2c5p9zz-hb-nope" did not complete successfully: exit code: 1`;
  assert.equal(
    buildErrorLine(plan),
    "the plan step (nixoci frontend plan) failed with exit code 1; its output above says why",
  );
  const fetch = `process "${node} ${self} frontend fetch --out /out 0=/nix/store/a-b" did not complete successfully: exit code: 2`;
  assert.equal(
    buildErrorLine(fetch),
    "a fetch step (nixoci frontend fetch) failed with exit code 2; its output above says why",
  );
  const custom = `/moby.buildkit.v1.frontend.LLBBridge/Solve: process "${node} ${self} frontend custom --plan /plan/plan.json" did not complete successfully: exit code: 1`;
  assert.match(
    buildErrorLine(custom),
    /^the customisation step \(nixoci frontend custom\) failed with exit code 1;/,
  );
  const nix =
    'process "/bin/sh -c set -eu\\nfile=\\"$1\\"; attr=\\"$2\\"\\nnix-build --no-out-link \\"$file\\"\\n ' +
    'sh /ctx/default.nix app" did not complete successfully: exit code: 1';
  assert.equal(buildErrorLine(nix), "the nix-build step failed with exit code 1; its output above says why");
  // BuildKit v0.8 (dockerd 20.10) words it differently.
  const old = `executor failed running [${node} ${self} frontend plan --out /out/plan.json]: exit code: 1`;
  assert.match(buildErrorLine(old), /^the plan step \(nixoci frontend plan\) failed with exit code 1;/);
});

test("another step is shown shortened; any other error is kept, on one line, without the gateway method", () => {
  const long = `process "/bin/sh -c ${"x".repeat(200)}" did not complete successfully: exit code: 3`;
  const line = buildErrorLine(long);
  assert.ok(line.length < 160, line);
  assert.match(line, /^the step "\/bin\/sh -c x+\.\.\." failed with exit code 3;/);
  assert.equal(
    buildErrorLine(
      '/moby.buildkit.v1.frontend.LLBBridge/ReadFile: nixoci.yaml: unknown key "tagz"\n(did you mean tags?)',
    ),
    'nixoci.yaml: unknown key "tagz" (did you mean tags?)',
  );
});
