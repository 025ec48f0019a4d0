// LLB marshalling (src/servers/buildkit/llb.ts): deterministic bytes equal to what BuildKit's Go client writes for the
// same ops (so digests match ops other frontends solved, e.g. dockerd's build context), and a foreign
// definition taken in as a state round-trips unchanged.
import { test, describe } from "node:test";
import assert from "node:assert/strict";
import {
  copy,
  definition,
  exec,
  fromDefinition,
  merge,
  mkfile,
  source,
} from "../../../src/servers/buildkit/llb.js";
import { decode } from "../../../src/proto/buildkit.js";
import {
  buildFileKind,
  checkPlatforms,
  llbCan,
  parseSpecText,
  STEP_LAYERS_LABEL,
  stepImage,
  stepLayerLimit,
} from "../../../src/servers/buildkit/frontend.js";
import { emptySpec } from "../../../src/image/spec.js";
import { cacheImportsOf } from "../../../src/servers/buildkit/gateway.js";

describe("build files", () => {
  test("the kind comes from the name, else from the content", () => {
    assert.equal(buildFileKind("default.nix", "packages: []"), "nix");
    assert.equal(buildFileKind("nixoci.yaml", "{ x = 1; }"), "spec");
    assert.equal(buildFileKind("Dockerfile", "# syntax=x\npackages: [/nix/store/a-b]\n"), "spec");
    assert.equal(buildFileKind("Dockerfile", '{"packages": []}'), "spec");
    assert.equal(
      buildFileKind("Dockerfile", "# syntax=x\n{ pkgs ? import <nixpkgs> {} }: pkgs.hello\n"),
      "nix",
    );
    assert.equal(buildFileKind("Dockerfile", "let x = 1; in x"), "nix");
  });
});

describe("LLB", () => {
  test("an http source and its unpacking copy are the Dockerfile frontend's bytes", () => {
    const http = source("http://build-context-x", { "http.filename": "context" });
    // Go (gogo) bytes: source{identifier, attrs{http.filename: context}}, no platform, empty constraints.
    assert.equal(
      http.vertex.bytes.toString("hex"),
      "1a320a16687474703a2f2f6275696c642d636f6e746578742d7812180a0d687474702e66696c656e616d651207636f6e746578745a00",
    );
    const unpacked = copy(http, "/context", undefined, "/", { unpack: true });
    const op = decode<{ file: { actions: Array<Record<string, unknown>> }; platform: { OS: string } }>(
      "pb.Op",
      unpacked.vertex.bytes,
    );
    const action = op.file.actions[0] as { input: number; copy: Record<string, unknown> };
    assert.equal(action.input, -1);
    assert.equal(action.copy.mode, -1, "unset mode is -1, not 0");
    assert.equal(action.copy.timestamp, -1, "unset timestamp is -1, not 0");
    assert.equal(action.copy.attemptUnpackDockerCompatibility, true);
    assert.equal(op.platform.OS, "linux");
  });

  test("maps are written in key order whatever the insertion order", () => {
    const a = source("docker-image://docker.io/library/x:latest", { b: "2", a: "1" });
    const b = source("docker-image://docker.io/library/x:latest", { a: "1", b: "2" });
    assert.equal(a.vertex.digest, b.vertex.digest);
  });

  test("a definition lists inputs before users and ends with the terminal op", () => {
    const img = source("docker-image://docker.io/library/x:latest");
    const out = exec({
      args: ["true"],
      mounts: [
        { dest: "/", state: img, readonly: true },
        { dest: "/out", state: undefined },
      ],
    })["/out"];
    const file = mkfile(out, "/f", Buffer.from("x"));
    const def = definition(file);
    assert.equal(def.def.length, 4);
    const terminal = decode<{ inputs: Array<{ digest: string }> }>("pb.Op", def.def[3]);
    assert.equal(terminal.inputs[0].digest, file.vertex.digest);
    // Taken back in as a state, the same graph marshals to the same bytes.
    const again = definition(fromDefinition(def));
    assert.deepEqual(
      again.def.map((b) => b.toString("hex")),
      def.def.map((b) => b.toString("hex")),
    );
  });

  test("a foreign definition referring to an unknown op is rejected", () => {
    const def = definition(copy(source("http://x"), "/a", undefined, "/"));
    assert.throws(() => fromDefinition({ def: def.def.slice(1) }), /unknown op/);
  });
});

