// The frontend's fetch step realises store paths from binary caches: a NAR whose bytes differ from its signed
// NarHash must be refused even though the restorer has everything it needs before the stream ends.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  closureFromNixJson,
  customStep,
  fetchStep,
  layerDir,
  openCaches,
  parseStepLayers,
  planStep,
} from "../../../src/servers/buildkit/steps.js";
import { parseHash } from "../../../src/nix/hash.js";
import { parsePublicKey } from "../../../src/nix/signature.js";
import { buildFixtures, generateCacheKey, makeNixCache, makeTempDir } from "../../support/fixtures.js";
import { run } from "../../support/run.js";

const fx = buildFixtures();

/** A signed, uncompressed cache of `path` whose NAR has one content byte changed (same size, same NarHash line). */
function tamperedCache(path: string): { url: string; publicKey: string } {
  const dir = makeTempDir("fetch-step-cache");
  const key = generateCacheKey("fetch-step", join(dir, "key"));
  const cache = join(dir, "cache");
  const url = makeNixCache({
    paths: [path],
    dir: cache,
    compression: "none",
    secretKeyFile: key.secretKeyFile,
  });
  const hashPart = path.slice("/nix/store/".length, "/nix/store/".length + 32);
  const narinfo = readFileSync(join(cache, `${hashPart}.narinfo`), "utf8");
  const narFile = join(cache, /^URL: (.*)$/m.exec(narinfo)![1]);
  const nar = readFileSync(narFile);
  const at = nar.indexOf("Hello");
  assert.ok(at > 0, "the fixture's NAR holds a greeting to change");
  nar[at] ^= 0x20; // "hello": same length, a different NarHash
  writeFileSync(narFile, nar);
  return { url, publicKey: key.publicKey };
}

test("fetchStep refuses a NAR whose bytes do not match its signed NarHash and leaves nothing", async () => {
  const { url, publicKey } = tamperedCache(fx.greeting);
  const caches = await openCaches([url], { trustedKeys: [parsePublicKey(publicKey)] }, "/nix/store");
  const out = makeTempDir("fetch-step-out");
  try {
    await assert.rejects(fetchStep([{ dir: "", paths: [fx.greeting] }], caches, out), /NAR hash mismatch/);
  } finally {
    caches.close();
  }
  const storeDir = join(out, "nix/store");
  assert.deepEqual(existsSync(storeDir) ? readdirSync(storeDir) : [], []);
});

test("fetchStep realises untampered paths, equal to the store's, one layer or a batch of layers each in its directory", async () => {
  const dir = makeTempDir("fetch-step-good");
  const key = generateCacheKey("fetch-step", join(dir, "key"));
  const url = makeNixCache({
    paths: [fx.greeting, fx.hello],
    dir: join(dir, "cache"),
    compression: "xz",
    secretKeyFile: key.secretKeyFile,
  });
  const caches = await openCaches([url], { trustedKeys: [parsePublicKey(key.publicKey)] }, "/nix/store");
  const out = join(dir, "out");
  const batch = join(dir, "batch");
  const [a, b] = [layerDir([fx.greeting]), layerDir([fx.hello])];
  try {
    await fetchStep(parseStepLayers([fx.greeting]), caches, out);
    await fetchStep(parseStepLayers([`${a}=${fx.greeting}`, `${b}=${fx.hello}`]), caches, batch);
  } finally {
    caches.close();
  }
  for (const [tree, path] of [
    [join(out, fx.greeting), fx.greeting],
    [join(batch, a, fx.greeting), fx.greeting],
    [join(batch, b, fx.hello), fx.hello],
  ])
    assert.deepEqual(run("nix-store", ["--dump", tree]), run("nix-store", ["--dump", path]));
  assert.deepEqual(readdirSync(batch).sort(), [a, b].sort(), "nothing but the layers' directories");
  assert.deepEqual(readdirSync(join(batch, a, "nix/store")), [fx.greeting.slice("/nix/store/".length)]);
});

test("step arguments: DIR=PATH,... layers or plain paths; malformed ones named", () => {
  const p = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x=y";
  assert.deepEqual(parseStepLayers([p]), [{ dir: "", paths: [p] }]);
  assert.deepEqual(parseStepLayers([`0a=${p},${p}2`]), [{ dir: "0a", paths: [p, `${p}2`] }]);
  assert.deepEqual(parseStepLayers([]), []);
  const bad: Array<[string[], string]> = [
    [[`0a=${p}`, p], `${p}: mixes plain store paths with DIR=PATH,... layers`],
    [[`../x=${p}`], `../x=${p}: a layer's directory must be lowercase hex`],
    [[`=${p}`], `=${p}: a layer's directory must be lowercase hex`],
    [["0A=" + p], `0A=${p}: a layer's directory must be lowercase hex`],
    [["0a="], "0a=: a layer with no store paths"],
    [["0a"], "0a: a layer with no store paths"],
    [["0a=,"], "0a=,: a layer with no store paths"],
  ];
  for (const [args, message] of bad)
    assert.throws(
      () => parseStepLayers(args),
      (err: Error) => err.message === message,
      args.join(" "),
    );
  // A layer's directory depends on its set of paths only.
  assert.equal(layerDir([fx.hello, fx.greeting]), layerDir([fx.greeting, fx.hello]));
  assert.notEqual(layerDir([fx.hello]), layerDir([fx.greeting]));
  assert.match(layerDir([fx.hello]), /^[0-9a-f]{20}$/);
});

