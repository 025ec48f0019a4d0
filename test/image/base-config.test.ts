// Building on a base image: the config merge (base-config.ts, README "Building on a base image") and the
// customisation layer's merge with the base's filesystem and accounts (customisation.ts with a BaseTree).
import { before, describe, test } from "node:test";
import assert from "node:assert/strict";
import {
  baseImageConfigJson,
  checkBasePlatform,
  mergeEnv,
  mergedRuntimeConfig,
} from "../../src/image/base-config.js";
import type { BaseImage } from "../../src/image/base-image.js";
import type { BaseEntry, BaseTree } from "../../src/image/base-tree.js";
import { DEFAULT_PATH } from "../../src/image/config.js";
import { customisationLayer } from "../../src/image/customisation.js";
import { emptySpec, type ImageSpec } from "../../src/image/spec.js";
import { NixociError } from "../../src/util/errors.js";
import { buildFixtures, type FixtureAttr } from "../support/fixtures.js";

const FARM = new Set(["/bin"]);
const spec = (over: Partial<ImageSpec> = {}): ImageSpec => ({ ...emptySpec(), arch: "amd64", ...over });

describe("Env", () => {
  test("merged by name: the spec's values win, the base's order stays, new names follow", () => {
    assert.deepEqual(mergeEnv(["A=1", "PATH=/usr/bin:/bin", "B=2"], ["B=3", "C=4"], [], FARM), [
      "A=1",
      "PATH=/usr/bin:/bin",
      "B=3",
      "C=4",
    ]);
  });
  test("PATH: the spec's when it sets one, whatever the base has", () => {
    assert.deepEqual(mergeEnv(["PATH=/opt/bin"], ["PATH=/x"], [], FARM), ["PATH=/x"]);
  });
  test("PATH: the base's, with the farm's bin directories it lacks appended in nixoci's order", () => {
    assert.deepEqual(mergeEnv(["PATH=/opt/bin:/usr/bin"], [], [], new Set(["/bin", "/usr/bin", "/sbin"])), [
      "PATH=/opt/bin:/usr/bin:/sbin:/bin",
    ]);
    // An empty PATH gets no empty entry (the working directory, to a shell); one written on purpose stays.
    assert.deepEqual(mergeEnv(["PATH="], [], [], new Set(["/bin"])), ["PATH=/bin"]);
    assert.deepEqual(mergeEnv(["PATH=:/opt/bin"], [], [], new Set(["/bin"])), ["PATH=:/opt/bin:/bin"]);
  });
  test("PATH: nixoci's default when neither sets one", () => {
    assert.deepEqual(mergeEnv(["A=1"], [], [], FARM), ["A=1", `PATH=${DEFAULT_PATH}`]);
  });
  test("nixoci's own variables (SSL_CERT_FILE) only where neither the base nor the spec sets them", () => {
    assert.deepEqual(
      mergeEnv(["SSL_CERT_FILE=/etc/ssl/base.pem", "PATH=/bin"], [], ["SSL_CERT_FILE=/nix/store/x/ca"], FARM),
      ["SSL_CERT_FILE=/etc/ssl/base.pem", "PATH=/bin"],
    );
    assert.deepEqual(mergeEnv(["PATH=/bin"], [], ["SSL_CERT_FILE=/nix/store/x/ca"], FARM), [
      "PATH=/bin",
      "SSL_CERT_FILE=/nix/store/x/ca",
    ]);
  });
});

describe("runtime config", () => {
  const base = {
    User: "daemon",
    WorkingDir: "/srv",
    Entrypoint: ["/docker-entrypoint.sh"],
    Cmd: ["serve"],
    ExposedPorts: { "80/tcp": {} },
    Labels: { vendor: "base", version: "1" },
    Volumes: { "/data": {} },
    StopSignal: "SIGQUIT",
    Env: ["PATH=/bin"],
    OnBuild: ["RUN x"],
  };
  test("nothing in the spec: the base's settings (OnBuild triggers are not carried)", () => {
    assert.deepEqual(mergedRuntimeConfig(spec(), base, [], FARM), {
      User: "daemon",
      ExposedPorts: { "80/tcp": {} },
      Env: ["PATH=/bin"],
      Entrypoint: ["/docker-entrypoint.sh"],
      Cmd: ["serve"],
      WorkingDir: "/srv",
      Labels: { vendor: "base", version: "1" },
      Volumes: { "/data": {} },
      StopSignal: "SIGQUIT",
    });
  });
  test("the spec wins field by field; ports are the union, labels merged with the spec's values", () => {
    const c = mergedRuntimeConfig(
      spec({ user: "app", workdir: "/app", expose: ["8080"], labels: { version: "2", app: "hello" } }),
      base,
      [],
      FARM,
    );
    assert.equal(c.User, "app");
    assert.equal(c.WorkingDir, "/app");
    assert.deepEqual(c.ExposedPorts, { "80/tcp": {}, "8080/tcp": {} });
    assert.deepEqual(c.Labels, { app: "hello", vendor: "base", version: "2" });
  });
  test("a spec entrypoint without cmd drops the base's Cmd, as a Dockerfile ENTRYPOINT does", () => {
    const c = mergedRuntimeConfig(spec({ entrypoint: ["/bin/hello"] }), base, [], FARM);
    assert.deepEqual(c.Entrypoint, ["/bin/hello"]);
    assert.equal(c.Cmd, undefined);
  });
  test("a spec cmd alone keeps the base's entrypoint", () => {
    const c = mergedRuntimeConfig(spec({ cmd: ["hello"] }), base, [], FARM);
    assert.deepEqual(c.Entrypoint, ["/docker-entrypoint.sh"]);
    assert.deepEqual(c.Cmd, ["hello"]);
  });
});

