#!/usr/bin/env node
// Thin launcher: the CLI is compiled TypeScript under dist/ (run `npm run build` after `npm ci`).
import { main } from "../dist/src/cli/main.js";
import { commandLineArguments } from "../dist/src/cli/command-line.js";

main(commandLineArguments(process.argv.slice(2))).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`nixoci: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