describe("closureFromNixJson: `nix path-info --json -r` of Nix before and after 2.19", () => {
  /** This machine's Nix (2.8) on the fixtures' hello: an array of objects, each naming its path. */
  const arrayForm = (): Array<Record<string, unknown>> =>
    JSON.parse(
      run("nix", [
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        "--json",
        "-r",
        fx.hello,
      ]).toString(),
    ) as Array<Record<string, unknown>>;
  /** The same information as Nix 2.19 and later print it: an object keyed by store path, without `path`. */
  const objectForm = (arr: Array<Record<string, unknown>>): Record<string, unknown> =>
    Object.fromEntries(
      arr.map(({ path, ...rest }) => [path as string, { ...rest, ca: null, signatures: [] }]),
    );
  /** What the store itself says: path -> [NarHash, NarSize, references], from nix-store. */
  const storeView = (): Map<string, [string, number, string[]]> => {
    const paths = run("nix-store", ["-qR", fx.hello]).toString().trim().split("\n");
    return new Map(
      paths.map((p) => [
        p,
        [
          run("nix-store", ["-q", "--hash", p]).toString().trim(),
          Number(run("nix-store", ["-q", "--size", p]).toString().trim()),
          run("nix-store", ["-q", "--references", p]).toString().trim().split("\n").filter(Boolean).sort(),
        ],
      ]),
    );
  };
  const view = (m: ReturnType<typeof closureFromNixJson>): Map<string, [string, number, string[]]> =>
    new Map(
      [...m].map(([p, info]) => [
        p,
        [info.narHash.toString("base16"), info.narSize, [...info.references].sort()],
      ]),
    );
  const storeBase16 = (): Map<string, [string, number, string[]]> =>
    new Map(
      [...storeView()].map(([p, [h, size, refs]]) => [p, [parseHash(h).toString("base16"), size, refs]]),
    );

  test("the array form (Nix 2.8 here) gives the store's closure with its hashes, sizes and references", () => {
    const arr = arrayForm();
    assert.ok(arr.length >= 2, "hello has dependencies");
    assert.deepEqual(view(closureFromNixJson(arr, "/nix/store")), storeBase16());
  });

  test("the object form (Nix 2.19+) and every NarHash spelling give the same closure", () => {
    const arr = arrayForm();
    const expected = storeBase16();
    assert.deepEqual(view(closureFromNixJson(objectForm(arr), "/nix/store")), expected);
    // SRI (what 2.8 and 2.26 print), "sha256:<nix32>" and "sha256:<base16>" of older tools: one hash.
    for (const format of ["sri", "nix32", "base16"] as const) {
      const respelled = arr.map((e) => ({ ...e, narHash: parseHash(String(e.narHash)).toString(format) }));
      assert.deepEqual(view(closureFromNixJson(respelled, "/nix/store")), expected, `array, ${format}`);
      assert.deepEqual(
        view(closureFromNixJson(objectForm(respelled), "/nix/store")),
        expected,
        `object, ${format}`,
      );
    }
  });

  test("Nix 2.26's output as printed (two paths, one referring to the other)", () => {
    const a = "/nix/store/wdba4qdd2rr83k3rdrbwg8vawkicncfn-a";
    const b = "/nix/store/in6qisa7g1f94cy7fy1v3hsmnivzlpc9-b";
    const printed = JSON.stringify({
      [b]: {
        ca: null,
        deriver: "/nix/store/2apkcqjsnvq8qqjd0h8gkhq8pq8bbvy6-b.drv",
        narHash: "sha256-BxrUqe6ioiYw7qtwp54/EctEVPGAFQnZrb5rtYZAirs=",
        narSize: 328,
        references: [a],
        registrationTime: 1796449710,
        signatures: [],
        ultimate: true,
      },
      [a]: {
        ca: null,
        deriver: "/nix/store/zya37ag6vxd810rcn2fj0g6x2mh6yzgw-a.drv",
        narHash: "sha256-2VD35R+ze2oS2wod5MbPe9ckn9zHIiCLCb/QdhzXR94=",
        narSize: 288,
        references: [],
        registrationTime: 1796449710,
        signatures: [],
        ultimate: true,
      },
    });
    const m = closureFromNixJson(JSON.parse(printed), "/nix/store");
    assert.deepEqual([...m.keys()].sort(), [b, a].sort());
    assert.deepEqual(m.get(b)!.references, [a]);
    assert.equal(m.get(b)!.narSize, 328);
    assert.equal(m.get(b)!.narHash.toString("sri"), "sha256-BxrUqe6ioiYw7qtwp54/EctEVPGAFQnZrb5rtYZAirs=");
    assert.deepEqual(m.get(a)!.references, []);
  });

  test("a path that is not valid, a hash of another algorithm or a shape of neither form is refused", () => {
    const missing = `/nix/store/${"0".repeat(32)}-gone`;
    const arr = arrayForm();
    const refused: Array<[unknown, RegExp]> = [
      [{ [missing]: null }, new RegExp(`${missing} is not a valid path`)],
      [[{ path: missing, valid: false }], new RegExp(`${missing} is not a valid path`)],
      [[{ ...arr[0], narHash: "sha1-" + Buffer.alloc(20).toString("base64") }], /expected a sha256 hash/],
      [[{ ...arr[0], narSize: "big" }], /bad narSize/],
      [[{ narHash: arr[0].narHash }], /an entry without a store path/],
      [{ "/etc/passwd": arr[0] }, /passwd/],
      ["[]", /expected a JSON array .* or object/],
      [null, /expected a JSON array .* or object/],
    ];
    for (const [json, message] of refused)
      assert.throws(() => closureFromNixJson(json, "/nix/store"), message, JSON.stringify(json));
  });
});

