// The committed gRPC message types are what proto-loader-gen-types makes of today's .proto files: a .proto edit
// without `npm run gen:proto` fails here instead of leaving hand-kept types to drift.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { findRoot, makeTempDir } from "../support/fixtures.js";

function files(dir: string): string[] {
  return readdirSync(dir)
    .sort()
    .flatMap((n) => (statSync(join(dir, n)).isDirectory() ? files(join(dir, n)) : [join(dir, n)]));
}

test("src/proto/generated matches a fresh generation from proto/", () => {
  const root = findRoot();
  const fresh = join(makeTempDir("gen-proto"), "generated");
  const r = spawnSync(process.execPath, [join(root, "scripts/gen-proto-types.mjs"), fresh], {
    encoding: "utf8",
  });
  assert.equal(r.status, 0, r.stderr);
  const committed = join(root, "src/proto/generated");
  const names = (dir: string): string[] => files(dir).map((f) => relative(dir, f));
  assert.deepEqual(names(committed), names(fresh), "the same files (run npm run gen:proto)");
  assert.ok(names(fresh).includes("containerd/containerd/services/snapshots/v1/Info.ts"));
  for (const name of names(fresh))
    assert.equal(readFileSync(join(committed, name), "utf8"), readFileSync(join(fresh, name), "utf8"), name);
});
