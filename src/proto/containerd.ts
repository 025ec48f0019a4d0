// containerd's snapshots API from nixoci's own minimal protos (proto/containerd): the service, a client, and the
// message types the snapshotter and the containerd client share. Messages are plain objects (see LOADER_OPTIONS).
import * as grpc from "@grpc/grpc-js";
import type { Info__Output } from "./generated/containerd/containerd/services/snapshots/v1/Info.js";
import type { Kind__Output } from "./generated/containerd/containerd/services/snapshots/v1/Kind.js";
import type { Info__Output as ContentInfo__Output } from "./generated/containerd/containerd/services/content/v1/Info.js";
import type { Image__Output } from "./generated/containerd/containerd/services/images/v1/Image.js";
import type { Descriptor__Output } from "./generated/containerd/containerd/types/Descriptor.js";
import type { Mount__Output } from "./generated/containerd/containerd/types/Mount.js";
import type { Timestamp__Output } from "./generated/containerd/google/protobuf/Timestamp.js";
import type { VersionResponse__Output } from "./generated/containerd/containerd/services/version/v1/VersionResponse.js";
import { loadGrpcPackage } from "./load.js";

// Message types generated from the .proto files (scripts/gen-proto-types.mjs), under the names the code uses.
export type SnapshotKindName = Kind__Output;
/** A mount as the snapshotter answers it (target is optional: containerd fills it in). */
export type MountMessage = Omit<Mount__Output, "target"> & Partial<Pick<Mount__Output, "target">>;
export type TimestampMessage = Timestamp__Output;
export type InfoMessage = Info__Output;
/** A content descriptor as the containerd client sends it (annotations optional) and receives it. */
export type DescriptorMessage = Omit<Descriptor__Output, "annotations"> &
  Partial<Pick<Descriptor__Output, "annotations">>;
/** What the content service says about a blob (the fields the client reads). */
export type ContentInfo = Pick<ContentInfo__Output, "digest" | "size" | "labels">;
/** An image record of the images service (the fields the client writes and reads). */
export type ImageRecord = Pick<Image__Output, "name" | "labels"> & { target: DescriptorMessage | null };
/** What containerd's Version API answers ("1.7.24~ds1", "v2.1.9", and the commit). */
export type VersionMessage = VersionResponse__Output;

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

let versionPkg: grpc.GrpcObject | undefined;

/** containerd.services.version.v1.Version: the running daemon's version (a client constructor). */
export function versionService(): ServiceCtor {
  versionPkg ??= loadGrpcPackage("containerd", ["version.proto"]);
  const pkg = versionPkg as unknown as {
    containerd: { services: { version: { v1: { Version: ServiceCtor } } } };
  };
  return pkg.containerd.services.version.v1.Version;
}

/** A Date as a google.protobuf.Timestamp. */
export function toTimestamp(ms: number): TimestampMessage {
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: Math.round((ms - seconds * 1000) * 1e6) };
}
