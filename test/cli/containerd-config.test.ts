// `nixoci snapshotter --print-containerd-config` for every containerd of the matrix (1.6 from bookworm, 1.7 and
// 2.1 from scripts/install-containerd-matrix.sh), whatever NIXOCI_CONTAINERD says: the version is detected from
// the `containerd` first on PATH (each release's own directory put first) or named with --containerd-version,
// the snippet is exactly the documented one for that version's config schema, and — appended to that
// containerd's own config (a node's root, state, sockets, CNI dirs and registry hosts; nothing else about the
// snapshotter) — it makes a CRI PullImage go through the snapshotter: the store layers are committed from the
// store (never fetched from the registry), CRI's snapshot annotations reach it (one GC root for the image), CRI
// reports the snapshotter's root as the image filesystem (1.7 and later), and the image runs.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { gcRootsDir } from "../../src/servers/snapshotter/gcroots.js";
import { buildFixtures, findRoot, makeTempDir } from "../support/fixtures.js";
import { nixoci, nixociOk } from "../support/cli.js";
import {
  CONTAINERD_SERIES,
  containerdRelease,
  type ContainerdRelease,
  type ContainerdSeries,
} from "../support/containerd-release.js";
import {
  blobGets,
  chainIds,
  CRI_NAMESPACE,
  isChainSnapshot,
  layerStorePaths,
  listSnapshots,
  pushNixociImage,
  registryLogLines,
  startCriStack,
  type CriStack,
  type PushedImage,
} from "../support/cri.js";

/** The snippet each release line gets, for the snapshotter on `address` with its --root `root`. */
function expectedSnippet(series: ContainerdSeries, address: string, root: string): string {
  const header = (
    configVersion: string,
  ): string => `# nixoci snapshotter, containerd ${series}: add to containerd's config.toml (config version ${configVersion}
`;
  const run = `# set the two keys there instead. Then run
#   nixoci snapshotter --address ${address} --root ${root}
# and restart containerd.
[proxy_plugins.nixoci]
  type = "snapshot"
  address = "${address}"
`;
  const exportsRoot = `  # The image filesystem CRI reports (ImageFsInfo: what kubelet's image garbage collection measures).
  [proxy_plugins.nixoci.exports]
    root = "${root}"
`;
  const annotations = `
# CRI pulls unpack into nixoci. Snapshot annotations (off by default) give the snapshotter each image's
# reference and manifest digest: one GC root per image instead of one per layer.
`;
  if (series === "1.6")
    return `${header("2).")}# Where the file already has [plugins."io.containerd.grpc.v1.cri".containerd],
${run}# containerd 1.6 reports its own ROOT/io.containerd.snapshotter.v1.nixoci as the image filesystem
# (CRI ImageFsInfo: what kubelet's image garbage collection measures), whatever the snapshotter's --root:
# give the snapshotter that directory as --root, or create it on the filesystem of --root.
${annotations}[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "nixoci"
  disable_snapshot_annotations = false
`;
  if (series === "1.7")
    return `${header("2).")}# Where the file already has [plugins."io.containerd.grpc.v1.cri".containerd],
${run}${exportsRoot}${annotations}[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "nixoci"
  disable_snapshot_annotations = false
`;
  return `${header("3;")}# containerd 2.x reads these tables from a version 2 file too).
# Where the file already has [plugins."io.containerd.cri.v1.images"],
${run}${exportsRoot}${annotations}# From containerd 2.1 on the key also makes CRI pull as 2.0 did (containerd logs a warning saying so at
# start), not through the transfer service, which passes no annotations and unpacks only into the
# snapshotters its unpack_config lists: without the key, CRI PullImage fails ("no unpack platforms defined").
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "nixoci"
  disable_snapshot_annotations = false
`;
}

/** The k3s template, for the snapshotter on `address` with its --root `root`. */
function expectedK3sTemplate(address: string, root: string): string {
  return `{{ template "base" . }}

# nixoci snapshotter, k3s: a containerd config template. The line above is k3s's own config. Save as
# /var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl for k3s on containerd 2.x (v1.31.6+k3s1,
# v1.32.2+k3s1 and later), config.toml.tmpl in the same directory for earlier k3s. Start k3s (server or
# agent) with --snapshotter nixoci: its base config then makes nixoci CRI's snapshotter. Run
#   nixoci snapshotter --address ${address} --root ${root} --containerd-address /run/k3s/containerd/containerd.sock
# and restart k3s.
[proxy_plugins.nixoci]
  type = "snapshot"
  address = "${address}"
  # The image filesystem CRI reports (ImageFsInfo: what kubelet's image garbage collection measures).
  [proxy_plugins.nixoci.exports]
    root = "${root}"
`;
}

