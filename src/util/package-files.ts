// Files of the package itself, found from where this module runs: dist/src/util/ when it runs as compiled, dist/
// when it is part of the bundle bin/nixoci.js runs (dist/nixoci.cjs: scripts/bundle-cli.mjs). Workers and child
// processes run compiled modules of their own, named by their place under dist/.
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

let root: string | undefined;

/** The package's root: the nearest directory above this module whose package.json is nixoci's. */
export function packageRoot(): string {
  if (root) return root;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    dir = dirname(dir);
    try {
      const pkg = JSON.parse(readFileSync(join(dir, "package.json"), "utf8")) as { name?: unknown };
      if (pkg.name === "nixoci") return (root = dir);
    } catch {
      // not here: one level up
    }
  }
  throw new Error("nixoci: the package's package.json was not found above its modules");
}

/** A compiled module's file: `rel` under dist/ (e.g. "src/util/tool-launcher-child.js"). */
export function distFile(rel: string): string {
  return join(packageRoot(), "dist", rel);
}
