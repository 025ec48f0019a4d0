// The layer bind and target modes build: an empty mountpoint per store path (a directory, an empty file for a
// file path, a copy of a symlink path), and its usage counted while building, equal to what walking it
// (diskUsage, as containerd's fs.DiskUsage) gives — on the disk's filesystem and on a tmpfs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { lstatSync, mkdirSync, mkdtempSync, readdirSync, readlinkSync, rmSync } from "node:fs";
import { join } from "node:path";
import { buildMountpointLayer } from "../../../src/servers/snapshotter/nix-layer-modes/layer-mode.js";
import { diskUsage } from "../../../src/servers/snapshotter/overlay.js";
import { buildFixtures } from "../../support/fixtures.js";

test("a mountpoint layer holds an empty mountpoint per path; its usage is the walked one", async () => {
  const fx = buildFixtures();
  const paths = [fx.hello, fx.busybox, fx["single-file"], fx["symlink-path"], fx["empty-dir"]];
  for (const parent of ["/tmp", "/dev/shm"]) {
    const fs = mkdtempSync(join(parent, "nixoci-mplayer-"));
    try {
      mkdirSync(join(fs, "nix/store"), { recursive: true });
      const layerPaths = paths.map((p) => {
        const baseName = p.slice("/nix/store/".length);
        return { real: p, target: join(fs, "nix/store", baseName), baseName };
      });
      const built = await buildMountpointLayer({ fs, storeDir: "/nix/store", paths: layerPaths });
      assert.equal(built.files, 0);
      assert.deepEqual(built.usage, await diskUsage(fs), parent);
      assert.equal(built.usage.inodes, paths.length + 3);
      for (const p of layerPaths) {
        const st = lstatSync(p.target);
        const real = lstatSync(p.real);
        if (real.isDirectory()) {
          assert.ok(st.isDirectory(), p.baseName);
          assert.deepEqual(readdirSync(p.target), [], `${p.baseName} is empty`);
        } else if (real.isSymbolicLink()) assert.equal(readlinkSync(p.target), readlinkSync(p.real));
        else assert.equal(st.size, 0, `${p.baseName} is an empty file`);
      }
    } finally {
      rmSync(fs, { recursive: true, force: true });
    }
  }
});
