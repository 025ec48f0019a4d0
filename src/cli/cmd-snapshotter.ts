// nixoci snapshotter: a containerd proxy snapshotter (snapshots v1 over gRPC on a unix socket) with durable
// metadata under --root. Ordinary layers are handled like containerd's overlay snapshotter; layers whose
// labels name their store paths are taken from --store (default /nix/store), substituting missing paths from
// --substituter caches (signatures checked against --trusted-public-key plus nix.conf's keys), then held as
// hard links to the store (--nix-layers link; auto with the store on ROOT's filesystem), as overlay metacopy
// stubs over the store as a data-only layer (metacopy; auto across filesystems when the kernel supports it),
// composed with bind mounts (bind), or as empty layers whose paths containers get through one store view per
// image (an overlay redirecting into the store, --target-mounts view, the default where it works) or a read-only
// bind per store path that containerd >= 1.7 mounts itself (--target-mounts binds) (target; auto when the node's
// containerd is 1.7 or later: --containerd-version, else the running containerd's Version API at
// --containerd-address, else `containerd --version`, asked on the first nix layer;
// snapshotter/containerd-version.ts); see snapshotter/nix-layers.ts.
// Logs go to stderr (util/logger.ts: text on a terminal, else JSON lines; --log-format). SIGTERM or SIGINT:
// stop accepting calls, finish running ones (bounded), exit 0. --print-containerd-config prints the config a
// node's containerd needs for it (snapshotter/containerd-config.ts) and exits.
import { resolve } from "node:path";
import { createLogger, type LogFormat, type Logger, type LogLevel } from "../util/logger.js";
import { serveSnapshots } from "../servers/snapshotter/server.js";
import { lockDirectory } from "../util/dir-lock.js";
import { SnapshotterMetrics } from "../servers/snapshotter/metrics.js";
import { serveOps, type OpsServer } from "../util/ops-http.js";
import { NixSnapshotter, type NixLayerMode } from "../servers/snapshotter/nix-layers.js";
import { LocalStore } from "../store/local-store.js";
import { helpHint, parse, printHelp, UsageError } from "./args.js";
import { logFormatOption, logLevelOption } from "./shared-options.js";
import { SNAPSHOTTER } from "./help-texts.js";
import { metricsAddressOption, runUntilSignal, socketPathOption } from "./daemon.js";
import { trustOptions } from "./stores.js";
import {
  containerdConfigSnippet,
  DEFAULT_SNAPSHOTTER_ROOT,
  DEFAULT_SNAPSHOTTER_SOCKET,
  formatContainerdVersion,
  k3sConfigTemplate,
  mountsTargets,
  parseContainerdVersion,
  unsupportedContainerdVersion,
  type ContainerdVersion,
} from "../servers/snapshotter/containerd-config.js";
import {
  DEFAULT_CONTAINERD_ADDRESS,
  nodeContainerdVersion,
} from "../servers/snapshotter/containerd-version.js";
import type { MountTargets, TargetMounts } from "../servers/snapshotter/nix-layer-modes/auto.js";
import { NixociError } from "../util/errors.js";

export interface SnapshotterOptions {
  address: string;
  root: string;
  store?: string;
  substituters: string[];
  trustedPublicKeys: string[];
  /** --no-check-sigs: accept unsigned paths from the substituters. */
  allowUnsigned: boolean;
  /** --trust-layer-labels: commit nix layers without checking their chain IDs (layer-verify.ts). */
  trustLayerLabels: boolean;
  /** How nix layers hold their store paths (see NixSnapshotterOptions.nixLayers). */
  nixLayers: NixLayerMode;
  /** --mountpoints-dir (undefined: the snapshotter's default). */
  mountpointsDir?: string;
  /** --target-mounts: how containers above target-mode layers get their store paths. */
  targetMounts: TargetMounts;
  /** HOST:PORT for /healthz and /metrics. */
  metricsAddress?: string;
  /**
   * --print-containerd-config: print containerd's config for this snapshotter and exit, for the containerd
   * named by --containerd-version ("k3s": k3s's config template; undefined: ask the containerd at
   * containerdAddress, else `containerd --version`).
   */
  printContainerdConfig?: {
    version: ContainerdVersion | "k3s" | undefined;
    /** The serving options given with it (--store, --substituter...), for the printed command line. */
    runOptions: string[];
  };
  /**
   * --containerd-version when serving: the node's containerd (undefined: ask the containerd at containerdAddress,
   * else `containerd --version`).
   */
  containerdVersion?: ContainerdVersion;
  /** --containerd-address: the running containerd's socket, asked for its version. */
  containerdAddress: string;
}

