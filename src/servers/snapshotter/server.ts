// The containerd.services.snapshots.v1.Snapshots gRPC service over an OverlaySnapshotter, on a unix socket.
// Errors carry the gRPC codes containerd's errdefs.FromGRPC turns back into its own: NOT_FOUND,
// ALREADY_EXISTS, FAILED_PRECONDITION, INVALID_ARGUMENT; anything else is INTERNAL.
import * as grpc from "@grpc/grpc-js";
import type { Logger } from "../../util/logger.js";
import { serveOnUnixSocket, type RunningServer } from "../../util/grpc-unix.js";

export type { RunningServer } from "../../util/grpc-unix.js";
import {
  snapshotsService,
  toTimestamp,
  type InfoMessage,
  type SnapshotKindName,
} from "../../proto/containerd.js";
import { SnapshotError } from "./metadata.js";
import type { SnapshotterMetrics } from "./metrics.js";
import type { OverlaySnapshotter, SnapshotInfo } from "./overlay.js";

const CODES: Record<SnapshotError["code"], grpc.status> = {
  "not-found": grpc.status.NOT_FOUND,
  "already-exists": grpc.status.ALREADY_EXISTS,
  "failed-precondition": grpc.status.FAILED_PRECONDITION,
  "invalid-argument": grpc.status.INVALID_ARGUMENT,
};

const KIND_NAMES: Record<SnapshotInfo["kind"], SnapshotKindName> = {
  active: "ACTIVE",
  view: "VIEW",
  committed: "COMMITTED",
};

/** infos per List response message (containerd's own server batches by 100 as well). */
const LIST_BATCH = 100;

export function infoMessage(i: SnapshotInfo): InfoMessage {
  return {
    name: i.name,
    parent: i.parent,
    kind: KIND_NAMES[i.kind],
    created_at: toTimestamp(i.created),
    updated_at: toTimestamp(i.updated),
    labels: i.labels,
  };
}

function grpcError(err: unknown): Partial<grpc.StatusObject> {
  if (err instanceof SnapshotError) return { code: CODES[err.code], details: err.message };
  const e = err as Error;
  return { code: grpc.status.INTERNAL, details: e?.message ?? String(err) };
}

type Req = Record<string, unknown>;
const str = (v: unknown): string => (typeof v === "string" ? v : "");
const labelsOf = (v: unknown): Record<string, string> =>
  v && typeof v === "object" ? { ...(v as Record<string, string>) } : {};

/** Methods logged at debug level (containerd calls them often); the rest at info. */
const QUIET = new Set(["Stat", "Mounts", "List", "Usage"]);

export function snapshotsHandlers(
  sn: OverlaySnapshotter,
  log: Logger,
  metrics?: SnapshotterMetrics,
): grpc.UntypedServiceImplementation {
  const unary =
    (method: string, fn: (req: Req) => Promise<unknown> | unknown): grpc.handleUnaryCall<Req, unknown> =>
    (call, callback) => {
      const start = performance.now();
      const req = call.request;
      Promise.resolve()
        .then(() => fn(req))
        .then(
          (res) => {
            const fields: Record<string, unknown> = {
              method,
              key: req.key || undefined,
              parent: req.parent || undefined,
              name: req.name || undefined,
              ms: Math.round(performance.now() - start),
            };
            // Labels can be long (a store path per layer annotation): only at debug level.
            if (log.enabled("debug") && req.labels && Object.keys(req.labels).length)
              fields.labels = req.labels;
            if (QUIET.has(method)) log.debug("rpc", fields);
            else log.info("rpc", fields);
            metrics?.observe(method, grpc.status.OK, start);
            callback(null, res);
          },
          (err: unknown) => {
            const status = grpcError(err);
            const fields = {
              method,
              key: req.key || undefined,
              code: grpc.status[status.code ?? 13],
              error: status.details,
              ms: Math.round(performance.now() - start),
            };
            if (status.code === grpc.status.INTERNAL) log.error("rpc", fields);
            else if (QUIET.has(method)) log.debug("rpc", fields);
            else log.info("rpc", fields);
            metrics?.observe(method, status.code ?? grpc.status.INTERNAL, start);
            callback(status, null);
          },
        );
    };
  return {
    Prepare: unary("Prepare", async (r) => ({
      mounts: await sn.prepare(str(r.key), str(r.parent), labelsOf(r.labels)),
    })),
    View: unary("View", async (r) => ({
      mounts: await sn.view(str(r.key), str(r.parent), labelsOf(r.labels)),
    })),
    Mounts: unary("Mounts", async (r) => ({ mounts: await sn.mounts(str(r.key)) })),
    Commit: unary("Commit", async (r) => {
      await sn.commit(str(r.name), str(r.key), labelsOf(r.labels));
      return {};
    }),
    Remove: unary("Remove", async (r) => {
      await sn.remove(str(r.key));
      return {};
    }),
    Stat: unary("Stat", (r) => ({ info: infoMessage(sn.stat(str(r.key))) })),
    Update: unary("Update", async (r) => {
      const info = (r.info ?? {}) as Req;
      const mask = (r.update_mask ?? null) as { paths?: string[] } | null;
      return { info: infoMessage(await sn.update(str(info.name), labelsOf(info.labels), mask?.paths ?? [])) };
    }),
    Usage: unary("Usage", async (r) => sn.usage(str(r.key))),
    Cleanup: unary("Cleanup", async () => {
      const removed = await sn.cleanup();
      if (removed.length) log.info("cleanup", { removed });
      return {};
    }),
    List: ((call: grpc.ServerWritableStream<Req, unknown>) => {
      const start = performance.now();
      try {
        const filters = Array.isArray(call.request.filters) ? (call.request.filters as string[]) : [];
        const infos = sn.list(filters).map(infoMessage);
        for (let i = 0; i < infos.length; i += LIST_BATCH)
          call.write({ info: infos.slice(i, i + LIST_BATCH) });
        log.debug("rpc", {
          method: "List",
          filters,
          count: infos.length,
          ms: Math.round(performance.now() - start),
        });
        metrics?.observe("List", grpc.status.OK, start);
        call.end();
      } catch (err) {
        const status = grpcError(err);
        log.warn("rpc", { method: "List", code: grpc.status[status.code ?? 13], error: status.details });
        metrics?.observe("List", status.code ?? grpc.status.INTERNAL, start);
        call.emit("error", status);
      }
    }) as grpc.handleServerStreamingCall<Req, unknown>,
  };
}

/** Serves the Snapshots service on the unix socket `address` (a stale socket file there is replaced). */
export function serveSnapshots(
  sn: OverlaySnapshotter,
  address: string,
  log: Logger,
  metrics?: SnapshotterMetrics,
): Promise<RunningServer> {
  return serveOnUnixSocket(address, (server) =>
    server.addService(snapshotsService().service, snapshotsHandlers(sn, log, metrics)),
  );
}
