// The containerd configuration a node needs to run images through `nixoci snapshotter`, in the schema of the
// node's containerd (`nixoci snapshotter --print-containerd-config`): the proxy plugin, CRI pulls unpacking into
// it, and snapshot annotations on. The facts, from containerd's own default configs (`containerd config default`)
// and docs/cri/config.md, checked by test/cli/containerd-config.test.ts against 1.6, 1.7 and 2.1:
// - 1.x reads config version 2, where the CRI plugin is one table, `[plugins."io.containerd.grpc.v1.cri"]`, and
//   the snapshotter and `disable_snapshot_annotations` are keys of its `.containerd` table;
// - 2.x reads version 3 (and migrates 2), where CRI is split: image settings are
//   `[plugins."io.containerd.cri.v1.images"]`, runtime settings `io.containerd.cri.v1.runtime`;
// - `[proxy_plugins.NAME] type = "snapshot"` is the same in both; from 1.7 on its `exports` table is read, and
//   CRI takes the exported `root` as the image filesystem it reports (ImageFsInfo), else (and always on 1.6)
//   containerd's ROOT/io.containerd.snapshotter.v1.NAME, a directory nothing creates for a proxy plugin;
// - `disable_snapshot_annotations` defaults to true everywhere: off, CRI does not give the snapshotter the image's
//   reference and manifest digest (containerd.io/snapshot/cri.*), so GC roots are one per layer, not per image
//   (gcroots.ts). The layers' own nix-store-path annotations reach Prepare either way. From 2.1 on, CRI pulls
//   through the transfer service by default, which does not add those labels and unpacks only into the
//   snapshotters of its `unpack_config` (by default overlayfs alone: a pull for nixoci then fails, "no unpack
//   platforms defined"); `disable_snapshot_annotations = false` makes CRI fall back to the client pull of 1.x and
//   2.0 (containerd logs a warning naming the key). (The transfer service works too, with nixoci in its
//   unpack_config and `[proxy_plugins.nixoci.exports] enable_remote_snapshot_annotations = "true"`: checked by
//   hand on 2.1.9, no store layer fetched; not what the snippet sets, as listing any unpack_config replaces the
//   default one.)
// - k3s embeds containerd and renders its config from a template (k3sConfigTemplate).

/** A containerd release line: 1.6, 1.7, 2.1, or 2.x (minor undefined: any 2.x). */
export interface ContainerdVersion {
  major: number;
  minor?: number;
}

/** The proxy plugin name nixoci's docs, image service and tests use. */
export const PROXY_PLUGIN_NAME = "nixoci";
/** Where the examples put the snapshotter's socket and root. */
export const DEFAULT_SNAPSHOTTER_SOCKET = "/run/nixoci/snapshotter.sock";
export const DEFAULT_SNAPSHOTTER_ROOT = "/var/lib/nixoci/snapshotter";

/** "1.7", "2.1", "2.x", "v2.1.9", "1.7.24~ds1": the release line, or undefined when it is not a version. */
export function parseContainerdVersion(s: string): ContainerdVersion | undefined {
  const m = /^v?(\d+)\.(\d+|x)(?:[.~+-]\S*)?$/.exec(s.trim());
  if (!m) return undefined;
  return { major: Number(m[1]), minor: m[2] === "x" ? undefined : Number(m[2]) };
}

/** "1.7", "2.x". */
export function formatContainerdVersion(v: ContainerdVersion): string {
  return `${v.major}.${v.minor ?? "x"}`;
}

/** Why nixoci has no config for `v`, or undefined when it has one (1.6 and later 1.x, any 2.x). */
export function unsupportedContainerdVersion(v: ContainerdVersion): string | undefined {
  if (v.major === 2) return undefined;
  if (v.major === 1 && v.minor !== undefined && v.minor >= 6) return undefined;
  return v.major < 2
    ? `containerd ${formatContainerdVersion(v)} is older than 1.6, the oldest nixoci's snapshotter is tested with`
    : `containerd ${formatContainerdVersion(v)} is newer than the 2.x configs nixoci knows`;
}

/**
 * Whether containerd `v` mounts a Mount's `target` inside the rootfs (1.7 and later; 1.6 ignores the field, so
 * binds given one would stack on the rootfs itself): what --nix-layers target needs.
 */
export function mountsTargets(v: ContainerdVersion): boolean {
  return v.major >= 2 || (v.major === 1 && (v.minor ?? 0) >= 7);
}

/** Where the snapshotter listens and keeps its state, and the other serving options the user gave. */
export interface SnapshotterPlace {
  address: string;
  root: string;
  options?: string[];
}

