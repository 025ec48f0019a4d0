// What the drills found, checked directly: the temporaries a killed `nixoci build` or `nixoci substitute` left
// (names ".NAME.tmp-<pid>-<12 hex>" whose writer is gone) are removed by the next run that writes there — in an
// OCI layout and its blobs, beside an archive (only that archive's), in the layer cache, in the Nix store for
// nix: outputs, in TMPDIR (--no-cache caches and nix: descriptions being assembled), in a substitution's target
// store directory — while a live process's temporaries and unrelated names stay.
import { test, before } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { buildFixtures, makeSignedNixCache, makeTempDir, type FixtureAttr } from "../support/fixtures.js";
import { nixociOk } from "../support/cli.js";
import { deadPid, runText } from "../support/run.js";
import { checkOciArchive, checkOciLayout, entries, privateTmpdir, substituteArgs } from "../support/drill.js";

let fx: Record<FixtureAttr, string>;
let dead: number;
before(() => {
  fx = buildFixtures();
  dead = deadPid();
});

/** A temporary file or tree `name` in `dir` (a tree when `tree`: a read-only directory with a file). */
function plant(dir: string, name: string, tree = false): string {
  mkdirSync(dir, { recursive: true });
  const p = join(dir, name);
  if (tree) {
    mkdirSync(join(p, "sub"), { recursive: true });
    writeFileSync(join(p, "sub", "f"), "x");
  } else writeFileSync(p, "partial");
  return name;
}

const tmpName = (base: string, pid: number, hex = "0123456789ab"): string => `.${base}.tmp-${pid}-${hex}`;

test("build -o oci: removes a killed build's temporaries from the layout and the layer cache", () => {
  const work = makeTempDir("temps-oci");
  const layout = join(work, "layout");
  const cache = join(work, "cache");
  const blobs = join(layout, "blobs/sha256");
  nixociOk(["build", "-q", "--cache-dir", cache, fx.greeting, "-o", `oci:${layout}:v0`]);
  const hex = "a".repeat(64);
  const gone = [
    [layout, plant(layout, tmpName("index.json", dead))],
    [layout, plant(layout, tmpName("oci-layout", dead))],
    [blobs, plant(blobs, tmpName(hex, dead))],
    [join(cache, "blobs/sha256"), plant(join(cache, "blobs/sha256"), tmpName("upload", dead))],
    [join(cache, "layers"), plant(join(cache, "layers"), tmpName(`${"b".repeat(64)}.json`, dead))],
    [join(cache, "images"), plant(join(cache, "images"), tmpName(`${"c".repeat(64)}.json`, dead))],
  ];
  const kept = [
    [blobs, plant(blobs, tmpName(hex, process.pid))], // a live writer's
    [join(cache, "blobs/sha256"), plant(join(cache, "blobs/sha256"), `.upload.tmp-${dead}-xyz`)], // not a temporary's name
  ];
  nixociOk(["build", "-q", "--cache-dir", cache, fx.hello, "-o", `oci:${layout}:v1`]);
  for (const [dir, name] of gone) assert.ok(!existsSync(join(dir, name)), `${dir}/${name} removed`);
  for (const [dir, name] of kept) assert.ok(existsSync(join(dir, name)), `${dir}/${name} kept`);
  rmSync(join(blobs, tmpName(hex, process.pid)));
  assert.deepEqual([...checkOciLayout(layout)!.keys()].sort(), ["v0", "v1"]);
});

test("build -o oci: writes a new layout whole under a temporary name; a killed one's goes with the next", () => {
  const work = makeTempDir("temps-new-layout");
  const gone = plant(work, tmpName("layout", dead), true);
  const kept = [plant(work, tmpName("layout", process.pid), true), plant(work, tmpName("other", dead), true)];
  // An empty directory is a new layout too.
  mkdirSync(join(work, "empty"));
  nixociOk([
    "build",
    "-q",
    fx.hello,
    "-o",
    `oci:${join(work, "layout")}:v1`,
    "-o",
    `oci:${join(work, "empty")}`,
  ]);
  assert.ok(!existsSync(join(work, gone)));
  assert.deepEqual(entries(work), [...kept, "empty", "layout"].sort());
  assert.ok(checkOciLayout(join(work, "layout"))?.has("v1"));
  assert.ok(checkOciLayout(join(work, "empty")));
});

test("build -o oci-archive: removes that archive's temporaries beside it, and only those", () => {
  const dir = makeTempDir("temps-archive");
  const gone = [plant(dir, tmpName("img.tar", dead)), plant(dir, tmpName("img.tar", dead, "ba9876543210"))];
  const kept = [
    plant(dir, tmpName("other.tar", dead)), // another file's
    plant(dir, tmpName("img.tar", process.pid)), // a live writer's
  ];
  nixociOk(["build", "-q", fx.hello, "-o", `oci-archive:${join(dir, "img.tar")}:v1`]);
  for (const n of gone) assert.ok(!existsSync(join(dir, n)), `${n} removed`);
  assert.deepEqual(entries(dir), [...kept, "img.tar"].sort());
  assert.ok(checkOciArchive(join(dir, "img.tar"), "v1"));
});

test("build --no-cache and -o nix: remove killed builds' work directories from TMPDIR and the store", () => {
  const tmp = privateTmpdir("temps-nix");
  const gone = [
    plant(tmp, `nixoci-nocache.tmp-${dead}-0123456789ab`, true),
    plant(tmp, `nixoci-nix-image.tmp-${dead}-0123456789ab`, true),
  ];
  const kept = [
    plant(tmp, `nixoci-nix-image.tmp-${process.pid}-0123456789ab`, true), // a live process's
    plant(tmp, `other.tmp-${dead}-0123456789ab`, true), // not ours
  ];
  // In the store: what a killed addPath of the description left (a fake hash part: nothing else has it).
  const storeTemp = plant("/nix/store", `.${"0".repeat(32)}.tmp-${dead}-0123456789ab`, true);
  try {
    const name = `nixoci-temps-${process.pid}`;
    const r = nixociOk(["build", "-q", "--no-cache", fx.hello, "-o", `nix:${name}`], {
      env: { TMPDIR: tmp },
    });
    const path = r.text.trim().split("\n").pop()!;
    assert.equal(basename(path).slice(33), name);
    runText("nix-store", ["--verify-path", path]);
    runText("nix-store", ["--delete", path]);
    assert.ok(!existsSync(join("/nix/store", storeTemp)), `${storeTemp} removed from the store`);
    assert.deepEqual(entries(tmp), kept.sort());
    for (const n of gone) assert.ok(!existsSync(join(tmp, n)));
  } finally {
    rmSync(join("/nix/store", storeTemp), { recursive: true, force: true });
  }
});

test("substitute removes what killed substitutions left in the target store directory", () => {
  const work = makeTempDir("temps-substitute");
  const { url: cache, key } = makeSignedNixCache(work, "temps-test", [fx.hello]);
  const store = join(work, "store");
  const hash = basename(fx.greeting).slice(0, 32);
  const gone = [plant(store, `.${hash}.tmp-${dead}-0123456789ab`, true)];
  const kept = [plant(store, `.${hash}.tmp-${process.pid}-0123456789ab`, true)];
  nixociOk(substituteArgs(cache, key.publicKey, store, [fx.hello]));
  for (const n of gone) assert.ok(!existsSync(join(store, n)), `${n} removed`);
  for (const n of kept) assert.ok(existsSync(join(store, n)), `${n} kept`);
  assert.ok(existsSync(join(store, basename(fx.hello))));
});
