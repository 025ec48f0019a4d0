// Platforms as containerd and Docker compare them: the default variants (arm64/v8, amd64/v1, arm/v7) are the
// same platform written two ways, both when an index is searched and when a build names a platform twice.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  canonicalPlatform,
  checkPlatforms,
  parsePlatform,
  platformMatches,
} from "../../src/image/platforms.js";

const p = (s: string) => parsePlatform(s, "test");

test("an index entry matches the platform asked for, default variants written either way", () => {
  const cases: Array<[string, string, boolean]> = [
    ["linux/arm64", "linux/arm64/v8", true],
    ["linux/arm64/v8", "linux/arm64", true],
    ["linux/arm64/v9", "linux/arm64", true],
    ["linux/arm64/v9", "linux/arm64/v8", false],
    ["linux/amd64", "linux/amd64/v1", true],
    ["linux/amd64/v2", "linux/amd64/v1", false],
    ["linux/amd64/v2", "linux/amd64/v2", true],
    ["linux/arm", "linux/arm/v7", true],
    ["linux/arm/v7", "linux/arm", true],
    ["linux/arm/v6", "linux/arm/v7", false],
    ["linux/arm/v6", "linux/arm", true],
    ["linux/amd64", "linux/arm64", false],
    ["windows/amd64", "linux/amd64", false],
  ];
  for (const [have, want, expected] of cases)
    assert.equal(platformMatches(p(have), p(want)), expected, `${have} for ${want}`);
  assert.deepEqual(canonicalPlatform(p("linux/arm")), { os: "linux", architecture: "arm", variant: "v7" });
  assert.deepEqual(canonicalPlatform(p("linux/riscv64")), { os: "linux", architecture: "riscv64" });
});

test("a platform written twice in a build is refused, whichever way", () => {
  const build = (...platforms: string[]) =>
    checkPlatforms(
      platforms.map((s) => ({ platform: p(s), packages: ["/nix/store/x"] })),
      "--platform",
    );
  for (const [a, b] of [
    ["linux/arm64", "linux/arm64/v8"],
    ["linux/amd64", "linux/amd64/v1"],
    ["linux/arm", "linux/arm/v7"],
  ])
    assert.throws(() => build(a, b), new RegExp(`${a} and ${b} are the same platform: give it once`));
  assert.equal(build("linux/arm/v6", "linux/arm/v7", "linux/amd64", "linux/amd64/v2").length, 4);
});
