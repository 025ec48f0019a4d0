#!/usr/bin/env node
// The CLI as one file, dist/nixoci.cjs, with V8's code cache for it, dist/nixoci.cjs.cache: what bin/nixoci.js runs.
// Run by `npm run build` after tsc. Node 20 loads ES modules one file at a time and compiles each anew on every
// start; one CommonJS file compiled from its cache starts a command ~35 ms sooner (a third of a cached rebuild's
// time: bench/build.ts). The bundle is made from tsc's output (dist/src), so the two run the same code; npm
// packages stay outside it (required from node_modules as before). Modules that need their own place on disk
// (workers, the tool launcher's child, package.json) find it through src/util/package-files.ts, whichever of the
// two runs them. V8 ignores a cache made by another Node or with other flags, and compiles as usual.
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const dist = fileURLToPath(new URL("../dist/", import.meta.url));
const bundle = `${dist}nixoci.cjs`;
const tmp = `${bundle}.tmp-${process.pid}`;

rmSync(`${bundle}.cache`, { force: true });

// BuildKit's messages as protobufjs JSON (src/proto/buildkit.ts reads it with protobufjs's light build: the
// frontend, on every build's path, then neither loads the .proto parser nor parses).
{
  const { parseProtos } = await import("../dist/src/proto/buildkit.js");
  const file = `${dist}proto/buildkit.json`;
  mkdirSync(`${dist}proto`, { recursive: true });
  writeFileSync(`${file}.tmp-${process.pid}`, JSON.stringify(parseProtos().toJSON()));
  renameSync(`${file}.tmp-${process.pid}`, file);
}
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
    // import.meta.url is the bundle's own URL: package-files.ts walks up from it to the package's root, and
    // spec.ts's require of yaml resolves from dist/ as it did from dist/src/image/.
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

// The code cache holds what the warm-up run compiled: a cold build of a one-path store made here (a directory store
// with nixoci's sidecar metadata, so no Nix is needed) compiles what every build runs — the closure, the layer
// plan, cache look-ups, layer making, the layout — where `build --help` compiles the command line only (a cached
// rebuild ~15 ms slower). Should that build fail, the help's cache is made instead, and the build said so.
const launcher = fileURLToPath(new URL("../bin/nixoci.js", import.meta.url));
const warmUp = (args) =>
  spawnSync(process.execPath, [launcher, ...args], {
    stdio: ["ignore", "ignore", "inherit"],
    env: { ...process.env, NIXOCI_MAKE_CODE_CACHE: "1" },
  }).status === 0;

async function warmUpBuild() {
  const { narHashOfPath } = await import("../dist/src/nix/nar-writer.js");
  const work = mkdtempSync(join(tmpdir(), "nixoci-code-cache-"));
  try {
    const hashPart = "0".repeat(32);
    const name = `${hashPart}-nixoci-code-cache-warm-up`;
    const store = join(work, "store");
    const path = join(store, name);
    mkdirSync(join(path, "bin"), { recursive: true });
    writeFileSync(join(path, "bin", "hello"), "#!/bin/sh\necho hello\n", { mode: 0o555 });
    symlinkSync("bin/hello", join(path, "hello"));
    const { narHash, narSize } = await narHashOfPath(path);
    const info = {
      path: `/nix/store/${name}`,
      narHash: `sha256-${narHash.toString("base64")}`,
      narSize,
      references: [],
    };
    mkdirSync(join(store, ".nixoci", "info"), { recursive: true });
    writeFileSync(join(store, ".nixoci", "info", `${hashPart}.json`), JSON.stringify(info));
    const layout = join(work, "layout");
    return warmUp([
      "build",
      "-q",
      "--store",
      store,
      "--cache-dir",
      join(work, "cache"),
      info.path,
      "-o",
      `oci:${layout}:warm`,
    ]);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

if (!(await warmUpBuild())) {
  console.error("bundle-cli: the warm-up build failed; the code cache holds the command line's code only");
  if (!warmUp(["build", "--help"])) {
    console.error("bundle-cli: `nixoci build --help` through the bundle failed");
    process.exit(1);
  }
}
