// A nix layer fetched by the snapshotter itself (layer-fetch.ts), from a real docker-registry holding an image
// `nixoci build` pushed: the tree equals the store's, and every check refuses what it should (a blob of another
// chain, a layer outside the store directory, an unknown blob, an unreachable registry) with nothing written.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, lstatSync, rmSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { fetchLayerTree, layerSource } from "../../../src/servers/snapshotter/layer-fetch.js";
import { chainIdOf } from "../../../src/oci/digest.js";
import { chainIds, layerStorePaths, pushNixociImage, type PushedImage } from "../../support/cri.js";
import { startRegistry, type Registry } from "../../support/daemons.js";
import { addNotUtf8Path, buildFixtures, type FixtureAttr } from "../../support/fixtures.js";

let fx: Record<FixtureAttr, string>;
let registry: Registry | undefined;
let image: PushedImage;
let work: string;
const dump = (p: string): Buffer => execFileSync("nix-store", ["--dump", p], { maxBuffer: 1 << 28 });

before(async () => {
  fx = buildFixtures();
  work = mkdtempSync(join(tmpdir(), "nixoci-layer-fetch-"));
  registry = await startRegistry();
  image = pushNixociImage(registry, {
    installables: [fx.hello],
    repo: "nixoci/layer-fetch",
    workDir: work,
    buildArgs: ["--max-layers", "4"],
  });
});

after(async () => {
  await registry?.stop();
  rmSync(work, { recursive: true, force: true });
});

/** Every entry under dir: relative path -> "d MODE", "f MODE CONTENT" or "l TARGET". */
function tree(dir: string, rel = ""): Map<string, string> {
  const out = new Map<string, string>();
  for (const name of readdirSync(join(dir, rel)).sort()) {
    const r = join(rel, name);
    const st = lstatSync(join(dir, r));
    const mode = (st.mode & 0o7777).toString(8);
    if (st.isDirectory()) {
      out.set(r, `d ${mode}`);
      for (const [k, v] of tree(dir, r)) out.set(k, v);
    } else if (st.isSymbolicLink()) out.set(r, `l ${readlinkSync(join(dir, r))}`);
    else out.set(r, `f ${mode} ${readFileSync(join(dir, r)).toString("base64")}`);
  }
  return out;
}

const fetchInto = (i: number, over: { digest?: string; parent?: string; imageRef?: string } = {}) => {
  const dir = mkdtempSync(join(work, "fs-"));
  const chains = chainIds(image.diffIds);
  const done = fetchLayerTree({
    imageRef: over.imageRef ?? image.ref,
    digest: over.digest ?? image.layers[i].digest,
    parent: over.parent ?? (i ? chains[i - 1] : ""),
    chainId: chains[i],
    storeDir: "/nix/store",
    dir,
  });
  return { dir, done };
};

test("a store layer's tree, as the store has it, checked against its chain ID", async () => {
  const i = image.layers.findIndex((l, j) => j > 0 && layerStorePaths(l).length > 0);
  assert.ok(i > 0, "a store layer above the bottom one");
  const { dir, done } = fetchInto(i);
  assert.deepEqual(await done, { bytes: image.layers[i].size });
  const got = tree(join(dir, "nix/store"));
  const want = new Map<string, string>();
  for (const p of layerStorePaths(image.layers[i])) {
    const st = lstatSync(p);
    want.set(
      basename(p),
      st.isSymbolicLink() ? `l ${readlinkSync(p)}` : `d ${(st.mode & 0o7777).toString(8)}`,
    );
    for (const [k, v] of tree("/nix/store", basename(p))) want.set(k, v);
  }
  assert.ok(want.size > 1);
  assert.deepEqual(got, want);
  assert.equal(chainIdOf("", image.diffIds[0]), chainIds(image.diffIds)[0]);
});

test("layers with absolute symlinks and names that are not UTF-8 come out as the store has them", async () => {
  // fx.tree links to absolute paths (node-tar, used before, refused those); the other path's names are not UTF-8.
  const notUtf8 = addNotUtf8Path(work);
  const awkward = pushNixociImage(registry!, {
    installables: [fx.tree, notUtf8],
    repo: "nixoci/layer-fetch-awkward",
    workDir: work,
  });
  const chains = chainIds(awkward.diffIds);
  for (const path of [fx.tree, notUtf8]) {
    const i = awkward.layers.findIndex((l) => layerStorePaths(l).includes(path));
    assert.ok(i >= 0, path);
    const dir = mkdtempSync(join(work, "fs-awkward-"));
    await fetchLayerTree({
      imageRef: awkward.ref,
      digest: awkward.layers[i].digest,
      parent: i ? chains[i - 1] : "",
      chainId: chains[i],
      storeDir: "/nix/store",
      dir,
    });
    for (const p of layerStorePaths(awkward.layers[i])) assert.ok(dump(join(dir, p)).equals(dump(p)), p);
  }
});

test("refused: another chain's blob, a layer outside the store, a missing blob, no registry", async () => {
  const top = image.layers.length - 1; // the customisation layer: /bin, /etc...
  const cases: [() => ReturnType<typeof fetchInto>, RegExp][] = [
    [() => fetchInto(1, { digest: image.layers[0].digest }), /does not make the snapshot sha256:/],
    [() => fetchInto(1, { parent: chainIds(image.diffIds)[1] }), /does not make the snapshot/],
    [() => fetchInto(top), /is outside \/nix\/store/],
    [() => fetchInto(1, { digest: `sha256:${"0".repeat(64)}` }), /no such blob/],
    [() => fetchInto(1, { digest: "sha256:../../etc" }), /not a sha256 layer digest/],
    [() => fetchInto(1, { imageRef: "127.0.0.1:1/nixoci/layer-fetch:v1" }), /127\.0\.0\.1:1/],
  ];
  for (const [start, why] of cases) {
    const { dir, done } = start();
    await assert.rejects(done, why);
    // Nothing written outside the store directory (a refused layer's directory is the caller's to remove).
    assert.deepEqual(
      readdirSync(dir).filter((n) => n !== "nix"),
      [],
    );
  }
});

test("where a layer comes from: CRI's labels, or nothing", () => {
  assert.deepEqual(
    layerSource({
      "containerd.io/snapshot/cri.image-ref": "h:5000/a:b",
      "containerd.io/snapshot/cri.layer-digest": "sha256:x",
    }),
    { imageRef: "h:5000/a:b", digest: "sha256:x" },
  );
  assert.equal(layerSource({ "containerd.io/snapshot/cri.image-ref": "h:5000/a:b" }), undefined);
});