describe("the whole config", () => {
  const base = (config: Record<string, unknown>): BaseImage => ({
    ref: "oci:base",
    manifestDigest: `sha256:${"a".repeat(64)}`,
    os: "linux",
    architecture: "amd64",
    config,
    layers: [
      {
        descriptor: { mediaType: "x", digest: `sha256:${"1".repeat(64)}`, size: 1 },
        diffId: `sha256:${"2".repeat(64)}`,
      },
    ],
    fetchInto: () => Promise.resolve([]),
  });
  const own = [`sha256:${"3".repeat(64)}`, `sha256:${"4".repeat(64)}`] as const;
  test("diff_ids and history: the base's, then nixoci's; the base's history entries as they are", () => {
    const entry = { created: "2020-01-01T00:00:00Z", created_by: "/bin/sh -c #(nop) ADD file:x in /" };
    const json = JSON.parse(
      baseImageConfigJson(spec(), base({ history: [entry], variant: "v2" }), [...own], [], FARM).toString(),
    ) as Record<string, unknown>;
    assert.deepEqual(json.rootfs, { type: "layers", diff_ids: [`sha256:${"2".repeat(64)}`, ...own] });
    assert.deepEqual(json.history, [
      entry,
      { created: "1970-01-01T00:00:01Z", created_by: "nixoci" },
      { created: "1970-01-01T00:00:01Z", created_by: "nixoci" },
    ]);
    assert.equal(json.variant, "v2");
  });
  test("a base without history gets one entry per layer naming its digest", () => {
    const json = JSON.parse(baseImageConfigJson(spec(), base({}), [...own], [], FARM).toString()) as {
      history: { created_by: string }[];
    };
    assert.equal(json.history.length, 3);
    assert.equal(json.history[0].created_by, `base image sha256:${"a".repeat(64)}`);
  });
  test("the same base and spec give the same bytes", () => {
    const a = baseImageConfigJson(
      spec({ env: ["X=1"] }),
      base({ config: { Env: ["A=1"] } }),
      [...own],
      [],
      FARM,
    );
    const b = baseImageConfigJson(
      spec({ env: ["X=1"] }),
      base({ config: { Env: ["A=1"] } }),
      [...own],
      [],
      FARM,
    );
    assert.deepEqual(a, b);
  });
  test("a base for another architecture is refused in one line naming both platforms", () => {
    assert.throws(
      () => checkBasePlatform({ ref: "oci:base", os: "linux", architecture: "arm64" }, spec()),
      (err: unknown) =>
        err instanceof NixociError &&
        err.message ===
          "oci:base: the base image is linux/arm64, the image being built is linux/amd64 (give --arch arm64, or a base for linux/amd64 with --platform)",
    );
  });
});