describe("merged layers", () => {
  test("a MergeOp lists its inputs in order; scratch is dropped, one input is itself", () => {
    const a = mkfile(undefined, "/a", Buffer.from("a"));
    const b = mkfile(undefined, "/b", Buffer.from("b"));
    const m = merge([a, undefined, b], "both")!;
    const op = decode<{ inputs: Array<{ digest: string }>; merge: { inputs: Array<{ input: number }> } }>(
      "pb.Op",
      m.vertex.bytes,
    );
    assert.deepEqual(
      op.inputs.map((i) => i.digest),
      [a.vertex.digest, b.vertex.digest],
    );
    assert.deepEqual(
      op.merge.inputs.map((i) => Number(i.input)),
      [0, 1],
    );
    assert.equal(merge([undefined, a]), a);
    assert.equal(merge([]), undefined);
    // Same inputs, same bytes; another order, another op.
    assert.equal(merge([a, b])!.vertex.digest, m.vertex.digest);
    assert.notEqual(merge([b, a])!.vertex.digest, m.vertex.digest);
  });

  test("the solver's caps: merge only where mergeop is enabled", () => {
    assert.ok(llbCan([{ ID: "mergeop", Enabled: true }], "mergeop"));
    assert.ok(!llbCan([{ ID: "mergeop", Enabled: false }], "mergeop"), "dockerd's classic store");
    assert.ok(!llbCan([{ ID: "file.base", Enabled: true }], "mergeop"), "BuildKit v0.8");
  });
});

test("--platform: the build's own platform (or none) is taken; another, or several, refused in one line", () => {
  const spec = { ...emptySpec(), arch: "amd64" };
  for (const ok of [undefined, "", "linux/amd64", "linux/amd64,linux/amd64"])
    assert.doesNotThrow(() => checkPlatforms(ok, spec), String(ok));
  assert.throws(
    () => checkPlatforms("linux/arm64", spec),
    (err: Error) =>
      err.message ===
      "--platform linux/arm64: this build makes linux/amd64 images only (store paths are built for one platform; " +
        "a spec's arch names it); build with --platform linux/amd64 or without --platform",
  );
  assert.throws(
    () => checkPlatforms("linux/amd64,linux/arm64", spec),
    /^Error: --platform linux\/amd64,linux\/arm64: /,
  );
  assert.doesNotThrow(() => checkPlatforms("linux/arm64", { ...spec, arch: "arm64" }));
});

test("cache imports: buildx's cache-imports JSON, else the older cache-from references", () => {
  const json = JSON.stringify([
    { Type: "registry", Attrs: { ref: "h:5000/c:1", "registry.insecure": "true" } },
  ]);
  assert.deepEqual(cacheImportsOf(new Map([["cache-imports", json]])), [
    { Type: "registry", Attrs: { ref: "h:5000/c:1", "registry.insecure": "true" } },
  ]);
  assert.deepEqual(cacheImportsOf(new Map([["cache-from", "a:1, b:2"]])), [
    { Type: "registry", Attrs: { ref: "a:1" } },
    { Type: "registry", Attrs: { ref: "b:2" } },
  ]);
  assert.deepEqual(cacheImportsOf(new Map([["cache-from", ""]])), [], "dockerd 20.10 passes it empty");
  assert.throws(() => cacheImportsOf(new Map([["cache-imports", "{}"]])), /cache-imports: not a JSON array/);
});

test("a spec asking for ownership rules or a base image is refused by the frontend (its store layers are BuildKit's files)", () => {
  assert.equal(parseSpecText("packages: [/nix/store/x-a]\nuser: app\n", "nixoci.yaml").user, "app");
  for (const line of [
    "perms: ['^/home=0700']",
    "uid: 1000",
    "gid: 1000",
    "from: docker://127.0.0.1:5000/base",
  ])
    assert.throws(
      () => parseSpecText(`packages: [/nix/store/x-a]\n${line}\n`, "nixoci.yaml"),
      new RegExp(
        `^Error: nixoci.yaml: ${line.split(":")[0]} is not supported by the BuildKit frontend; build with nixoci build$`,
      ),
    );
});

