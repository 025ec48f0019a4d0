// The CLI's top level, run as a user would (bin/nixoci.js in a child process): help, version, every listed
// command reachable, and the exit status and message of an unknown command.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { nixoci, ROOT } from "../support/cli.js";

const COMMANDS = [
  "build",
  "path-info",
  "closure",
  "nar",
  "cache",
  "substitute",
  "serve",
  "snapshotter",
  "image-service",
  "k8s",
  "frontend",
];

/** The command names of the help's "commands:" section, in order. */
function listedCommands(help: string): string[] {
  const section = help.split("\ncommands:\n")[1];
  assert.ok(section, `no "commands:" section in:\n${help}`);
  return section
    .split("\n\n")[0]
    .split("\n")
    .map((l) => /^ {2}([a-z0-9-]+)/.exec(l)?.[1])
    .filter((c): c is string => c !== undefined);
}

test("--help exits 0 and lists every command", () => {
  for (const flag of ["--help", "-h", "help"]) {
    const r = nixoci([flag]);
    assert.equal(r.status, 0, `${flag}: ${r.stderr}`);
    assert.equal(r.stderr, "");
    assert.match(r.text, /^usage: nixoci COMMAND /m);
    assert.deepEqual(listedCommands(r.text), COMMANDS, flag);
  }
});

test("every listed command answers its own --help with exit 0 and its usage", () => {
  for (const c of COMMANDS) {
    const r = nixoci([c, "--help"]);
    assert.equal(r.status, 0, `${c} --help: ${r.stderr}`);
    assert.match(r.text, new RegExp(`^usage: nixoci ${c}\\b`), `${c} --help printed:\n${r.text}`);
  }
});

test("no command: the help on stdout, exit 2 (a usage error)", () => {
  const r = nixoci([]);
  assert.equal(r.status, 2);
  assert.match(r.text, /^usage: nixoci COMMAND /m);
  assert.deepEqual(listedCommands(r.text), COMMANDS);
});

test("an unknown command exits 2 with a one-line error first, then the help, on stderr only", () => {
  const r = nixoci(["frobnicate", "--help"]);
  assert.equal(r.status, 2);
  assert.equal(r.text, "", "nothing on stdout");
  const [first, ...rest] = r.stderr.split("\n");
  assert.equal(first, 'nixoci: unknown command "frobnicate"');
  assert.deepEqual(listedCommands(rest.join("\n")), COMMANDS);
});

test("--version prints the package version", () => {
  const { version } = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string };
  const r = nixoci(["--version"]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.text, `nixoci ${version}\n`);
});

test("a bad option of a command is a usage error: exit 2, the message and that command's usage", () => {
  const r = nixoci(["closure", "--no-such-option"]);
  assert.equal(r.status, 2);
  assert.equal(r.text, "");
  const lines = r.stderr.trim().split("\n");
  assert.match(lines[0], /^nixoci: .*--no-such-option/);
  assert.match(lines[1], /^usage: nixoci closure /);
});