describe("customisation layer on a base", () => {
  let fx: Record<FixtureAttr, string>;
  before(() => {
    fx = buildFixtures();
  });
  const tree = (entries: Record<string, BaseEntry>, files: Partial<BaseTree> = {}): BaseTree => ({
    entries: new Map(Object.entries(entries)),
    ...files,
  });
  const layer = (base: BaseTree | undefined, user?: string) =>
    customisationLayer({
      packages: [{ storePath: fx.hello, realPath: fx.hello }],
      closure: [{ storePath: fx.hello, realPath: fx.hello }],
      user,
      base,
    });
  const find = (c: ReturnType<typeof layer>, path: string) => c.entries.find((e) => e.path === path);
  const text = (c: ReturnType<typeof layer>, path: string): string | undefined => {
    const e = find(c, path);
    return e && "content" in e ? e.content.toString() : undefined;
  };

  test("without a base, /bin is one link to the package's bin", () => {
    assert.equal(find(layer(undefined), "bin")?.type, "symlink");
  });
  test("where the base has a /bin directory, /bin is a directory of links (the runtime merges the two)", () => {
    const c = layer(tree({ bin: { type: "dir" }, "bin/sh": { type: "file" } }));
    assert.equal(find(c, "bin")?.type, "directory");
    assert.deepEqual(find(c, "bin/hello"), {
      path: "bin/hello",
      type: "symlink",
      target: `${fx.hello}/bin/hello`,
    });
    assert.equal(find(c, "bin/sh"), undefined);
  });
  test("where the base's /bin is a link to a directory, the base's entries are linked beside the packages'", () => {
    const c = layer(
      tree({
        usr: { type: "dir" },
        "usr/bin": { type: "dir" },
        "usr/bin/sh": { type: "file" },
        "usr/bin/hello": { type: "file" },
        bin: { type: "link", target: "usr/bin" },
      }),
    );
    assert.equal(find(c, "bin")?.type, "directory");
    assert.deepEqual(find(c, "bin/sh"), { path: "bin/sh", type: "symlink", target: "/usr/bin/sh" });
    // The package wins a name both have, as the upper layer does.
    assert.deepEqual(find(c, "bin/hello"), {
      path: "bin/hello",
      type: "symlink",
      target: `${fx.hello}/bin/hello`,
    });
  });
  test("the base's /etc/passwd and /etc/group are kept, the user appended when the base lacks it", () => {
    const files = {
      passwd: Buffer.from("root:x:0:0:root:/root:/bin/ash\nnobody:x:65534:65534::/:/sbin/nologin\n"),
      group: Buffer.from("root:x:0:\nnogroup:x:65534:\n"),
    };
    const c = layer(tree({ etc: { type: "dir" } }, files), "app");
    assert.equal(
      text(c, "etc/passwd"),
      "root:x:0:0:root:/root:/bin/ash\nnobody:x:65534:65534::/:/sbin/nologin\napp:x:1000:1000:app:/home/app:/bin/sh\n",
    );
    assert.equal(text(c, "etc/group"), "root:x:0:\nnogroup:x:65534:\napp:x:1000:\n");
    assert.equal(find(c, "home/app")?.type, "directory");
  });
  test("a user the base has keeps its own entry and home (none is made up)", () => {
    const passwd = Buffer.from("root:x:0:0::/root:/bin/sh\napp:x:501:501::/srv/app:/bin/sh");
    const c = layer(tree({}, { passwd }), "app");
    assert.equal(text(c, "etc/passwd"), passwd.toString());
    assert.equal(find(c, "home/app"), undefined);
  });
  test("--user's group: root's named group exists, a user in group root gets gid 0, no second root", () => {
    const accounts = (user: string) => {
      const c = layer(undefined, user);
      return { passwd: text(c, "etc/passwd"), group: text(c, "etc/group") };
    };
    const ROOT = "root:x:0:0:root:/root:/bin/sh\n";
    // docker and runc refuse a group name /etc/group does not have.
    assert.deepEqual(accounts("root:app"), { passwd: ROOT, group: "root:x:0:\napp:x:1000:\n" });
    assert.deepEqual(accounts("0:app"), { passwd: ROOT, group: "root:x:0:\napp:x:1000:\n" });
    for (const user of ["root", "root:root", "root:0", "0:0", "root:5"])
      assert.deepEqual(accounts(user), { passwd: ROOT, group: "root:x:0:\n" }, user);
    for (const user of ["app:root", "app:0"])
      assert.deepEqual(
        accounts(user),
        { passwd: `${ROOT}app:x:1000:0:app:/home/app:/bin/sh\n`, group: "root:x:0:\n" },
        user,
      );
    assert.deepEqual(accounts("app:staff"), {
      passwd: `${ROOT}app:x:1000:1000:app:/home/app:/bin/sh\n`,
      group: "root:x:0:\nstaff:x:1000:\n",
    });
    assert.deepEqual(accounts("2000:3000"), {
      passwd: `${ROOT}user2000:x:2000:3000:user2000:/home/user2000:/bin/sh\n`,
      group: "root:x:0:\nuser2000:x:3000:\n",
    });
  });
  test("a base without /etc/passwd gets nixoci's", () => {
    assert.equal(
      text(layer(tree({ bin: { type: "dir" } })), "etc/passwd"),
      "root:x:0:0:root:/root:/bin/sh\n",
    );
  });
});
