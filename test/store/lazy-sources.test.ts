// LazySources: the binary caches a daemon (snapshotter, CRI image service) substitutes from, opened on first use,
// tried again after a pause when one fails to open, one attempt at a time. Real caches made by nix; the failing
// one is a cache whose nix-cache-info cannot be read (a directory), then repaired.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import { BinaryCacheStore } from "../../src/store/binary-cache.js";
import { LazySources } from "../../src/store/lazy-sources.js";
import { buildFixtures, makeNixCache } from "../support/fixtures.js";
import { until } from "../support/poll.js";

test("a cache that fails to open is left out, tried again after the pause, and opened once", async () => {
  const fx = buildFixtures();
  const dir = mkdtempSync(join("/tmp", "nixoci-lazy-"));
  try {
    const good = makeNixCache({ paths: [fx.hello], dir: join(dir, "good"), compression: "none" });
    const brokenDir = join(dir, "broken");
    mkdirSync(join(brokenDir, "nix-cache-info"), { recursive: true });
    const broken = `file://${brokenDir}`;
    const trust = { trustedKeys: [], allowUnsigned: true };
    const opens: string[] = [];
    const failures: string[] = [];
    const sources = new LazySources(
      [broken, good],
      (url) => {
        opens.push(url);
        return BinaryCacheStore.open(url, trust);
      },
      (url, err) => failures.push(`${url}: ${err.message}`),
      200,
    );
    assert.equal(sources.configured, 2);
    assert.deepEqual(opens, [], "nothing is opened before the first use");

    // Two uses at the same time: one attempt per cache.
    const [a, b] = await Promise.all([sources.stores(), sources.stores()]);
    assert.equal(a.length, 1);
    assert.equal(b[0], a[0]);
    assert.deepEqual(opens, [broken, good]);
    assert.equal(failures.length, 1);
    assert.match(failures[0], /^file:\/\/.*broken: .*EISDIR/);
    assert.ok(await a[0].queryPathInfo(fx.hello), "the open cache answers");

    // Within the pause the broken cache is not tried again; the open one is not reopened.
    assert.equal((await sources.stores()).length, 1);
    assert.deepEqual(opens, [broken, good]);

    // Repaired: after the pause it opens, and comes first (the configured order).
    rmSync(join(brokenDir, "nix-cache-info"), { recursive: true });
    makeNixCache({ paths: [fx.greeting], dir: brokenDir, compression: "none" });
    const both = await until("the repaired cache opens", 10_000, async () => {
      const s = await sources.stores();
      assert.equal(s.length, 2);
      return s;
    });
    assert.equal(both[1], a[0]);
    assert.ok(await both[0].queryPathInfo(fx.greeting));
    assert.deepEqual(opens, [broken, good, broken]);
    sources.close();
    assert.deepEqual(await sources.stores(), [], "nothing is opened once closed");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