/**
 * What k3s's base config (`{{ template "base" . }}`, k3s's pkg/agent/templates) sets of CRI's image settings for
 * `k3s --snapshotter nixoci`: the snapshotter, snapshot annotations off, and on containerd 2.x the local pull.
 * The rest of the base (CNI, registries, sandbox image) is what the test node's own config has.
 */
function k3sBaseStandIn(release: ContainerdRelease): string {
  return release.major >= 2
    ? `[plugins."io.containerd.cri.v1.images"]
  snapshotter = "nixoci"
  disable_snapshot_annotations = true
  use_local_image_pull = true
`
    : `[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "nixoci"
  disable_snapshot_annotations = true
`;
}

/**
 * Pulls `img` through the stack's CRI (as a kubelet does) and checks no store layer's blob was fetched from the
 * registry: the snapshotter committed them from the store. Returns the image's store layers and CRI's image ref.
 */
async function pullWithoutStoreBlobs(
  s: CriStack,
  img: PushedImage,
): Promise<{ storeLayers: PushedImage["layers"]; imageRef: string }> {
  const storeLayers = img.layers.filter((l) => layerStorePaths(l).length > 0);
  assert.ok(storeLayers.length >= 1, "the image has store layers");
  const logFrom = registryLogLines(s.registry);
  const pulled = await s.cri.pullImage({ image: { image: img.ref } }, { timeoutMs: 120_000 });
  assert.match(pulled.image_ref, /^sha256:[0-9a-f]{64}$/);
  const fetched = blobGets(s.registry, logFrom);
  for (const l of storeLayers) assert.ok(!fetched.includes(l.digest), `store layer ${l.digest} not fetched`);
  return { storeLayers, imageRef: pulled.image_ref };
}

/** PATH with the release's own binaries first (1.6: the system's, as it is). */
function pathFor(release: ContainerdRelease): string {
  const path = process.env.PATH ?? "/usr/bin:/bin";
  return release.binDir ? `${release.binDir}:${path}` : path;
}

