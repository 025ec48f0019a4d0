// Help that teaches, from one source: every command's `--help` (run as a user would) has one line per flag with
// its value and default, and examples whose flags the command takes; the README's CLI reference is exactly what
// the help texts render (so the two cannot drift apart: a stale README fails here with the command to fix it).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import * as prettier from "prettier";
import { nixoci, ROOT } from "../support/cli.js";
import { REFERENCE, CACHE, cliReferenceMarkdown } from "../../src/cli/help-texts.js";
import { flagLabel, replaceCliReference, type CommandHelp } from "../../src/cli/help-format.js";

const ALL: CommandHelp[] = [...REFERENCE, CACHE];

/** The argv that shows a command's help: `k8s pod` and `cache push` are subcommands. */
const helpArgv = (h: CommandHelp): string[] => [...h.name.split(" "), "--help"];

test("every command's --help: usage, one aligned line per flag with its value, default and repeatability, examples", () => {
  for (const h of ALL) {
    const r = nixoci(helpArgv(h));
    assert.equal(r.status, 0, `${h.name} --help: ${r.stderr}`);
    assert.equal(r.stderr, "");
    assert.ok(r.text.startsWith(`usage: ${h.usage[0]}\n`), `${h.name}:\n${r.text}`);
    const flags = Object.entries(h.flags);
    if (flags.length) assert.match(r.text, /\noptions:\n/);
    for (const [name, f] of flags) {
      const lines = r.text.split("\n");
      const options = lines.indexOf("options:");
      const line = lines.slice(options).find((l) => l.trim().startsWith(flagLabel(name, f).trim()));
      assert.ok(line, `${h.name} --help has no line for --${name}:\n${r.text}`);
      // The flag's entry: its line and the continuation lines indented under the text column.
      const at = lines.indexOf(line, options);
      let end = at + 1;
      while (end < lines.length && /^ {10,}\S/.test(lines[end])) end++;
      const entry = lines.slice(at, end).join("\n");
      assert.ok(entry.includes(f.help.replace(/`/g, "").split(" ").slice(0, 3).join(" ")), entry);
      if (f.byDefault !== undefined)
        assert.ok(entry.replace(/\s+/g, " ").includes(`default: ${f.byDefault}`), `--${name}: ${entry}`);
    }
    assert.match(r.text, /\nexamples:\n {2}# .+\n {2}\S/, `${h.name} --help has no examples`);
  }
});

test("serve --help shows the default port and storage; build --help the default layering and cache", () => {
  const serve = nixoci(["serve", "--help"]).text.replace(/\s+/g, " ");
  assert.ok(
    serve.includes(
      "--listen ADDR:PORT the address to listen on (PORT alone: 127.0.0.1) (default: 127.0.0.1:5000)",
    ),
    serve,
  );
  assert.ok(
    serve.includes("(default: $XDG_STATE_HOME/nixoci/registry or ~/.local/state/nixoci/registry)"),
    serve,
  );
  assert.ok(
    serve.includes(
      "(repeatable; default: shell=bashInteractive,coreutils, or what the set has of bash, busybox)",
    ),
    serve,
  );
  const build = nixoci(["help", "build"]).text.replace(/\s+/g, " ");
  assert.ok(build.includes("(default: size)"), build);
  assert.ok(
    build.includes("--cache-dir DIR the layer cache (default: $XDG_CACHE_HOME/nixoci or ~/.cache/nixoci)"),
    build,
  );
});

test("every example's nixoci invocations use only flags their command takes", () => {
  for (const h of ALL) {
    for (const [cmd] of h.examples) {
      // Each `nixoci NAME ...` piece of the line, up to a pipe or a command substitution's end.
      for (const piece of cmd.split(/\||\$\(|\)/).map((p) => p.trim())) {
        if (!piece.startsWith("nixoci ")) continue;
        const words = piece.split(/\s+/).slice(1);
        const target = ALL.filter((c) => words.join(" ").startsWith(c.name)).sort(
          (a, b) => b.name.length - a.name.length,
        )[0];
        assert.ok(target, `${h.name}: example runs an unknown command: ${piece}`);
        for (const w of words) {
          if (w === "--") break;
          const long = /^--([a-z-]+)/.exec(w)?.[1];
          const shorts = /^-([a-zA-Z]+)$/.exec(w)?.[1];
          if (long)
            assert.ok(long in target.flags, `${h.name}: ${piece}: --${long} is not a flag of ${target.name}`);
          if (shorts)
            for (const s of shorts)
              assert.ok(
                Object.values(target.flags).some((f) => f.short === s),
                `${h.name}: ${piece}: -${s} is not a flag of ${target.name}`,
              );
        }
      }
    }
  }
});

test("the README's CLI reference is what the help texts render (else: npm run gen:readme)", async () => {
  const path = join(ROOT, "README.md");
  const readme = readFileSync(path, "utf8");
  const options = { ...(await prettier.resolveConfig(path)), filepath: path };
  const expected = await prettier.format(replaceCliReference(readme, cliReferenceMarkdown()), options);
  assert.ok(readme === expected, "README.md's CLI reference is stale: run npm run gen:readme");
  for (const h of REFERENCE) assert.ok(readme.includes(`### \`nixoci ${h.name}\``), h.name);
});

test("the help tells apart a subcommand's own help from the group's", () => {
  const group = nixoci(["cache", "--help"]);
  assert.equal(group.status, 0);
  assert.ok(
    group.text.startsWith(
      "usage: nixoci cache push --to file:///DIR [OPTIONS] PATH...\n       nixoci cache gc",
    ),
  );
  assert.ok(
    group.text
      .replace(/\s+/g, " ")
      .includes("Run 'nixoci cache push --help' or 'nixoci cache gc --help' for their options."),
  );
  assert.ok(nixoci(["cache", "gc", "--help"]).text.includes("--keep-images N"));
  assert.equal(nixoci(["help", "cache"]).text, group.text);
});
