// GC roots of `nixoci snapshotter`: one root per image (a directory of links to the store paths of the image's
// nix layers, named after the CRI manifest digest label, else after the layer's chain ID) under
// /nix/var/nix/gcroots/nixoci/<instance>. Real Nix sees them (`nix-store -q --roots`, `--gc --print-roots`) and
// refuses to delete a rooted path; the root goes with the last snapshot that holds it; SIGKILL + restart keeps
// it; Cleanup removes an orphan. The snapshotter runs as a child process, as containerd would talk to it.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readlinkSync, rmSync, symlinkSync } from "node:fs";
import { basename, join } from "node:path";
import { createHash, randomBytes } from "node:crypto";
import { gcRootsDir, MANIFEST_DIGEST_LABEL } from "../../../src/servers/snapshotter/gcroots.js";
import { NIX_CLOSURE_ROOT_ANNOTATION } from "../../../src/image/annotations.js";
import { snapshotsClient } from "../../../src/proto/containerd.js";
import { mountsUnder } from "../../support/daemons.js";
import { buildFixtures, type FixtureAttr } from "../../support/fixtures.js";
import {
  REF_LABEL,
  rpc,
  startSnapshotter as startSnapshotterProcess,
  STORE_PATH_LABEL,
  stopSnapshotter,
  tail,
  type Client,
  type Snapshotter,
} from "../../support/snapshotter.js";

/** These tests give made-up chain IDs: the check that a layer's paths make its chain ID has tests of its own. */
const startSnapshotter = (dir: string, extra: string[] = [], env?: NodeJS.ProcessEnv) =>
  startSnapshotterProcess(dir, ["--trust-layer-labels", ...extra], env);

const REF = REF_LABEL;
const SP = STORE_PATH_LABEL;

const killSnapshotter = (sn: Snapshotter | undefined): Promise<void> => stopSnapshotter(sn, "SIGKILL");

function nixLabels(ref: string, paths: string[], manifest?: string): Record<string, string> {
  const labels: Record<string, string> = { [REF]: ref };
  paths.forEach((p, i) => (labels[`${SP}${i}`] = p));
  if (manifest) labels[MANIFEST_DIGEST_LABEL] = manifest;
  return labels;
}

const digest = (): string => `sha256:${randomBytes(32).toString("hex")}`;
const hex = (d: string): string => d.slice("sha256:".length);

/** The links of root `name` under `dir`: basename -> target. */
function links(dir: string, name: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of readdirSync(join(dir, name)).sort()) out[e] = readlinkSync(join(dir, name, e));
  return out;
}

const expected = (paths: string[]): Record<string, string> =>
  Object.fromEntries(paths.map((p) => [basename(p), p]).sort((a, b) => (a[0] < b[0] ? -1 : 1)));

/** `nix-store --delete PATH`: its exit status and output. */
function nixDelete(path: string): { status: number | null; output: string } {
  const r = spawnSync("nix-store", ["--delete", path], { encoding: "utf8", timeout: 60_000 });
  return { status: r.status, output: `${r.stdout}${r.stderr}` };
}

