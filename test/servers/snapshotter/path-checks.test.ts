// What a nix layer's Prepare reads, read once: LocalStore.validPathStats gives the lstat of each valid path (the
// snapshotter keeps it for the chain's store view instead of looking at every path again), and the metadata's
// lookups of parents and ancestors leave a layer's labels (one per store path) in the database until read.
import { test } from "node:test";
import assert from "node:assert/strict";
import { lstatSync } from "node:fs";
import { join } from "node:path";
import { MetadataStore } from "../../../src/servers/snapshotter/metadata.js";
import { buildViewTree, VIEW_ROOT } from "../../../src/servers/snapshotter/store-view.js";
import { LocalStore } from "../../../src/store/local-store.js";
import { buildFixtures, makeTempDir } from "../../support/fixtures.js";

test("validPathStats: the lstat of each valid path, none for a path not in the store", () => {
  const fx = buildFixtures();
  const store = new LocalStore();
  const unknown = "/nix/store/00000000000000000000000000000000-not-there";
  const stats = store.validPathStats([fx.hello, unknown, fx.busybox]);
  assert.deepEqual([...stats.keys()], [fx.hello, fx.busybox]);
  for (const p of [fx.hello, fx.busybox]) {
    const st = lstatSync(store.realPath(p));
    assert.equal(stats.get(p)!.ino, st.ino, p);
    assert.equal(stats.get(p)!.mode, st.mode, p);
    assert.equal(stats.get(p)!.mtimeMs, st.mtimeMs, p);
  }
  assert.deepEqual([...store.validPathStats([unknown, fx.hello]).keys()], [fx.hello]);
  assert.throws(() => store.validPathStats(["/nix/store/not-a-store-path"]), /not-a-store-path/);
});

test("a store view's entry made from the lstat it is given, without looking at the path again", async () => {
  const fx = buildFixtures();
  const store = new LocalStore();
  const st = store.validPathStats([fx.hello]).get(fx.hello)!;
  const tree = join(makeTempDir("nixoci-view-"), "tree");
  // The real path named does not exist: only the given lstat can have made the entry.
  await buildViewTree(tree, "nix/store", [{ real: "/nonexistent/x", baseName: "x", stat: st }]);
  const made = lstatSync(join(tree, VIEW_ROOT, "nix/store/x"));
  assert.equal(made.isDirectory(), st.isDirectory());
  assert.equal(made.mode, st.mode);
  assert.equal(made.mtimeMs, st.mtimeMs);
  await assert.rejects(
    buildViewTree(join(tree, "..", "tree2"), "nix/store", [{ real: "/nonexistent/x", baseName: "x" }]),
    /ENOENT.*nonexistent/,
  );
});

test("metadata: parents and ancestors read their labels when asked, as the database has them then", () => {
  const md = new MetadataStore(join(makeTempDir("nixoci-md-"), "root"));
  try {
    const many = Object.fromEntries(
      Array.from({ length: 500 }, (_, i) => [
        `containerd.io/snapshot/nix-store-path.${i}`,
        `/nix/store/p${i}`,
      ]),
    );
    md.transaction(() => {
      md.create("active", "a", undefined, {});
      md.commit("a", "base", many, { size: 0, inodes: 0 });
      md.create("active", "b", "base", { x: "1" });
      md.commit("b", "mid", { y: "2" }, { size: 0, inodes: 0 });
      md.create("active", "ctr", "mid", {});
    });
    const ctr = md.get("ctr")!;
    const [mid, base] = md.ancestors(ctr);
    assert.deepEqual(
      [mid!.key, base!.key, mid!.kind, base!.parentId],
      ["mid", "base", "committed", undefined],
    );
    assert.deepEqual(mid!.labels, { y: "2" });
    // Read after a change: the record shows what the database holds when its labels are first read.
    md.transaction(() => md.setLabels("base", { z: "3" }));
    assert.deepEqual(base!.labels, { z: "3" });
    // A record got whole keeps the labels it was read with.
    const midWhole = md.get("mid")!;
    md.transaction(() => md.setLabels("mid", {}));
    assert.deepEqual(midWhole.labels, { y: "2" });
    // Spread and JSON see the labels as a plain field.
    assert.deepEqual({ ...md.get("base")! }.labels, { z: "3" });
    assert.deepEqual(JSON.parse(JSON.stringify(md.ancestors(ctr)[1])).labels, { z: "3" });
  } finally {
    md.close();
  }
});
