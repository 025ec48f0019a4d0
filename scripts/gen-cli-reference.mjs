#!/usr/bin/env node
// Writes the README's CLI reference (between the cli-reference markers) from the commands' help texts
// (src/cli/help-texts.ts, built into dist/), so `nixoci CMD --help` and the README say the same.
// Run after `npm run build`: `npm run gen:readme`. test/cli/help.test.ts fails when the README is stale.
import { readFileSync, renameSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const README = fileURLToPath(new URL("../README.md", import.meta.url));
const { cliReferenceMarkdown } = await import("../dist/src/cli/help-texts.js");
const { replaceCliReference } = await import("../dist/src/cli/help-format.js");

const prettier = await import("prettier");
const text = readFileSync(README, "utf8");
// Formatted as `prettier --check .` wants the README (tables padded), so the check and the test agree.
const options = { ...(await prettier.resolveConfig(README)), filepath: README };
const next = await prettier.format(replaceCliReference(text, cliReferenceMarkdown()), options);
if (next === text) console.log("README.md: CLI reference up to date");
else {
  writeFileSync(`${README}.tmp`, next);
  renameSync(`${README}.tmp`, README);
  console.log("README.md: CLI reference rewritten");
}
