// How gRPC services are loaded from nixoci's own minimal .proto files (found by proto-dir.ts). Google's well-known
// types (Empty, Timestamp, FieldMask, Any) come from protobufjs's built-in definitions, so no copy of them is needed.
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { protoDir } from "./proto-dir.js";

/**
 * How @grpc/proto-loader turns messages into plain objects: snake_case field names as in the .proto files, enums
 * as their names, int64 as numbers, defaults filled in, unset message fields null.
 */
export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  arrays: true,
  objects: true,
};

/** Loads `files` of proto/`api` (imports resolved within it) as a grpc-js package object. */
export function loadGrpcPackage(api: "containerd" | "cri", files: string[]): grpc.GrpcObject {
  const dir = protoDir(api);
  const def = protoLoader.loadSync(
    files.map((f) => join(dir, f)),
    { ...LOADER_OPTIONS, includeDirs: [dir] },
  );
  return grpc.loadPackageDefinition(def);
}
