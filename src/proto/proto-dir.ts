// Where nixoci's own minimal .proto files are: proto/ at the package root, next to dist/ when installed. Apart from
// load.ts so that the BuildKit frontend (protobufjs only, on every build's path) does not load gRPC's packages.
import { existsSync } from "node:fs";
import { join } from "node:path";
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
