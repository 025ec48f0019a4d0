// Where nixoci's own minimal .proto files are (proto/ at the package root, next to dist/ when installed) and how
// gRPC services are loaded from them. Google's well-known types (Empty, Timestamp, FieldMask, Any) come from
// protobufjs's built-in definitions, so no copy of them is needed.
import { existsSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { packageRoot } from "../util/package-files.js";

let root: string | undefined;

/** The package's proto/ directory, at its root (package-files.ts: a checkout, dist/ built or bundled). */
export function protoRoot(): string {
  if (root) return root;
  const dir = join(packageRoot(), "proto");
  if (!existsSync(join(dir, "containerd", "snapshots.proto")))
    throw new Error("nixoci: the proto/ directory was not found next to the installed package");
  return (root = dir);
}

/** A directory of proto/ (containerd, cri, buildkit). */
export function protoDir(api: "containerd" | "cri" | "buildkit"): string {
  return join(protoRoot(), api);
}

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