describe("snapshotter GC roots", () => {
  let fx: Record<FixtureAttr, string>;
  let dir: string;
  let sn: Snapshotter | undefined;
  let client: Client | undefined;
  let rootsDir: string;
  let victim: string;
  const args = ["--store", "/nix/store", "--nix-layers", "link"];

  before(async () => {
    fx = buildFixtures();
    dir = mkdtempSync(join("/tmp", "nixoci-sngc-"));
    rootsDir = gcRootsDir(join(dir, "root"), { realDir: "/nix/store", storeDir: "/nix/store" });
    // A throwaway store path nothing else roots.
    const nonce = randomBytes(8).toString("hex");
    const expr = `derivation { name = "gcroot-victim"; nonce = "${nonce}"; system = builtins.currentSystem;
      builder = "/bin/sh"; args = ["-c" "echo ${nonce} > $out"]; }`;
    victim = execFileSync("nix-build", ["--no-out-link", "-E", expr], {
      encoding: "utf8",
      timeout: 120_000,
    }).trim();
    sn = await startSnapshotter(dir, args);
    client = snapshotsClient(sn.socket);
  });
  after(async () => {
    client?.close();
    await killSnapshotter(sn);
    if (rootsDir) rmSync(rootsDir, { recursive: true, force: true });
    if (victim && existsSync(victim)) nixDelete(victim);
    if (dir) {
      assert.deepEqual(mountsUnder(dir), [], "no mount left");
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test(
    "one root per image, seen by Nix, held until the last snapshot goes",
    { timeout: 180_000 },
    async () => {
      const m1 = digest();
      const m2 = digest();
      const r1 = `manifest-${hex(m1)}`;
      const r2 = `manifest-${hex(m2)}`;
      const layer1 = [fx.hello, victim];
      const layer2 = [fx.greeting];

      // Image 1: two nix layers, one root holding both layers' paths.
      let p = await rpc(client!, "Prepare", { key: "extract l1", labels: nixLabels("l1", layer1, m1) });
      assert.equal(p.err, 6, `ALREADY_EXISTS: ${p.details}\n${tail(sn!.logFile)}`);
      assert.deepEqual(readdirSync(rootsDir), [r1]);
      assert.deepEqual(links(rootsDir, r1), expected(layer1), "the root holds exactly the layer's paths");
      p = await rpc(client!, "Prepare", {
        key: "extract l2",
        parent: "l1",
        labels: nixLabels("l2", layer2, m1),
      });
      assert.equal(p.err, 6, p.details);
      assert.deepEqual(readdirSync(rootsDir), [r1], "one root per image");
      assert.deepEqual(links(rootsDir, r1), expected([...layer1, ...layer2]));

      // Nix sees the root and will not delete the path.
      const roots = execFileSync("nix-store", ["-q", "--roots", victim], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "pipe"],
      });
      assert.ok(roots.includes(join(rootsDir, r1, basename(victim))), roots);
      const all = execFileSync("nix-store", ["--gc", "--print-roots"], {
        encoding: "utf8",
        maxBuffer: 64 << 20,
      });
      for (const path of [...layer1, ...layer2])
        assert.ok(all.includes(`${join(rootsDir, r1, basename(path))} -> ${path}`), path);
      let del = nixDelete(victim);
      assert.notEqual(del.status, 0, del.output);
      assert.match(del.output, /still alive/);
      assert.ok(existsSync(victim));

      // Image 2 shares layer 1 (ALREADY_EXISTS for its Prepare): its own root holds layer 1's paths.
      p = await rpc(client!, "Prepare", { key: "extract l1 again", labels: nixLabels("l1", layer1, m2) });
      assert.equal(p.err, 6, p.details);
      assert.deepEqual(readdirSync(rootsDir).sort(), [r1, r2].sort());
      assert.deepEqual(links(rootsDir, r2), expected(layer1));

      // A layer with no manifest digest label: a root of its own, named after its chain ID.
      const chain = digest();
      p = await rpc(client!, "Prepare", { key: "extract l3", labels: nixLabels(chain, [fx.busybox]) });
      assert.equal(p.err, 6, p.details);
      assert.deepEqual(links(rootsDir, `layer-${hex(chain)}`), expected([fx.busybox]));
      assert.equal((await rpc(client!, "Remove", { key: chain })).err, undefined);
      assert.equal(existsSync(join(rootsDir, `layer-${hex(chain)}`)), false, "its root went with it");

      // A container on image 1.
      const c = await rpc(client!, "Prepare", { key: "ctr", parent: "l2" });
      assert.equal(c.err, undefined, c.details);

      // SIGKILL + restart: the roots stay, as they were.
      const before = { [r1]: links(rootsDir, r1), [r2]: links(rootsDir, r2) };
      client!.close();
      await killSnapshotter(sn);
      sn = await startSnapshotter(dir, args);
      client = snapshotsClient(sn.socket);
      assert.deepEqual({ [r1]: links(rootsDir, r1), [r2]: links(rootsDir, r2) }, before);

      // Cleanup removes an orphan root (and a stray link in a live one), keeps the live ones.
      const orphan = `manifest-${"0".repeat(64)}`;
      mkdirSync(join(rootsDir, orphan));
      symlinkSync(fx.busybox, join(rootsDir, orphan, basename(fx.busybox)));
      symlinkSync(fx.busybox, join(rootsDir, r1, basename(fx.busybox)));
      assert.equal((await rpc(client!, "Cleanup", {})).err, undefined);
      assert.equal(existsSync(join(rootsDir, orphan)), false, "the orphan root is gone");
      assert.deepEqual({ [r1]: links(rootsDir, r1), [r2]: links(rootsDir, r2) }, before);

      // Removing snapshots: a root shrinks to what its remaining layers need, and goes with the last one.
      assert.equal((await rpc(client!, "Remove", { key: "l2" })).err, 9, "l2 has a child");
      assert.equal((await rpc(client!, "Remove", { key: "ctr" })).err, undefined);
      assert.equal((await rpc(client!, "Remove", { key: "l2" })).err, undefined);
      assert.deepEqual(links(rootsDir, r1), expected(layer1));
      del = nixDelete(victim);
      assert.notEqual(del.status, 0, "still rooted by l1");
      assert.equal((await rpc(client!, "Remove", { key: "l1" })).err, undefined);
      assert.equal(existsSync(rootsDir), false, "no root left");
      const free = execFileSync("nix-store", ["-q", "--roots", victim], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "pipe"],
      });
      assert.ok(!free.includes(rootsDir), free);
      del = nixDelete(victim);
      assert.equal(del.status, 0, del.output);
      assert.equal(existsSync(victim), false);
    },
  );

  test(
    "nix-closure-root labels: the root links the image roots that hold the layer's paths, else the paths",
    { timeout: 180_000 },
    async () => {
      // A throwaway path (`leaf`) and one referring to it (`top`), which nothing else roots.
      const nonce = randomBytes(8).toString("hex");
      const expr = `let leaf = derivation { name = "gcroot-leaf"; nonce = "${nonce}"; system = builtins.currentSystem;
          builder = "/bin/sh"; args = ["-c" "echo ${nonce} > $out"]; };
        in derivation { name = "gcroot-top"; system = builtins.currentSystem; builder = "/bin/sh";
          args = ["-c" "echo \${leaf} > $out"]; }`;
      const top = execFileSync("nix-build", ["--no-out-link", "-E", expr], { encoding: "utf8" }).trim();
      const refs = execFileSync("nix-store", ["-q", "--references", top], { encoding: "utf8" })
        .trim()
        .split("\n");
      const leaf = refs.find((r) => r !== top)!;
      assert.match(leaf, /-gcroot-leaf$/);
      const withRoots = (ref: string, paths: string[], roots: string[], m: string) => {
        const labels = nixLabels(ref, paths, m);
        roots.forEach((r, i) => (labels[`${NIX_CLOSURE_ROOT_ANNOTATION}.${i}`] = r));
        return labels;
      };
      try {
        const m = digest();
        const r = `manifest-${hex(m)}`;
        // Covered: the layer holds leaf, the label names top: one link, to top, and Nix keeps leaf.
        let p = await rpc(client!, "Prepare", {
          key: "extract c1",
          labels: withRoots("c1", [leaf], [top], m),
        });
        assert.equal(p.err, 6, `ALREADY_EXISTS: ${p.details}\n${tail(sn!.logFile)}`);
        assert.deepEqual(links(rootsDir, r), expected([top]));
        const del = nixDelete(leaf);
        assert.notEqual(del.status, 0, del.output);
        assert.match(del.output, /still alive/);
        // Not covered (busybox is not in top's closure): the layer's own paths.
        p = await rpc(client!, "Prepare", {
          key: "extract c2",
          parent: "c1",
          labels: withRoots("c2", [fx.busybox], [top], m),
        });
        assert.equal(p.err, 6, p.details);
        assert.deepEqual(links(rootsDir, r), expected([top, fx.busybox]));
        // A root that is not in the store: the paths.
        const m2 = digest();
        const missing = `/nix/store/${"0".repeat(32)}-not-here`;
        p = await rpc(client!, "Prepare", {
          key: "extract c1 again",
          labels: withRoots("c1", [leaf], [missing], m2),
        });
        assert.equal(p.err, 6, p.details);
        assert.deepEqual(links(rootsDir, `manifest-${hex(m2)}`), expected([leaf]));
        // Startup makes the directory match (links made per row, as recorded).
        const before = { [r]: links(rootsDir, r) };
        rmSync(join(rootsDir, r), { recursive: true });
        client!.close();
        await killSnapshotter(sn);
        sn = await startSnapshotter(dir, args);
        client = snapshotsClient(sn.socket);
        assert.deepEqual({ [r]: links(rootsDir, r) }, before);
        // Removal: c2 goes, busybox's link with it; c1 keeps top.
        assert.equal((await rpc(client!, "Remove", { key: "c2" })).err, undefined);
        assert.deepEqual(links(rootsDir, r), expected([top]));
        assert.equal((await rpc(client!, "Remove", { key: "c1" })).err, undefined);
        assert.equal(existsSync(rootsDir), false, "no root left");
      } finally {
        nixDelete(top);
        nixDelete(leaf);
      }
    },
  );
});