/** The command line that runs the snapshotter for `where`, words quoted for a POSIX shell where they need it. */
function runLine(where: SnapshotterPlace, more: string[] = []): string {
  const words = ["--address", where.address, "--root", where.root, ...(where.options ?? []), ...more];
  const quote = (w: string): string => (/^[\w@%+=:,./-]+$/.test(w) ? w : `'${w.replaceAll("'", `'\\''`)}'`);
  return ["nixoci snapshotter", ...words.map(quote)].join(" ");
}

/**
 * The config snippet for containerd `v` (supported: see unsupportedContainerdVersion) with the snapshotter on
 * `address`, its --root `root`: TOML to add to containerd's config.toml, with comments saying what each part is for.
 */
export function containerdConfigSnippet(v: ContainerdVersion, where: SnapshotterPlace): string {
  const q = (s: string): string => JSON.stringify(s);
  const v3 = v.major >= 2;
  const criTable = v3
    ? `plugins."io.containerd.cri.v1.images"`
    : `plugins."io.containerd.grpc.v1.cri".containerd`;
  // 1.6 has no proxy plugin exports: its CRI takes containerd's ROOT/io.containerd.snapshotter.v1.NAME.
  const exportsRoot = v.major >= 2 || (v.minor ?? 0) >= 7;
  return [
    `# nixoci snapshotter, containerd ${formatContainerdVersion(v)}: add to containerd's config.toml (config version ${v3 ? 3 : 2}` +
      (v3 ? `;` : `).`),
    ...(v3 ? [`# containerd 2.x reads these tables from a version 2 file too).`] : []),
    `# Where the file already has [${criTable}],`,
    `# set the two keys there instead. Then run`,
    `#   ${runLine(where)}`,
    `# and restart containerd.`,
    `[proxy_plugins.${PROXY_PLUGIN_NAME}]`,
    `  type = "snapshot"`,
    `  address = ${q(where.address)}`,
    ...(exportsRoot
      ? [
          `  # The image filesystem CRI reports (ImageFsInfo: what kubelet's image garbage collection measures).`,
          `  [proxy_plugins.${PROXY_PLUGIN_NAME}.exports]`,
          `    root = ${q(where.root)}`,
        ]
      : [
          `# containerd 1.6 reports its own ROOT/io.containerd.snapshotter.v1.${PROXY_PLUGIN_NAME} as the image filesystem`,
          `# (CRI ImageFsInfo: what kubelet's image garbage collection measures), whatever the snapshotter's --root:`,
          `# give the snapshotter that directory as --root, or create it on the filesystem of --root.`,
        ]),
    ``,
    `# CRI pulls unpack into nixoci. Snapshot annotations (off by default) give the snapshotter each image's`,
    `# reference and manifest digest: one GC root per image instead of one per layer.`,
    ...(v3 && v.minor !== 0
      ? [
          `# From containerd 2.1 on the key also makes CRI pull as 2.0 did (containerd logs a warning saying so at`,
          `# start), not through the transfer service, which passes no annotations and unpacks only into the`,
          `# snapshotters its unpack_config lists: without the key, CRI PullImage fails ("no unpack platforms defined").`,
        ]
      : []),
    `[${criTable}]`,
    `  snapshotter = ${q(PROXY_PLUGIN_NAME)}`,
    `  disable_snapshot_annotations = false`,
    ``,
  ].join("\n");
}

/** Where k3s's embedded containerd listens (what the snapshotter's --containerd-address names on a k3s node). */
export const K3S_CONTAINERD_ADDRESS = "/run/k3s/containerd/containerd.sock";

/**
 * The containerd config template for a k3s node (`--containerd-version k3s`). k3s renders its containerd's config
 * from a Go template when one is next to the generated config.toml, and `{{ template "base" . }}` is k3s's own
 * config: extending it keeps what k3s sets per node and per release (CNI, sandbox image, registries). The base
 * already has CRI's image table (snapshotter = k3s's --snapshotter, disable_snapshot_annotations = true, and for
 * containerd 2.x use_local_image_pull = true, which makes CRI pull with its own client as 2.0 did), and a TOML
 * table cannot be given twice: so only the proxy plugin is added, k3s's --snapshotter names it, and snapshot
 * annotations stay off (GC roots one per layer, not per image: gcroots.ts). The proxy plugin's table is the same
 * in config versions 2 and 3, so one template serves k3s on containerd 1.7 and 2.x.
 */
export function k3sConfigTemplate(where: SnapshotterPlace): string {
  const q = (s: string): string => JSON.stringify(s);
  return [
    `{{ template "base" . }}`,
    ``,
    `# nixoci snapshotter, k3s: a containerd config template. The line above is k3s's own config. Save as`,
    `# /var/lib/rancher/k3s/agent/etc/containerd/config-v3.toml.tmpl for k3s on containerd 2.x (v1.31.6+k3s1,`,
    `# v1.32.2+k3s1 and later), config.toml.tmpl in the same directory for earlier k3s. Start k3s (server or`,
    `# agent) with --snapshotter ${PROXY_PLUGIN_NAME}: its base config then makes ${PROXY_PLUGIN_NAME} CRI's snapshotter. Run`,
    `#   ${runLine(where, ["--containerd-address", K3S_CONTAINERD_ADDRESS])}`,
    `# and restart k3s.`,
    `[proxy_plugins.${PROXY_PLUGIN_NAME}]`,
    `  type = "snapshot"`,
    `  address = ${q(where.address)}`,
    `  # The image filesystem CRI reports (ImageFsInfo: what kubelet's image garbage collection measures).`,
    `  [proxy_plugins.${PROXY_PLUGIN_NAME}.exports]`,
    `    root = ${q(where.root)}`,
    ``,
  ].join("\n");
}
