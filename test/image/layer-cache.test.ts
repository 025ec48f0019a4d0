// The layer cache's sweep of what killed writers left (src/image/layer-cache.ts sweepTemporaries): every directory
// a build writes into, tools/ (the encoders' memoized versions) included, and never a live writer's temporary.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { LayerCache } from "../../src/image/layer-cache.js";
import { makeTempDir } from "../support/fixtures.js";

test("a killed writer's temporaries go from every directory of the cache; a live writer's and finished files stay", async () => {
  const dir = makeTempDir("layer-cache-sweep");
  // A pid that no longer runs: a child that has exited.
  const dead = spawnSync(process.execPath, ["-e", ""]).pid;
  const subs = ["blobs/sha256", "layers", "images", "tools"];
  for (const sub of subs) {
    mkdirSync(join(dir, sub), { recursive: true });
    writeFileSync(join(dir, sub, `.x.tmp-${dead}-0123456789ab`), "half");
    writeFileSync(join(dir, sub, `.y.tmp-${process.pid}-0123456789ab`), "in progress");
    writeFileSync(join(dir, sub, "done.json"), "{}");
  }
  const removed = await new LayerCache(dir).sweepTemporaries();
  assert.deepEqual(removed.sort(), subs.map((s) => `${s}/.x.tmp-${dead}-0123456789ab`).sort());
  for (const sub of subs) {
    assert.ok(!existsSync(join(dir, sub, `.x.tmp-${dead}-0123456789ab`)), sub);
    assert.ok(existsSync(join(dir, sub, `.y.tmp-${process.pid}-0123456789ab`)), `${sub}: a live writer's`);
    assert.ok(existsSync(join(dir, sub, "done.json")), sub);
  }
});
