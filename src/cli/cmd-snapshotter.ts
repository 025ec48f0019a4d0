// nixoci snapshotter: a containerd proxy snapshotter (snapshots v1 over gRPC on a unix socket) with durable
// metadata under --root. For now every layer is handled like containerd's overlay snapshotter; --store,
// --substituter and --trusted-public-key are accepted and kept in the options for the Nix-aware layers.
// Logs are JSON lines on stderr. SIGTERM or SIGINT: stop accepting calls, finish running ones (bounded), exit 0.
import { resolve } from "node:path";
import { createLogger, parseLogLevel } from "../registry/logging.js";
import { serveSnapshots } from "../snapshotter/server.js";
import { OverlaySnapshotter } from "../snapshotter/overlay.js";
import { parse, UsageError } from "./args.js";

const USAGE = `nixoci snapshotter --address SOCK --root DIR [--store DIR] [--substituter URL]... [--trusted-public-key K]...
    [--log-level debug|info|warn|error|silent]`;

export interface SnapshotterOptions {
  address: string;
  root: string;
  store?: string;
  substituters: string[];
  trustedPublicKeys: string[];
}

export function parseSnapshotterArgs(
  argv: string[],
): SnapshotterOptions & { help: boolean; logLevel: string } {
  const { values, positionals } = parse(
    argv,
    {
      address: { type: "string" },
      root: { type: "string" },
      store: { type: "string" },
      substituter: { type: "string", multiple: true },
      "trusted-public-key": { type: "string", multiple: true },
      "log-level": { type: "string" },
    },
    USAGE,
  );
  if (values.help)
    return { help: true, address: "", root: "", substituters: [], trustedPublicKeys: [], logLevel: "info" };
  if (positionals.length)
    throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}\nusage: ${USAGE}`);
  if (!values.address) throw new UsageError(`--address is required\nusage: ${USAGE}`);
  if (!values.root) throw new UsageError(`--root is required\nusage: ${USAGE}`);
  // Unix socket paths are limited to 107 bytes.
  if (Buffer.byteLength(resolve(values.address)) > 107)
    throw new UsageError(
      `--address ${JSON.stringify(values.address)}: a unix socket path must be at most 107 bytes`,
    );
  const logLevel = values["log-level"] ?? "info";
  if (!parseLogLevel(logLevel))
    throw new UsageError(`--log-level: unknown level ${JSON.stringify(logLevel)}`);
  return {
    help: false,
    address: resolve(values.address),
    root: resolve(values.root),
    store: values.store ? resolve(values.store) : undefined,
    substituters: values.substituter ?? [],
    trustedPublicKeys: values["trusted-public-key"] ?? [],
    logLevel,
  };
}

export async function snapshotterCommand(argv: string[]): Promise<number> {
  const opts = parseSnapshotterArgs(argv);
  if (opts.help) {
    process.stdout.write(`usage: ${USAGE}\n`);
    return 0;
  }
  const log = createLogger({ level: parseLogLevel(opts.logLevel) });
  const sn = new OverlaySnapshotter({ root: opts.root });
  let running;
  try {
    running = await serveSnapshots(sn, opts.address, log);
  } catch (err) {
    sn.close();
    throw err;
  }
  log.info("listening", {
    address: opts.address,
    root: opts.root,
    store: opts.store,
    substituters: opts.substituters.length ? opts.substituters : undefined,
    pid: process.pid,
  });
  const srv = running;
  return new Promise<number>((done) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (stopping) return;
      stopping = true;
      log.info("stopping", { signal });
      void srv
        .stop(5000)
        .catch((err: unknown) => log.error("stop", { error: err }))
        .finally(() => {
          sn.close();
          process.off("SIGTERM", onSignal);
          process.off("SIGINT", onSignal);
          log.info("stopped");
          done(0);
        });
    };
    process.on("SIGTERM", onSignal);
    process.on("SIGINT", onSignal);
  });
}