describe("nixoci snapshotter --print-containerd-config: usage", () => {
  test("--containerd-version k3s: k3s's config template, its base config first, and only there", () => {
    const r = nixociOk([
      "snapshotter",
      "--print-containerd-config",
      "--containerd-version",
      "k3s",
      "--address",
      "/run/nixoci/sn.sock",
      "--root",
      "/var/lib/nixoci/sn",
    ]);
    assert.equal(r.stderr, "");
    assert.equal(r.text, expectedK3sTemplate("/run/nixoci/sn.sock", "/var/lib/nixoci/sn"));
    const serving = nixoci([
      "snapshotter",
      "--containerd-version",
      "k3s",
      "--address",
      "/run/x.sock",
      "--root",
      "/tmp",
    ]);
    assert.equal(serving.status, 2);
    assert.equal(
      serving.stderr,
      "nixoci: --containerd-version k3s: only with --print-containerd-config (serving, name k3s's containerd " +
        "release, or let the snapshotter ask it: --containerd-address /run/k3s/containerd/containerd.sock)\n",
    );
  });

  test("the README's Node setup shows what --containerd-version 1.7 prints", () => {
    const readme = readFileSync(join(findRoot(), "README.md"), "utf8");
    const marker = readme.indexOf("<!-- readme-check: test/cli/containerd-config.test.ts");
    assert.ok(marker > 0, "the README's marker");
    const block = /```toml\n([\s\S]*?)\n *```/.exec(readme.slice(marker));
    assert.ok(block, "a toml block after the marker");
    const shown = block[1]
      .split("\n")
      .map((l) => l.replace(/^ {3}/, ""))
      .join("\n");
    const r = nixociOk(["snapshotter", "--print-containerd-config", "--containerd-version", "1.7"]);
    assert.equal(`${shown}\n`, r.text);
  });

  test("the default socket and root, and --address and --root made absolute", () => {
    const r = nixociOk(["snapshotter", "--print-containerd-config", "--containerd-version", "1.7"]);
    assert.equal(r.stderr, "");
    assert.equal(
      r.text,
      expectedSnippet("1.7", "/run/nixoci/snapshotter.sock", "/var/lib/nixoci/snapshotter"),
    );
    const rel = nixociOk([
      "snapshotter",
      "--print-containerd-config",
      "--containerd-version",
      "v2.1.9",
      "--address",
      "sn.sock",
      "--root",
      "sn-root",
    ]);
    assert.equal(rel.text, expectedSnippet("2.1", `${process.cwd()}/sn.sock`, `${process.cwd()}/sn-root`));
  });

  test("the command line it says to run carries the serving options given with it (a shared store's --store)", () => {
    const r = nixociOk([
      "snapshotter",
      "--print-containerd-config",
      "--containerd-version",
      "2.1",
      "--address",
      "/run/sn.sock",
      "--root",
      "/var/lib/sn",
      "--store",
      "/mnt/san/nix/store",
      "--substituter",
      "http://cache.example/a b",
      "--nix-layers",
      "target",
      "--log-format",
      "text",
    ]);
    assert.match(
      r.text,
      /^# {3}nixoci snapshotter --address \/run\/sn\.sock --root \/var\/lib\/sn --store \/mnt\/san\/nix\/store --substituter 'http:\/\/cache\.example\/a b' --nix-layers target --log-format text$/m,
    );
    const k3s = nixociOk([
      "snapshotter",
      "--print-containerd-config",
      "--containerd-version",
      "k3s",
      "--store",
      "/mnt/s",
    ]);
    assert.match(
      k3s.text,
      /^# {3}nixoci snapshotter .* --store \/mnt\/s --containerd-address \/run\/k3s\/containerd\/containerd\.sock$/m,
    );
  });

  test("a version it has no config for, or no version at all, is a usage error naming the flag", () => {
    const cases: [string[], string][] = [
      [
        ["--containerd-version", "latest"],
        'nixoci: --containerd-version: expected 1.6, 1.7 or 2.x (or a version such as 2.1 or v2.1.9), not "latest"\n',
      ],
      [
        ["--containerd-version", "1.5"],
        "nixoci: --containerd-version 1.5: containerd 1.5 is older than 1.6, the oldest nixoci's snapshotter is tested with\n",
      ],
      [
        ["--containerd-version", "3.0"],
        "nixoci: --containerd-version 3.0: containerd 3.0 is newer than the 2.x configs nixoci knows\n",
      ],
    ];
    for (const [args, stderr] of cases) {
      const r = nixoci(["snapshotter", "--print-containerd-config", ...args]);
      assert.equal(r.status, 2, args.join(" "));
      assert.equal(r.text, "");
      assert.equal(r.stderr, stderr);
    }
    // Serving, it names the node's containerd (auto's target mode): the same checks.
    const r = nixoci([
      "snapshotter",
      "--containerd-version",
      "1.5",
      "--address",
      "/run/x.sock",
      "--root",
      "/tmp",
    ]);
    assert.equal(r.status, 2);
    assert.equal(
      r.stderr,
      "nixoci: --containerd-version 1.5: containerd 1.5 is older than 1.6, the oldest nixoci's snapshotter is tested with\n",
    );
    // Target mode's binds need containerd >= 1.7, which mounts a Mount's target inside the rootfs.
    const t = nixoci([
      "snapshotter",
      "--nix-layers",
      "target",
      "--target-mounts",
      "binds",
      "--containerd-version",
      "1.6",
      "--address",
      "/run/x.sock",
      "--root",
      "/tmp",
    ]);
    assert.equal(t.status, 2);
    assert.equal(
      t.stderr,
      "nixoci: --nix-layers target --target-mounts binds: containerd 1.6 does not mount a mount's target (from 1.7 on it does); use --target-mounts view, or --nix-layers auto, link or metacopy\n",
    );
    const m = nixoci(["snapshotter", "--target-mounts", "all", "--address", "/run/x.sock", "--root", "/tmp"]);
    assert.equal(m.status, 2);
    assert.equal(m.stderr, 'nixoci: --target-mounts: expected auto, view or binds, not "all"\n');
  });

  test("no containerd at --containerd-address nor on PATH, no --containerd-version: exit 1, saying which flag names it", () => {
    const absent = join(makeTempDir("ccfg-none"), "containerd.sock");
    const r = nixoci(["snapshotter", "--print-containerd-config", "--containerd-address", absent], {
      env: { PATH: "/nonexistent" },
    });
    assert.equal(r.status, 1);
    assert.equal(r.text, "");
    assert.equal(
      r.stderr,
      "nixoci: containerd --version: not found on PATH; name the version with --containerd-version 1.6|1.7|2.x\n",
    );
  });
});

