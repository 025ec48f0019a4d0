#!/usr/bin/env node
// The CLI as one file, dist/nixoci.cjs, with V8's code cache for it, dist/nixoci.cjs.cache: what bin/nixoci.js runs.
// Run by `npm run build` after tsc. Node 20 loads ES modules one file at a time and compiles each anew on every
// start; one CommonJS file compiled from its cache starts a command ~35 ms sooner (a third of a cached rebuild's
// time: bench/build.ts). The bundle is made from tsc's output (dist/src), so the two run the same code; npm
// packages stay outside it (required from node_modules as before). Modules that need their own place on disk
// (workers, the tool launcher's child, package.json) find it through src/util/package-files.ts, whichever of the
// two runs them. The cache is made by running `nixoci build --help` once (the modules' top levels and the command
// line's code compiled); V8 ignores a cache made by another Node or with other flags, and compiles as usual.
import { spawnSync } from "node:child_process";
import { renameSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const dist = fileURLToPath(new URL("../dist/", import.meta.url));
const bundle = `${dist}nixoci.cjs`;
const tmp = `${bundle}.tmp-${process.pid}`;

rmSync(`${bundle}.cache`, { force: true });
try {
  const result = await build({
    stdin: {
      contents:
        'export { main } from "./src/cli/main.js";\n' +
        'export { commandLineArguments } from "./src/cli/command-line.js";\n',
      resolveDir: dist,
      sourcefile: "nixoci-entry.js",
    },
    bundle: true,
    format: "cjs",
    platform: "node",
    target: "node20",
    packages: "external",
    outfile: tmp,
    // import.meta.url is the bundle's own URL (its modules ask it only through package-files.ts and proto/load.ts,
    // which walk up from it to the package).
    define: { "import.meta.url": "__nixociBundleUrl" },
    banner: { js: 'const __nixociBundleUrl = require("node:url").pathToFileURL(__filename).href;' },
    logLevel: "silent",
  });
  if (result.warnings.length) {
    const { formatMessages } = await import("esbuild");
    const text = await formatMessages(result.warnings, { kind: "warning" });
    throw new Error(`esbuild warned:\n${text.join("")}`);
  }
  renameSync(tmp, bundle);
} catch (err) {
  rmSync(tmp, { force: true });
  console.error(`bundle-cli: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
}

const launcher = fileURLToPath(new URL("../bin/nixoci.js", import.meta.url));
const warm = spawnSync(process.execPath, [launcher, "build", "--help"], {
  stdio: ["ignore", "ignore", "inherit"],
  env: { ...process.env, NIXOCI_MAKE_CODE_CACHE: "1" },
});
if (warm.status !== 0) {
  console.error(`bundle-cli: \`nixoci build --help\` through the bundle failed (status ${warm.status})`);
  process.exit(1);
}