const NIX_LAYER_MODES: readonly string[] = [
  "auto",
  "link",
  "metacopy",
  "bind",
  "target",
] satisfies NixLayerMode[];

function isNixLayerMode(s: string): s is NixLayerMode {
  return NIX_LAYER_MODES.includes(s);
}

const TARGET_MOUNTS: readonly string[] = ["auto", "view", "binds"] satisfies TargetMounts[];

function isTargetMounts(s: string): s is TargetMounts {
  return TARGET_MOUNTS.includes(s);
}

type ParsedSnapshotterArgs = SnapshotterOptions & {
  help: boolean;
  logLevel: LogLevel | "silent";
  logFormat: LogFormat;
};

/** What nothing was asked of: --help, and the fields --print-containerd-config does not use. */
const NOTHING: ParsedSnapshotterArgs = {
  help: false,
  address: "",
  root: "",
  substituters: [],
  trustedPublicKeys: [],
  allowUnsigned: false,
  trustLayerLabels: false,
  nixLayers: "auto",
  targetMounts: "auto",
  containerdAddress: DEFAULT_CONTAINERD_ADDRESS,
  logLevel: "info",
  logFormat: "json",
};

export function parseSnapshotterArgs(argv: string[]): ParsedSnapshotterArgs {
  const { values, positionals } = parse(argv, SNAPSHOTTER);
  if (values.help) return { ...NOTHING, help: true };
  if (positionals.length)
    throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}; ${helpHint(SNAPSHOTTER)}`);
  const versionFlag = values["containerd-version"];
  const containerdAddress =
    values["containerd-address"] === undefined
      ? DEFAULT_CONTAINERD_ADDRESS
      : socketPathOption("containerd-address", values["containerd-address"], SNAPSHOTTER);
  if (values["print-containerd-config"])
    return {
      ...NOTHING,
      containerdAddress,
      // Where containerd finds the snapshotter, and the directory its CRI reports as the image filesystem.
      address:
        values.address === undefined
          ? DEFAULT_SNAPSHOTTER_SOCKET
          : socketPathOption("address", values.address, SNAPSHOTTER),
      root: resolve(values.root ?? DEFAULT_SNAPSHOTTER_ROOT),
      printContainerdConfig: {
        version:
          versionFlag === undefined
            ? undefined
            : versionFlag === "k3s"
              ? "k3s"
              : containerdVersionOption(versionFlag),
        runOptions: servingOptionsGiven(values),
      },
    };
  const address = socketPathOption("address", values.address, SNAPSHOTTER);
  if (!values.root) throw new UsageError(`--root is required; ${helpHint(SNAPSHOTTER)}`);
  const nixLayers = values["nix-layers"] ?? "auto";
  if (!isNixLayerMode(nixLayers))
    throw new UsageError(
      `--nix-layers: expected auto, link, metacopy, bind or target, not ${JSON.stringify(nixLayers)}`,
    );
  const targetMounts = values["target-mounts"] ?? "auto";
  if (!isTargetMounts(targetMounts))
    throw new UsageError(
      `--target-mounts: expected auto, view or binds, not ${JSON.stringify(targetMounts)}`,
    );
  if (versionFlag === "k3s")
    throw new UsageError(
      `--containerd-version k3s: only with --print-containerd-config (serving, name k3s's containerd release, ` +
        `or let the snapshotter ask it: --containerd-address /run/k3s/containerd/containerd.sock)`,
    );
  const containerdVersion = versionFlag === undefined ? undefined : containerdVersionOption(versionFlag);
  if (
    nixLayers === "target" &&
    targetMounts === "binds" &&
    containerdVersion &&
    !mountsTargets(containerdVersion)
  )
    throw new UsageError(
      `--nix-layers target --target-mounts binds: containerd ${formatContainerdVersion(containerdVersion)} does not ` +
        `mount a mount's target (from 1.7 on it does); use --target-mounts view, or --nix-layers auto, link or metacopy`,
    );
  const metricsAddress = metricsAddressOption(values["metrics-address"]);
  const logLevel = logLevelOption(values["log-level"]);
  const logFormat = logFormatOption(values["log-format"]);
  return {
    help: false,
    address,
    root: resolve(values.root),
    store: values.store ? resolve(values.store) : undefined,
    substituters: values.substituter ?? [],
    trustedPublicKeys: values["trusted-public-key"] ?? [],
    allowUnsigned: values["no-check-sigs"] ?? false,
    trustLayerLabels: values["trust-layer-labels"] ?? false,
    nixLayers,
    mountpointsDir: values["mountpoints-dir"] ? resolve(values["mountpoints-dir"]) : undefined,
    targetMounts,
    containerdVersion,
    containerdAddress,
    metricsAddress,
    logLevel,
    logFormat,
  };
}

