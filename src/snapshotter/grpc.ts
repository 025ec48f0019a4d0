// Loads nixoci's own minimal containerd protos (proto/containerd/*.proto) with @grpc/proto-loader. Google's
// well-known types (Empty, Timestamp, FieldMask) come from protobufjs's built-in definitions, so no copy of them
// is needed. Messages are plain objects: snake_case field names, enums as their names, int64 as numbers.
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

/** The directory holding snapshots.proto and mount.proto: `proto/containerd` at the package root. */
export function protoDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = join(dir, "proto", "containerd");
    if (existsSync(join(candidate, "snapshots.proto"))) return candidate;
    dir = dirname(dir);
  }
  throw new Error("nixoci: proto/containerd/snapshots.proto not found next to the installed package");
}

export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  arrays: true,
  objects: true,
};

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
    const dir = protoDir();
    const def = protoLoader.loadSync(join(dir, "snapshots.proto"), { ...LOADER_OPTIONS, includeDirs: [dir] });
    cached = grpc.loadPackageDefinition(def);
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
