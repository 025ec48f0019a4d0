// The docker-archive loaded into a real dockerd 20.10 and run; a pushed image pulled by dockerd.
import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { PassThrough } from "node:stream";
import { writeDockerArchive } from "../../src/outputs/archive.js";
import type { BuiltImage } from "../../src/oci/image.js";
import { parseOutputRef, writeOutput } from "../../src/outputs/outputs.js";
import {
  mountsUnder,
  processesUnder,
  startDockerd,
  startRegistry,
  type Dockerd,
  type Registry,
} from "../support/daemons.js";
import { makeTempDir } from "../support/fixtures.js";
import { makeImage } from "../support/make-image.js";

process.env.XDG_CACHE_HOME = makeTempDir("oci-xdg");

describe("dockerd", () => {
  let dockerd: Dockerd;
  let registry: Registry;
  let image: BuiltImage;
  before(async () => {
    [dockerd, registry, image] = await Promise.all([startDockerd(), startRegistry(), makeImage()]);
  });
  after(async () => {
    await Promise.all([dockerd?.stop(), registry?.stop()]);
  });

  test(
    "docker load of the docker-archive, then docker run prints hello.txt",
    { timeout: 180_000 },
    async () => {
      const file = join(makeTempDir("oci-docker"), "img.tar");
      await writeOutput(image, parseOutputRef(`docker-archive:${file}:nixoci/hello:v1`), {});
      const loaded = dockerd.docker(["load", "-i", file]).toString();
      assert.match(loaded, /Loaded image: nixoci\/hello:v1/);
      // The image ID is the config digest.
      const id = dockerd
        .docker(["image", "inspect", "--format", "{{.Id}}", "nixoci/hello:v1"])
        .toString()
        .trim();
      assert.equal(id, image.config.digest);
      const out = dockerd.docker(["run", "--rm", "--network", "none", "nixoci/hello:v1"]).toString();
      assert.equal(out, "hello from nixoci\n");
    },
  );

  test(
    "docker load from a stream (what `nixoci ... -` pipes), untagged then tagged",
    { timeout: 180_000 },
    async () => {
      const other = await makeImage({ hello: "streamed\n", blobs: image.blobs });
      const sink = new PassThrough();
      const chunks: Buffer[] = [];
      sink.on("data", (c: Buffer) => chunks.push(c));
      await writeDockerArchive(other, sink, []);
      const loaded = dockerd.docker(["load"], { input: Buffer.concat(chunks) }).toString();
      assert.match(loaded, new RegExp(`Loaded image ID: ${other.config.digest}`));
      assert.equal(
        dockerd.docker(["run", "--rm", "--network", "none", other.config.digest]).toString(),
        "streamed\n",
      );
    },
  );

  test("docker pull of the pushed OCI image from docker-registry", { timeout: 180_000 }, async () => {
    const ref = `${registry.host}/nixoci/pulled:v1`;
    await writeOutput(image, parseOutputRef(`docker://${ref}`), {});
    // 127.0.0.0/8 registries are insecure (plain HTTP) for dockerd by default.
    dockerd.docker(["pull", ref]);
    const digests = dockerd.docker(["image", "inspect", "--format", "{{json .RepoDigests}}", ref]).toString();
    assert.deepEqual(JSON.parse(digests), [`${registry.host}/nixoci/pulled@${image.manifest.digest}`]);
    assert.equal(dockerd.docker(["run", "--rm", "--network", "none", ref]).toString(), "hello from nixoci\n");
  });

  test("dockerd's log is readable", () => {
    assert.match(dockerd.log(), /API listen on/);
  });
});

test(
  "stopping dockerd also ends its containerd; no mount or directory is left",
  { timeout: 120_000 },
  async () => {
    const d = await startDockerd();
    const dir = dirname(d.host);
    // dockerd and the containerd it started (its command line names the config under the exec root).
    assert.ok(processesUnder(dir).length >= 2, JSON.stringify(processesUnder(dir)));
    await d.stop();
    assert.deepEqual(processesUnder(dir), []);
    assert.deepEqual(mountsUnder(dir), []);
    assert.equal(existsSync(dir), false);
  },
);