/** Every entry under `root`: path, type, mode, mtime, and a link's target or a file's contents. */
function treeOf(root: string): string[] {
  const out: string[] = [];
  const walk = (rel: string): void => {
    const p = join(root, rel);
    const st = lstatSync(p);
    const what = st.isSymbolicLink()
      ? `-> ${readlinkSync(p)}`
      : st.isDirectory()
        ? "dir"
        : readFileSync(p).toString("base64");
    out.push(`${rel} ${(st.mode & 0o7777).toString(8)} ${st.mtimeMs} ${what}`);
    if (st.isDirectory() && !st.isSymbolicLink())
      for (const n of readdirSync(p).sort()) walk(rel ? `${rel}/${n}` : n);
  };
  for (const n of readdirSync(root).sort()) walk(n);
  return out;
}

test("the plan step makes the customisation layer from NAR listings: the custom step's tree over the fetched layers; without listings it leaves it", async () => {
  const dir = makeTempDir("plan-custom");
  const key = generateCacheKey("plan-custom", join(dir, "key"));
  const closure = run("nix-store", ["-qR", fx.hello]).toString().trim().split("\n");
  const trust = { trustedKeys: [parsePublicKey(key.publicKey)] };
  const withListings = makeNixCache({
    paths: closure,
    dir: join(dir, "cache-ls"),
    compression: "xz",
    secretKeyFile: key.secretKeyFile,
    writeNarListing: true,
  });
  const without = makeNixCache({
    paths: closure,
    dir: join(dir, "cache"),
    compression: "xz",
    secretKeyFile: key.secretKeyFile,
  });
  const plan = async (url: string, out: string) => {
    const caches = await openCaches([url], trust, "/nix/store");
    try {
      return await planStep({
        roots: [fx.hello],
        caches,
        layering: "size",
        maxLayers: 100,
        batching: { scope: "", maxNew: 2 },
        custom: { out, user: "app" },
      });
    } finally {
      caches.close();
    }
  };
  const made = await plan(withListings, join(dir, "from-listings"));
  assert.ok(made.custom, "the plan made the customisation layer");
  // The custom step over the fetched layers, as BuildKit mounts them (layer i at LAYERS/i).
  const caches = await openCaches([without], trust, "/nix/store");
  try {
    await fetchStep(
      made.layers.map((l, i) => ({ dir: String(i), paths: l.paths })),
      caches,
      join(dir, "layers"),
    );
  } finally {
    caches.close();
  }
  const stepped = await customStep({
    plan: made,
    layersDir: join(dir, "layers"),
    out: join(dir, "from-layers"),
    user: "app",
  });
  assert.deepEqual(made.custom, { env: stepped.env, warnings: stepped.warnings });
  const tree = treeOf(join(dir, "from-listings"));
  assert.deepEqual(tree, treeOf(join(dir, "from-layers")));
  assert.ok(
    tree.some((e) => e.startsWith("bin ") && e.includes(`-> ${fx.hello}/bin`)),
    tree.join("\n"),
  );
  assert.ok(tree.some((e) => e.startsWith("etc/passwd ")));

  // A cache without listings: no layer made here, nothing written; the plan is otherwise the same.
  const plain = await plan(without, join(dir, "none"));
  assert.equal(plain.custom, undefined);
  assert.equal(existsSync(join(dir, "none")), false);
  assert.deepEqual(plain.layers, made.layers);
});