test("a multi-platform spec (platforms:) is refused by the frontend: a frontend build makes one platform", () => {
  assert.throws(
    () => parseSpecText("platforms:\n  linux/arm64: [/nix/store/x-a]\n", "nixoci.yaml"),
    /^Error: nixoci.yaml: platforms is not supported by the BuildKit frontend; build with nixoci build$/,
  );
});

describe("the steps' image (the frontend image's lower layers, where its label names them)", () => {
  const config = (labels: Record<string, string> | null, layers: number): Buffer =>
    Buffer.from(
      JSON.stringify({
        config: { Labels: labels },
        rootfs: { type: "layers", diff_ids: Array.from({ length: layers }, (_, i) => `sha256:${i}`) },
      }),
    );
  const layerCap = [{ ID: "source.image.layerlimit", Enabled: true }];
  /** The attributes of the image SourceOp the steps get. */
  const attrsOf = (state: ReturnType<typeof stepImage>): Record<string, string> => {
    const op = decode<{ source: { identifier: string; attrs?: Record<string, string> } }>(
      "pb.Op",
      state.vertex.bytes,
    );
    assert.equal(op.source.identifier, "docker-image://docker.io/library/nixoci-frontend:test");
    return op.source.attrs ?? {};
  };

  test("the label's count of layers, when it is fewer than the image has", () => {
    assert.equal(stepLayerLimit(config({ [STEP_LAYERS_LABEL]: "5" }, 6)), 5);
    assert.equal(stepLayerLimit(config({ [STEP_LAYERS_LABEL]: "6" }, 6)), undefined, "the whole image");
    assert.equal(stepLayerLimit(config({ [STEP_LAYERS_LABEL]: "7" }, 6)), undefined, "more than it has");
    for (const bad of ["0", "-1", "5x", " 5", "5.0", ""])
      assert.equal(stepLayerLimit(config({ [STEP_LAYERS_LABEL]: bad }, 6)), undefined, JSON.stringify(bad));
    assert.equal(stepLayerLimit(config({ other: "1" }, 6)), undefined, "no label: an image built otherwise");
    assert.equal(stepLayerLimit(config(null, 6)), undefined);
    assert.equal(stepLayerLimit(Buffer.from("not json")), undefined);
    for (const odd of [
      "[]",
      "null",
      "5",
      '"x"',
      '{"config":null}',
      '{"config":{"Labels":{"' + STEP_LAYERS_LABEL + '":5}},"rootfs":{"diff_ids":[1,2,3,4,5,6]}}',
      '{"config":{"Labels":{"' + STEP_LAYERS_LABEL + '":"5"}},"rootfs":{"diff_ids":"sha256:123456"}}',
    ])
      assert.equal(stepLayerLimit(Buffer.from(odd)), undefined, odd);
  });

  test("a layer limit on the image source only where BuildKit has the cap and the image has the label", () => {
    const labelled = config({ [STEP_LAYERS_LABEL]: "5" }, 6);
    assert.deepEqual(attrsOf(stepImage("nixoci-frontend:test", labelled, layerCap)), {
      "image.layerlimit": "5",
    });
    assert.deepEqual(
      attrsOf(stepImage("nixoci-frontend:test", labelled, [])),
      {},
      "BuildKit v0.8 (dockerd 20.10)",
    );
    assert.deepEqual(
      attrsOf(
        stepImage("nixoci-frontend:test", labelled, [{ ID: "source.image.layerlimit", Enabled: false }]),
      ),
      {},
    );
    assert.deepEqual(attrsOf(stepImage("nixoci-frontend:test", config({}, 6), layerCap)), {});
    assert.deepEqual(
      attrsOf(stepImage("nixoci-frontend:test", undefined, layerCap)),
      {},
      "config not resolved",
    );
  });
});
