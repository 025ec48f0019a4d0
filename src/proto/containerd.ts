// containerd's snapshots API from nixoci's own minimal protos (proto/containerd): the service, a client, and the
// message types the snapshotter and the containerd client share. Messages are plain objects (see LOADER_OPTIONS).
import * as grpc from "@grpc/grpc-js";
import { loadGrpcPackage } from "./load.js";

export type SnapshotKindName = "UNKNOWN" | "VIEW" | "ACTIVE" | "COMMITTED";

export interface MountMessage {
  type: string;
  source: string;
  target?: string;
  options: string[];
}

export interface TimestampMessage {
  seconds: number;
  nanos: number;
}

export interface InfoMessage {
  name: string;
  parent: string;
  kind: SnapshotKindName;
  created_at: TimestampMessage | null;
  updated_at: TimestampMessage | null;
  labels: Record<string, string>;
}

let cached: grpc.GrpcObject | undefined;

function loaded(): grpc.GrpcObject {
  if (!cached) {
    cached = loadGrpcPackage("containerd", ["snapshots.proto"]);
  }
  return cached;
}

type ServiceCtor = grpc.ServiceClientConstructor;

/** containerd.services.snapshots.v1.Snapshots: its service definition (for a server) and client constructor. */
export function snapshotsService(): ServiceCtor {
  const pkg = loaded() as unknown as {
    containerd: { services: { snapshots: { v1: { Snapshots: ServiceCtor } } } };
  };
  return pkg.containerd.services.snapshots.v1.Snapshots;
}

/** A client of a Snapshots service on a unix socket (for tests and tools). */
export function snapshotsClient(socketPath: string): grpc.Client & Record<string, unknown> {
  const Ctor = snapshotsService();
  return new Ctor(`unix:${socketPath}`, grpc.credentials.createInsecure()) as grpc.Client &
    Record<string, unknown>;
}

/** A Date as a google.protobuf.Timestamp. */
export function toTimestamp(ms: number): TimestampMessage {
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: Math.round((ms - seconds * 1000) * 1e6) };
}