/**
 * The options given with --print-containerd-config that serving takes (the printed "Then run" line repeats them, so
 * a node set up with `--store /mnt/san/nix/store` is told to run the snapshotter with it). Paths made absolute.
 */
function servingOptionsGiven(values: ReturnType<typeof parse>["values"]): string[] {
  const out: string[] = [];
  const one = (flag: string, v: unknown, path = false): void => {
    if (typeof v === "string") out.push(`--${flag}`, path ? resolve(v) : v);
  };
  const many = (flag: string, v: unknown): void => {
    if (Array.isArray(v)) for (const x of v) one(flag, x);
  };
  one("store", values.store, true);
  many("substituter", values.substituter);
  many("trusted-public-key", values["trusted-public-key"]);
  if (values["no-check-sigs"] === true) out.push("--no-check-sigs");
  if (values["trust-layer-labels"] === true) out.push("--trust-layer-labels");
  one("nix-layers", values["nix-layers"]);
  one("target-mounts", values["target-mounts"]);
  one("mountpoints-dir", values["mountpoints-dir"], true);
  one("metrics-address", values["metrics-address"]);
  one("log-level", values["log-level"]);
  one("log-format", values["log-format"]);
  return out;
}

/** --containerd-version: a release line nixoci has a config for (a usage error otherwise). */
function containerdVersionOption(value: string): ContainerdVersion {
  const v = parseContainerdVersion(value);
  if (!v)
    throw new UsageError(
      `--containerd-version: expected 1.6, 1.7 or 2.x (or a version such as 2.1 or v2.1.9), not ${JSON.stringify(value)}`,
    );
  const why = unsupportedContainerdVersion(v);
  if (why) throw new UsageError(`--containerd-version ${value}: ${why}`);
  return v;
}

/** How long the Version API may take: containerd is up when it calls the snapshotter; a CLI should not hang. */
const VERSION_API_TIMEOUT_MS = { serving: 5000, print: 2000 };

/**
 * Whether the node's containerd mounts a Mount's target inside the rootfs, which 1.7 and later do and 1.6 does
 * not: auto's target mode needs it. Asked on the first nix layer (containerd calls the snapshotter, so it is up
 * by then): --containerd-version, else the Version API at --containerd-address, else `containerd --version`; the
 * debug log says which decided. A containerd that cannot be asked counts as 1.6 (the modes that work
 * everywhere), and the log says so.
 */