// The instance directory is derived from the snapshotter's root: distinct snapshotters never share roots.
test("gcRootsDir: per snapshotter under /nix/var/nix/gcroots for /nix/store, else under the root", () => {
  const a = gcRootsDir("/var/lib/a", { realDir: "/nix/store", storeDir: "/nix/store" });
  const b = gcRootsDir("/var/lib/b", { realDir: "/nix/store", storeDir: "/nix/store" });
  assert.match(a, /^\/nix\/var\/nix\/gcroots\/nixoci\/sn-[0-9a-f]{24}$/);
  assert.notEqual(a, b);
  assert.equal(
    a,
    `/nix/var/nix/gcroots/nixoci/sn-${createHash("sha256").update("/var/lib/a").digest("hex").slice(0, 24)}`,
  );
  assert.equal(
    gcRootsDir("/var/lib/a", { realDir: "/tmp/s/nix/store", storeDir: "/nix/store" }),
    "/var/lib/a/gcroots",
  );
});

// A node mounting /nix read-only from shared storage: Nix's gcroots directory cannot take roots (the store's
// owner keeps its paths), so they go under the snapshotter's root, and a pull does not fail on them.
test("gcRootsDir: Nix's gcroots directory on a read-only filesystem gives ROOT/gcroots", () => {
  const dir = mkdtempSync(join("/tmp", "nixoci-rogcroots-"));
  const gcroots = join(dir, "gcroots");
  mkdirSync(gcroots);
  execFileSync("mount", ["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", gcroots]);
  try {
    const store = { realDir: "/nix/store", storeDir: "/nix/store" };
    assert.equal(gcRootsDir("/var/lib/a", store, gcroots), "/var/lib/a/gcroots");
    // Not there yet, below a read-only directory: the same.
    assert.equal(gcRootsDir("/var/lib/a", store, join(gcroots, "missing/deeper")), "/var/lib/a/gcroots");
    // Writable: Nix's own.
    assert.match(gcRootsDir("/var/lib/a", store, join(dir, "rw")), /\/rw\/nixoci\/sn-[0-9a-f]{24}$/);
  } finally {
    execFileSync("umount", [gcroots]);
    rmSync(dir, { recursive: true, force: true });
  }
});
