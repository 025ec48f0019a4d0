// Target-mode layers on a node whose containerd no longer mounts a mount's target (auto mode: a downgrade to 1.6,
// or a snapshotter root moved to such a node). With --target-mounts binds, containerd 1.6 would stack the store
// paths' binds on the rootfs itself, so a container or view above such layers is refused with
// FAILED_PRECONDITION and one line saying what to do, and nothing is left behind; the unpacker's Prepares above
// them still work (images keep unpacking), and with the node back on 1.7+ the same chain serves containers again.
// With store views (the default) 1.6 serves them: one overlay, no Mount.target. The snapshotter is told the
// release with --containerd-version (what it would learn from containerd's Version API); gRPC calls as
// containerd makes them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { snapshotsClient } from "../../../src/proto/containerd.js";
import { buildFixtures } from "../../support/fixtures.js";
import {
  REF_LABEL,
  STORE_PATH_LABEL,
  removeSnapshotterDir,
  rpc,
  shortTempDir,
  startSnapshotter,
  stopSnapshotter,
  tail,
  type Client,
  type Snapshotter,
} from "../../support/snapshotter.js";
import { mountsUnder } from "../../support/daemons.js";

test("after a downgrade to containerd 1.6, containers above target layers are refused with binds, served with views; 1.7 again serves them", async () => {
  const fx = buildFixtures();
  const dir = shortTempDir("sndown");
  let sn: Snapshotter | undefined;
  let client: Client | undefined;
  const start = async (release: string, targetMounts = "binds"): Promise<void> => {
    client?.close();
    await stopSnapshotter(sn);
    sn = await startSnapshotter(dir, [
      "--store",
      "/nix/store",
      "--trust-layer-labels", // made-up chain IDs (the layer check has tests of its own in nix-layers.test)
      "--containerd-version",
      release,
      "--target-mounts",
      targetMounts,
    ]);
    client = snapshotsClient(sn.socket) as Client;
  };
  try {
    await start("2.1");
    const labels = { [REF_LABEL]: "l1", [`${STORE_PATH_LABEL}0`]: fx.hello };
    const made = await rpc(client!, "Prepare", { key: "extract l1", labels });
    assert.equal(made.err, 6, `ALREADY_EXISTS: ${made.details}\n${tail(sn!.logFile)}`);
    const c1 = await rpc(client!, "Prepare", { key: "c1", parent: "l1" });
    assert.equal(c1.err, undefined, c1.details);
    const mounts = (c1.mounts as { type: string; target?: string }[]).map((m) => [m.type, m.target ?? ""]);
    assert.deepEqual(
      mounts,
      [
        ["overlay", ""],
        ["bind", fx.hello],
      ],
      "target mode: the overlay and a bind",
    );
    assert.equal((await rpc(client!, "Remove", { key: "c1" })).err, undefined);

    await start("1.6");
    const refusal = (key: string) =>
      `snapshot ${JSON.stringify(key)}: its image's store layers are target-mode (bind mounts containerd >= 1.7 ` +
      `makes), and this node's containerd does not mount a mount's target; remove the image and pull it again`;
    const c2 = await rpc(client!, "Prepare", { key: "c2", parent: "l1" });
    assert.equal(c2.err, 9, "FAILED_PRECONDITION");
    assert.equal(c2.details, refusal("c2"));
    assert.equal((await rpc(client!, "Stat", { key: "c2" })).err, 5, "nothing left behind");
    const v = await rpc(client!, "View", { key: "v", parent: "l1" });
    assert.equal(v.err, 9);
    assert.equal(v.details, refusal("v"));
    // The unpacker's Prepare of an ordinary layer above it (what a pull of another image does) still works.
    const up = await rpc(client!, "Prepare", {
      key: "extract-1 l2",
      parent: "l1",
      labels: { [REF_LABEL]: "l2" },
    });
    assert.equal(up.err, undefined, up.details);
    assert.equal((await rpc(client!, "Remove", { key: "extract-1 l2" })).err, undefined);

    await start("1.6", "auto");
    const c4 = await rpc(client!, "Prepare", { key: "c4", parent: "l1" });
    assert.equal(c4.err, undefined, c4.details);
    const viewMounts = c4.mounts as { type: string; target?: string; options: string[] }[];
    assert.deepEqual(
      viewMounts.map((m) => [m.type, m.target ?? ""]),
      [["overlay", ""]],
      "views: one overlay, nothing for Mount.target",
    );
    assert.match(
      viewMounts[0].options.join(","),
      /lowerdir=\/dev\/shm\/nixoci-sn-[0-9a-f]+\/v\d+\/view\/root(?:[:,]|$)/,
    );
    assert.equal((await rpc(client!, "Remove", { key: "c4" })).err, undefined);

    await start("1.7");
    const c3 = await rpc(client!, "Prepare", { key: "c3", parent: "l1" });
    assert.equal(c3.err, undefined, c3.details);
    assert.equal((await rpc(client!, "Remove", { key: "c3" })).err, undefined);
    assert.equal((await rpc(client!, "Remove", { key: "l1" })).err, undefined);
  } finally {
    client?.close();
    await stopSnapshotter(sn);
    assert.deepEqual(mountsUnder(dir), [], "the snapshotter mounts nothing");
    await removeSnapshotterDir(join(dir));
  }
});