function nodeMountsTargets(flag: ContainerdVersion | undefined, address: string, log: Logger): MountTargets {
  return async () => {
    try {
      const node = await nodeContainerdVersion({
        flag,
        address,
        timeoutMs: VERSION_API_TIMEOUT_MS.serving,
      });
      const targets = mountsTargets(node.version);
      log.debug("containerd version", {
        version: formatContainerdVersion(node.version),
        mountTargets: targets,
        source: node.source,
        address: node.source === "version API" ? address : undefined,
        reported: node.reported,
      });
      return targets;
    } catch (err) {
      log.warn("containerd's version unknown; nix layers are not mounted by target (containerd >= 1.7)", {
        error: (err as Error).message,
        versionApi: (err as { apiError?: string }).apiError,
      });
      return false;
    }
  };
}

export async function snapshotterCommand(argv: string[]): Promise<number> {
  const opts = parseSnapshotterArgs(argv);
  if (opts.help) return printHelp(SNAPSHOTTER);
  if (opts.printContainerdConfig) {
    const where = { address: opts.address, root: opts.root, options: opts.printContainerdConfig.runOptions };
    const named = opts.printContainerdConfig.version;
    if (named === "k3s") {
      process.stdout.write(k3sConfigTemplate(where));
      return 0;
    }
    const node = await nodeContainerdVersion({
      flag: named,
      address: opts.containerdAddress,
      timeoutMs: VERSION_API_TIMEOUT_MS.print,
    });
    const why = unsupportedContainerdVersion(node.version);
    if (why)
      throw new NixociError(
        node.source === "version API" ? `containerd's Version API at ${opts.containerdAddress}` : node.source,
        why,
      );
    process.stdout.write(containerdConfigSnippet(node.version, where));
    return 0;
  }
  // Before anything touches the root (the start-up sweeps below unmount and remove what they take as stale).
  const lock = lockDirectory(opts.root, "a nixoci snapshotter", "stop it first or give another --root");
  const log = createLogger({ level: opts.logLevel, format: opts.logFormat });
  const trust = trustOptions(opts.trustedPublicKeys, opts.allowUnsigned);
  const store = new LocalStore(opts.store ? { dir: opts.store } : {});
  const metrics = new SnapshotterMetrics();
  const mountTargets =
    opts.nixLayers === "auto" && nodeMountsTargets(opts.containerdVersion, opts.containerdAddress, log);
  const sn = new NixSnapshotter({
    metrics,
    root: opts.root,
    store,
    substituters: opts.substituters,
    trust,
    trustLayerLabels: opts.trustLayerLabels,
    log,
    nixLayers: opts.nixLayers,
    mountpointsDir: opts.mountpointsDir,
    mountTargets,
    targetMounts: opts.targetMounts,
  });
  let running;
  let ops: OpsServer | undefined;
  try {
    // Temporaries a killed predecessor left in the store (a substitution cut short).
    const swept = await store.sweepTemporaries();
    if (swept.length)
      log.info("removed abandoned store temporaries", { store: store.realDir, removed: swept });
    // Compositions left by a killed predecessor that are incomplete or whose snapshot is gone.
    await sn.unmountStale();
    // GC roots as the metadata says (a predecessor killed mid-change, snapshots removed meanwhile).
    await sn.syncGcRoots();
    // Mountpoints directories and store views of chains that are gone; views no container uses unmounted.
    await sn.sweepMountpoints(true);
    running = await serveSnapshots(sn, opts.address, log, metrics);
    if (opts.metricsAddress)
      ops = await serveOps(opts.metricsAddress, {
        metrics,
        health: async () => {
          try {
            sn.metadata.ping();
            return undefined;
          } catch (err) {
            return `metadata database: ${(err as Error).message}`;
          }
        },
      });
  } catch (err) {
    await running?.stop(0);
    sn.close();
    store.close();
    lock.release();
    throw err;
  }
  log.info("listening", {
    address: opts.address,
    root: opts.root,
    store: opts.store,
    substituters: opts.substituters.length ? opts.substituters : undefined,
    metrics: ops?.address,
    pid: process.pid,
  });
  const srv = running;
  return runUntilSignal(
    log,
    () => Promise.all([srv.stop(5000), ops?.close()]),
    () => {
      sn.close();
      store.close();
      lock.release();
    },
  );
}
