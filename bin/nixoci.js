#!/usr/bin/env node
// Thin launcher: runs the CLI, compiled TypeScript bundled into one file (dist/nixoci.cjs; `npm run build` makes it,
// see scripts/bundle-cli.mjs), compiled from V8's code cache beside it. A cache V8 cannot use (another Node, other
// flags) is ignored and the bundle compiled as usual; NIXOCI_MAKE_CODE_CACHE=1 (the build's one warm-up run) writes
// the cache of what this run compiled. NIXOCI_DEBUG=1 says whether the cache was used; NIXOCI_NO_BUNDLE=1 runs the
// compiled modules instead.
import { readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { Script } from "node:vm";

const bundle = fileURLToPath(new URL("../dist/nixoci.cjs", import.meta.url));
const cacheFile = `${bundle}.cache`;

function load() {
  let source;
  try {
    source = readFileSync(bundle, "utf8");
  } catch (err) {
    process.stderr.write(
      `nixoci: cannot read ${bundle} (${err.code ?? err.message}): run \`npm run build\`\n`,
    );
    process.exit(1);
  }
  let cachedData;
  try {
    cachedData = readFileSync(cacheFile);
  } catch {
    // no cache: compiled as usual
  }
  const script = new Script(`(function (exports, require, module, __filename, __dirname) {${source}\n})`, {
    filename: bundle,
    cachedData,
  });
  if (process.env.NIXOCI_DEBUG) {
    const how = !cachedData ? "absent" : script.cachedDataRejected ? "rejected" : "used";
    process.stderr.write(`nixoci: code cache ${how}: ${cacheFile}\n`);
  }
  const module = { exports: {} };
  script.runInThisContext()(module.exports, createRequire(bundle), module, bundle, dirname(bundle));
  return { cli: module.exports, script };
}

function writeCodeCache(script) {
  const tmp = `${cacheFile}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, script.createCachedData());
    renameSync(tmp, cacheFile);
  } catch (err) {
    rmSync(tmp, { force: true });
    process.stderr.write(`nixoci: cannot write ${cacheFile}: ${err.message}\n`);
    process.exitCode = 1;
  }
}

// NIXOCI_NO_BUNDLE=1: the compiled modules one by one, as the bundle was made from (stack traces name their files).
const { cli, script } =
  process.env.NIXOCI_NO_BUNDLE === "1"
    ? {
        cli: {
          ...(await import("../dist/src/cli/main.js")),
          ...(await import("../dist/src/cli/command-line.js")),
        },
      }
    : load();
cli.main(cli.commandLineArguments(process.argv.slice(2))).then(
  (code) => {
    process.exitCode = code;
    if (script && process.env.NIXOCI_MAKE_CODE_CACHE === "1") writeCodeCache(script);
  },
  (err) => {
    process.stderr.write(`nixoci: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
