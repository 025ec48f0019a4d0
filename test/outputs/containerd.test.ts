// Pushed and archived images in a real containerd (NIXOCI_CONTAINERD: 1.6 by default; ctr pull/import, ctr run with runc).
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import type { BuiltImage } from "../../src/oci/image.js";
import { parseOutputRef, writeOutput } from "../../src/outputs/outputs.js";
import {
  mountsUnder,
  processesUnder,
  startContainerd,
  startRegistry,
  type Containerd,
  type Registry,
} from "../support/daemons.js";
import { makeTempDir } from "../support/fixtures.js";
import { makeImage } from "../support/make-image.js";
import { containerdUnderTest } from "../support/containerd-release.js";

process.env.XDG_CACHE_HOME = makeTempDir("oci-xdg");

describe(`containerd ${containerdUnderTest().series}`, () => {
  let containerd: Containerd;
  let registry: Registry;
  let image: BuiltImage;
  before(async () => {
    [containerd, registry, image] = await Promise.all([startContainerd(), startRegistry(), makeImage()]);
  });
  after(async () => {
    await Promise.all([containerd?.stop(), registry?.stop()]);
  });

  test("ctr pulls the pushed image over plain HTTP and runs it", { timeout: 180_000 }, async () => {
    const ref = `${registry.host}/nixoci/ctr:v1`;
    await writeOutput(image, parseOutputRef(`docker://${ref}`), {});
    containerd.ctr(["images", "pull", "--plain-http", ref]);
    const list = containerd.ctr(["images", "ls"]).toString();
    assert.match(
      list,
      new RegExp(
        `${ref.replace(/[.]/g, "\\.")}\\s+application/vnd\\.oci\\.image\\.manifest\\.v1\\+json\\s+${image.manifest.digest}`,
      ),
    );
    const out = containerd.ctr(["run", "--rm", ref, "nixoci-ctr-1"]).toString();
    assert.equal(out, "hello from nixoci\n");
  });

  test("ctr imports the oci-archive and the docker-archive", { timeout: 180_000 }, async () => {
    const tmp = makeTempDir("oci-ctr-import");
    await writeOutput(image, parseOutputRef(`oci-archive:${join(tmp, "oci.tar")}:v1`), {});
    // An OCI archive's ref.name is a bare tag; --base-name makes it a full name.
    containerd.ctr(["images", "import", "--base-name", "nixoci/oci-import", join(tmp, "oci.tar")]);
    assert.equal(
      containerd.ctr(["run", "--rm", "nixoci/oci-import:v1", "nixoci-ctr-2"]).toString(),
      "hello from nixoci\n",
    );
    await writeOutput(
      image,
      parseOutputRef(`docker-archive:${join(tmp, "docker.tar")}:nixoci/docker-import:v1`),
      {},
    );
    containerd.ctr(["images", "import", join(tmp, "docker.tar")]);
    assert.equal(
      containerd.ctr(["run", "--rm", "docker.io/nixoci/docker-import:v1", "nixoci-ctr-3"]).toString(),
      "hello from nixoci\n",
    );
  });
});

test(
  `stopping containerd ${containerdUnderTest().series} leaves no process, mount or directory`,
  { timeout: 120_000 },
  async () => {
    const c = await startContainerd();
    const dir = dirname(c.root);
    assert.ok(processesUnder(dir).length >= 1);
    await c.stop();
    assert.deepEqual(processesUnder(dir), []);
    assert.deepEqual(mountsUnder(dir), []);
    assert.equal(existsSync(dir), false);
  },
);
