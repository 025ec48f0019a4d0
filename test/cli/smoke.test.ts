// The CLI's top level, run as a user would (bin/nixoci.js in a child process): help, version, every listed
// command reachable, and the exit status and message of an unknown command.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { nixoci, ROOT } from "../support/cli.js";

const COMMANDS = [
  "build",
  "diff",
  "path-info",
  "closure",
  "sbom",
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

test("a bad option of a command is a usage error: exit 2, one line naming it and where the help is", () => {
  const r = nixoci(["closure", "--no-such-option"]);
  assert.equal(r.status, 2);
  assert.equal(r.text, "");
  assert.equal(
    r.stderr,
    "nixoci: unknown option --no-such-option; run 'nixoci closure --help' for its options\n",
  );
});

test("near-miss flags and commands get a did-you-mean; values are checked, negative numbers included", () => {
  const cases: Array<[string[], string]> = [
    [
      ["build", "--outptu", "oci:x"],
      "nixoci: unknown option --outptu (did you mean --output?); run 'nixoci build --help' for its options",
    ],
    [
      ["serve", "--storge", "x"],
      "nixoci: unknown option --storge (did you mean --storage?); run 'nixoci serve --help' for its options",
    ],
    [
      ["build", "--nocache"],
      "nixoci: unknown option --nocache (did you mean --no-cache?); run 'nixoci build --help' for its options",
    ],
    [
      ["build", "--max-layers", "-3", "/nix/store/x"],
      'nixoci: --max-layers must be an integer >= 2, got "-3"',
    ],
    [
      ["build", "--max-layers"],
      "nixoci: option --max-layers needs a value; run 'nixoci build --help' for its options",
    ],
    [
      ["build", "--json=yes"],
      "nixoci: option --json takes no value; run 'nixoci build --help' for its options",
    ],
    [["closure"], "nixoci: missing PATH; run 'nixoci closure --help' for its options"],
    [
      ["serve", "--arch", "amd46"],
      'nixoci: --arch "amd46" is not one of amd64, arm64, arm, 386, ppc64le, ppc64, s390x, riscv64, loong64, ' +
        "mips64le, mips64, mipsle, mips, wasm (did you mean amd64?)",
    ],
  ];
  for (const [args, line] of cases) {
    const r = nixoci(args);
    assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.equal(r.text, "", "nothing on stdout");
    assert.equal(r.stderr, `${line}\n`, args.join(" "));
  }
  const r = nixoci(["biuld"]);
  assert.equal(r.status, 2);
  assert.equal(r.stderr.split("\n")[0], 'nixoci: unknown command "biuld" (did you mean build?)');
});

test("help COMMAND is COMMAND --help; -V and version print the version; the command list is aligned", () => {
  for (const c of COMMANDS) assert.equal(nixoci(["help", c]).text, nixoci([c, "--help"]).text, c);
  const unknown = nixoci(["help", "frobnicate"]);
  assert.equal(unknown.status, 2);
  assert.equal(unknown.stderr.split("\n")[0], 'nixoci: unknown command "frobnicate"');
  const version = nixoci(["--version"]).text;
  for (const flag of ["-V", "version"]) assert.equal(nixoci([flag]).text, version, flag);
  const columns = new Set(
    nixoci(["--help"])
      .text.split("\ncommands:\n")[1]
      .split("\n\n")[0]
      .split("\n")
      .filter((l) => /^ {2}[a-z]/.test(l))
      .map((l) => /^ {2}[a-z0-9-]+ +/.exec(l)![0].length),
  );
  assert.equal(columns.size, 1, "every summary starts in the same column");
});