for (const series of CONTAINERD_SERIES)
  describe(`nixoci snapshotter --print-containerd-config on containerd ${series}`, () => {
    const release = containerdRelease({ ...process.env, NIXOCI_CONTAINERD: series });
    let stack: CriStack | undefined;
    let image: PushedImage | undefined;
    let snippet = "";

    before(
      async () => {
        const fx = buildFixtures();
        stack = await startCriStack({
          prefix: `ccfg${series.replace(".", "")}`,
          release,
          snapshotterArgs: ["--store", "/nix/store"],
          // What a user does: the snippet for the containerd on PATH, with the snapshotter's socket.
          // (No containerd answers at --containerd-address yet: PATH decides.)
          snapshotterConfig: (sn) =>
            (snippet = nixociOk(
              [
                "snapshotter",
                "--print-containerd-config",
                "--address",
                sn.socket,
                "--root",
                sn.root,
                "--containerd-address",
                join(sn.root, "..", "no-containerd.sock"),
              ],
              { env: { PATH: pathFor(release) } },
            ).text),
        });
        image = pushNixociImage(stack.registry, {
          installables: [fx.hello],
          entrypoint: "/bin/hello",
          repo: "nixoci/hello",
          workDir: stack.dir,
        });
      },
      { timeout: 240_000 },
    );

    after(async () => {
      await stack?.stop();
    });

    test(`detects ${series} from containerd --version and prints its snippet`, () => {
      assert.equal(snippet, expectedSnippet(series, stack!.sn.socket, stack!.sn.root));
      const named = nixociOk([
        "snapshotter",
        "--print-containerd-config",
        "--containerd-version",
        series,
        "--address",
        stack!.sn.socket,
        "--root",
        stack!.sn.root,
      ]);
      assert.equal(named.text, snippet);
    });

    test(`no containerd on PATH: the running ${series}'s Version API at --containerd-address decides`, () => {
      const asked = nixociOk(
        [
          "snapshotter",
          "--print-containerd-config",
          "--containerd-address",
          stack!.containerd.address,
          "--address",
          stack!.sn.socket,
          "--root",
          stack!.sn.root,
        ],
        { env: { PATH: "/nonexistent" } },
      );
      assert.equal(asked.stderr, "");
      assert.equal(asked.text, snippet);
    });

    test(
      "appended to the node's config, CRI pulls through the snapshotter: store layers not fetched, annotated, runs",
      { timeout: 240_000 },
      async () => {
        const s = stack!;
        const img = image!;
        const { storeLayers, imageRef } = await pullWithoutStoreBlobs(s, img);

        // Snapshot annotations are on: the store layers' GC root is the image's (named after the manifest digest
        // CRI passes), not one per layer.
        const roots = readdirSync(gcRootsDir(s.sn.root, { realDir: "/nix/store", storeDir: "/nix/store" }));
        assert.deepEqual(roots, [`manifest-${img.manifestDigest.slice("sha256:".length)}`]);
        // Every store layer is a snapshot the snapshotter committed from the store.
        const chains = chainIds(img.diffIds);
        const names = (await listSnapshots(s.sn.socket)).map((i) => i.name);
        for (const l of storeLayers) {
          const chain = chains[img.layers.indexOf(l)];
          assert.ok(
            names.some((n) => isChainSnapshot(n, chain)),
            `store layer ${l.digest} committed as ${chain}`,
          );
        }
        if (series === "2.1")
          assert.match(
            s.containerd.log(),
            /Found 'DisableSnapshotAnnotations' in CRI config which is incompatible with transfer service/,
          );

        // The image filesystem CRI reports (kubelet's image GC measures it): the snapshotter's root from 1.7 on
        // (the exported root), 1.6's own guess otherwise.
        const fsInfo = await s.cri.imageFsInfo({});
        assert.equal(
          fsInfo.image_filesystems[0]?.fs_id?.mountpoint,
          series === "1.6" ? join(s.containerd.root, "io.containerd.snapshotter.v1.nixoci") : s.sn.root,
        );

        assert.equal(s.run(img.ref, `ccfg-${series.replace(".", "")}`), "Hello from nixoci!\n");
        await s.cri.removeImage({ image: { image: imageRef } });
        assert.deepEqual(
          s
            .ctr(["images", "ls", "-q"])
            .split("\n")
            .filter((l) => l.includes("nixoci/hello")),
          [],
          `no image left in ${CRI_NAMESPACE}`,
        );
      },
    );
  });

