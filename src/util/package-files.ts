// Files of the package itself, found from where this module runs: dist/src/util/ when it runs as compiled, dist/
// when it is part of the bundle bin/nixoci.js runs (dist/nixoci.cjs: scripts/bundle-cli.mjs). Workers and child
// processes run compiled modules of their own, named by their place under dist/; proto/ and package.json are at the
// root.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

let found: { root: string; version?: string } | undefined;

/** The package's root and version: the nearest directory above this module whose package.json is nixoci's. */
function packageFound(): { root: string; version?: string } {
  if (found) return found;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    dir = dirname(dir);
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as {
        name?: unknown;
        version?: unknown;
      };
      if (pkg.name === "nixoci")
        return (found = { root: dir, version: typeof pkg.version === "string" ? pkg.version : undefined });
    } catch {
      // not here: one level up
    }
  }
  throw new Error("nixoci: the package's package.json was not found above its modules");
}

/** The package's root (package.json, proto/, dist/). */
export function packageRoot(): string {
  return packageFound().root;
}

/** The version in the package's package.json ("unknown" without one). */
export function packageVersion(): string {
  try {
    return packageFound().version || "unknown";
  } catch {
    return "unknown";
  }
}

/** A compiled module's file: `rel` under dist/ (e.g. "src/util/tool-launcher-child.js"). */
export function distFile(rel: string): string {
  return join(packageRoot(), "dist", rel);
}
