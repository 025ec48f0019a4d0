// nixoci image-service: a CRI runtime.v1.ImageService on a unix socket (kubelet's --image-service-endpoint) that
// loads `nix:0/nix/store/...` image descriptions from the Nix store into containerd's k8s.io namespace and
// forwards every other reference and call to containerd's own CRI (cri/image-service.ts).
// Logs go to stderr (util/logger.ts: text on a terminal, else JSON lines; --log-format). SIGTERM or SIGINT:
// stop accepting calls, finish running ones (bounded), exit 0.
import { resolve } from "node:path";
import { NixImageService } from "../servers/cri/image-service.js";
import { createLogger } from "../util/logger.js";
import { LocalStore } from "../store/local-store.js";
import { serveOps, type OpsServer } from "../util/ops-http.js";
import { helpHint, parse, printHelp, UsageError } from "./args.js";
import { IMAGE_SERVICE } from "./help-texts.js";
import { logFormatOption, logLevelOption } from "./shared-options.js";
import { metricsAddressOption, runUntilSignal, socketPathOption } from "./daemon.js";
import { openStore, trustOptions } from "./stores.js";
import { LazySources } from "../store/lazy-sources.js";

export async function imageServiceCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, IMAGE_SERVICE);
  if (values.help) return printHelp(IMAGE_SERVICE);
  if (positionals.length)
    throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])}; ${helpHint(IMAGE_SERVICE)}`);
  const address = socketPathOption("address", values.address, IMAGE_SERVICE);
  const containerd = socketPathOption("containerd", values.containerd, IMAGE_SERVICE);
  const level = logLevelOption(values["log-level"]);
  const format = logFormatOption(values["log-format"]);
  const namespace = values.namespace ?? "k8s.io";
  if (!/^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$/.test(namespace))
    throw new UsageError(`--namespace: invalid containerd namespace ${JSON.stringify(namespace)}`);
  const metricsAddress = metricsAddressOption(values["metrics-address"]);
  const log = createLogger({ level, format });
  const trust = trustOptions(values["trusted-public-key"], values["no-check-sigs"]);
  const store = new LocalStore(values.store ? { dir: resolve(values.store) } : {});
  // Opened when a pull first needs one: a cache down at start must not stop the node's image endpoint.
  const substituters = new LazySources(
    values.substituter ?? [],
    (url) => openStore(url, trust),
    (url, err) => log.warn("substituter unavailable", { url, error: err.message }),
  );
  const service = new NixImageService({
    containerd,
    snapshotter: values.snapshotter ?? "nixoci",
    namespace,
    store,
    substituters,
    log,
  });
  const swept = await store.sweepTemporaries();
  if (swept.length) log.info("removed abandoned store temporaries", { store: store.realDir, removed: swept });
  let running;
  let ops: OpsServer | undefined;
  try {
    running = await service.serve(address);
    if (metricsAddress)
      ops = await serveOps(metricsAddress, {
        metrics: service.metrics,
        health: () => service.health(),
      });
  } catch (err) {
    await running?.stop(0);
    service.close();
    store.close();
    throw err;
  }
  log.info("listening", {
    address,
    containerd,
    snapshotter: values.snapshotter ?? "nixoci",
    namespace,
    metrics: ops?.address,
    pid: process.pid,
  });
  const srv = running;
  return runUntilSignal(
    log,
    () => Promise.all([srv.stop(5000), ops?.close()]),
    () => {
      service.close();
      store.close();
      substituters.close();
    },
  );
}
