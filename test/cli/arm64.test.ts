// Arm64 images on this amd64 machine: `nixoci build --arch arm64` of arm64 store paths (test/fixtures/arm64.nix),
// run by dockerd and containerd through qemu-user-static (registered by scripts/install-arm64-emulation.sh).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { nixociOk } from "../support/cli.js";
import { startContainerd, startDockerd, type Containerd, type Dockerd } from "../support/daemons.js";
import { buildArm64Fixtures } from "../support/fixtures.js";

const arm = buildArm64Fixtures();
const work = mkdtempSync(join(tmpdir(), "nixoci-arm64-test-"));
let dockerd: Dockerd;
let containerd: Containerd;

before(async () => {
  [dockerd, containerd] = await Promise.all([startDockerd(), startContainerd()]);
});
after(async () => {
  await Promise.allSettled([dockerd?.stop(), containerd?.stop()]);
  rmSync(work, { recursive: true, force: true });
});

const ARGS = [
  "-q",
  "--cache-dir",
  join(work, "cache"),
  "--arch",
  "arm64",
  "--entrypoint",
  "/bin/hello",
  arm.hello,
];

test("the image says arm64 and runs its arm64 binaries in dockerd (--platform linux/arm64)", () => {
  const archive = nixociOk(["build", ...ARGS, "--tag", "hello-arm64:test", "-"]).stdout;
  dockerd.docker(["load"], { input: archive });
  const [inspect] = JSON.parse(dockerd.docker(["image", "inspect", "hello-arm64:test"]).toString()) as Array<{
    Architecture: string;
    Os: string;
  }>;
  assert.deepEqual([inspect.Os, inspect.Architecture], ["linux", "arm64"]);
  const out = dockerd.docker([
    "run",
    "--rm",
    "--network",
    "none",
    "--platform",
    "linux/arm64",
    "hello-arm64:test",
  ]);
  assert.equal(out.toString().trim(), "Hello from aarch64");
});

test("containerd imports it for linux/arm64 and runs it", () => {
  const file = join(work, "hello-arm64.oci.tar");
  nixociOk(["build", ...ARGS, "-o", `oci-archive:${file}:v1`]);
  containerd.ctr([
    "images",
    "import",
    "--platform",
    "linux/arm64",
    "--base-name",
    "nixoci/hello-arm64",
    file,
  ]);
  const ref = containerd
    .ctr(["images", "ls", "-q"])
    .toString()
    .trim()
    .split("\n")
    .find((i) => i.startsWith("nixoci/hello-arm64"));
  assert.ok(ref, "imported");
  const out = containerd.ctr(["run", "--rm", "--platform", "linux/arm64", ref, "hello-arm64"]);
  assert.equal(out.toString().trim(), "Hello from aarch64");
});