describe("containerd 2.1 without disable_snapshot_annotations = false", () => {
  test(
    "CRI pulls through the transfer service, which has no unpacker for nixoci: PullImage fails, nothing fetched",
    { timeout: 240_000 },
    async () => {
      const fx = buildFixtures();
      const release = containerdRelease({ ...process.env, NIXOCI_CONTAINERD: "2.1" });
      const key = "  disable_snapshot_annotations = false\n";
      let s: CriStack | undefined;
      try {
        s = await startCriStack({
          prefix: "ccfg21x",
          release,
          snapshotterArgs: ["--store", "/nix/store"],
          snapshotterConfig: (sn) => {
            const printed = nixociOk([
              "snapshotter",
              "--print-containerd-config",
              "--containerd-version",
              "2.1",
              "--address",
              sn.socket,
              "--root",
              sn.root,
            ]).text;
            assert.ok(printed.endsWith(key));
            return printed.slice(0, -key.length);
          },
        });
        const img = pushNixociImage(s.registry, {
          installables: [fx.hello],
          entrypoint: "/bin/hello",
          repo: "nixoci/hello",
          workDir: s.dir,
        });
        const logFrom = registryLogLines(s.registry);
        await assert.rejects(s.cri.pullImage({ image: { image: img.ref } }, { timeoutMs: 120_000 }), {
          details: `failed to pull and unpack image "${img.ref}": unable to initialize unpacker: no unpack platforms defined: invalid argument`,
        });
        assert.deepEqual(blobGets(s.registry, logFrom), []);
      } finally {
        await s?.stop();
      }
    },
  );
});

for (const series of ["1.7", "2.1"] as const)
  describe(`--containerd-version k3s, rendered as k3s does on containerd ${series}`, () => {
    test(
      "k3s's base config with --snapshotter nixoci plus the template: CRI pulls through the snapshotter, store layers not fetched, runs",
      { timeout: 240_000 },
      async () => {
        const fx = buildFixtures();
        const release = containerdRelease({ ...process.env, NIXOCI_CONTAINERD: series });
        let s: CriStack | undefined;
        try {
          s = await startCriStack({
            prefix: `ccfgk3s${series.replace(".", "")}`,
            release,
            snapshotterArgs: ["--store", "/nix/store"],
            snapshotterConfig: (sn) => {
              const template = nixociOk([
                "snapshotter",
                "--print-containerd-config",
                "--containerd-version",
                "k3s",
                "--address",
                sn.socket,
                "--root",
                sn.root,
              ]).text;
              const rendered = template.replace('{{ template "base" . }}', k3sBaseStandIn(release));
              assert.doesNotMatch(rendered, /\{\{/, "nothing else for k3s to render");
              return rendered;
            },
          });
          const img = pushNixociImage(s.registry, {
            installables: [fx.hello],
            entrypoint: "/bin/hello",
            repo: "nixoci/hello",
            workDir: s.dir,
          });
          const { storeLayers } = await pullWithoutStoreBlobs(s, img);
          // Snapshot annotations off (k3s's base): one GC root per store layer, none per image.
          const roots = readdirSync(gcRootsDir(s.sn.root, { realDir: "/nix/store", storeDir: "/nix/store" }));
          assert.equal(roots.length, storeLayers.length, roots.join(" "));
          for (const r of roots) assert.match(r, /^layer-[0-9a-f]{64}$/);
          // The exported root is the image filesystem CRI reports.
          const fsInfo = await s.cri.imageFsInfo({});
          assert.equal(fsInfo.image_filesystems[0]?.fs_id?.mountpoint, s.sn.root);
          assert.equal(s.run(img.ref, `ccfgk3s-${series.replace(".", "")}`), "Hello from nixoci!\n");
        } finally {
          await s?.stop();
        }
      },
    );
  });
