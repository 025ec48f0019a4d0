// The CLI against the real local Nix store: NAR bytes, hashes, references and closures must equal what
// nix-store reports for every path of the fixture package set.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, symlinkSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseHash } from "../../src/nix/hash.js";
import { buildFixtures } from "../support/fixtures.js";
import { run, runText, nixCmd } from "../support/run.js";
import { nixoci, nixociOk } from "../support/cli.js";

const fx = buildFixtures();
const closure = runText("nix-store", ["-qR", fx.all]).split("\n").sort();

test("closure equals nix-store -qR, sorted, one per line", () => {
  assert.ok(closure.length >= 8, "fixture closure is non-trivial");
  assert.equal(nixociOk(["closure", fx.all]).text, closure.join("\n") + "\n");
  const two = runText("nix-store", ["-qR", fx.hello, fx.tree]).split("\n").sort();
  assert.equal(nixociOk(["closure", fx.hello, fx.tree]).text, two.join("\n") + "\n");
});

test("nar dump equals nix-store --dump for every path in the closure", () => {
  for (const path of closure) {
    const ours = nixociOk(["nar", "dump", path]).stdout;
    const theirs = run("nix-store", ["--dump", path]);
    assert.ok(ours.equals(theirs), `NAR of ${path} differs from nix-store --dump`);
  }
});

test("path-info --json: NarHash, NarSize, references and deriver equal Nix's", () => {
  const ours = JSON.parse(nixociOk(["path-info", "--json", ...closure]).text) as Record<string, unknown>[];
  const nix = JSON.parse(nixCmd(["path-info", "--json", ...closure]).toString()) as Record<string, unknown>[];
  assert.equal(ours.length, closure.length);
  for (const [i, path] of closure.entries()) {
    const o = ours[i];
    assert.equal(o.path, path);
    const expectedHash = parseHash(runText("nix-store", ["-q", "--hash", path]));
    assert.ok(parseHash(String(o.narHash)).equals(expectedHash), `narHash of ${path}`);
    assert.deepEqual(
      o.references,
      runText("nix-store", ["-q", "--references", path]).split("\n").filter(Boolean).sort(),
    );
    const n = nix.find((x) => x.path === path)!;
    assert.equal(o.narSize, n.narSize);
    assert.equal(o.narHash, n.narHash);
    assert.equal(o.deriver, n.deriver);
    assert.equal(o.registrationTime, n.registrationTime);
  }
});

test("path-info accepts a result symlink and a path inside a store path; -r gives the closure", () => {
  const dir = mkdtempSync(join(tmpdir(), "nixoci-result-"));
  try {
    symlinkSync(fx.hello, join(dir, "result"));
    assert.equal(nixociOk(["path-info", join(dir, "result")]).text, fx.hello + "\n");
    assert.equal(nixociOk(["path-info", `${fx.hello}/bin/hello`]).text, fx.hello + "\n");
    const rec = nixociOk(["path-info", "-r", join(dir, "result")])
      .text.trim()
      .split("\n");
    assert.deepEqual(rec, runText("nix-store", ["-qR", fx.hello]).split("\n").sort());
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("nar restore then dump round-trips byte for byte; nix-store --restore reads our dump", () => {
  const dir = mkdtempSync(join(tmpdir(), "nixoci-restore-"));
  try {
    for (const [i, path] of closure.entries()) {
      const nar = run("nix-store", ["--dump", path]);
      const dest = join(dir, `r${i}`);
      nixociOk(["nar", "restore", dest], { input: nar });
      assert.ok(nixociOk(["nar", "dump", dest]).stdout.equals(nar), `round trip of ${path}`);
      const theirs = join(dir, `n${i}`);
      run("nix-store", ["--restore", theirs], { input: nixociOk(["nar", "dump", path]).stdout });
      assert.ok(run("nix-store", ["--dump", theirs]).equals(nar));
    }
    assert.deepEqual(
      readdirSync(dir).filter((n) => n.startsWith(".")),
      [],
      "no temporary names left behind",
    );
  } finally {
    run("chmod", ["-R", "u+w", dir]);
    rmSync(dir, { recursive: true, force: true });
  }
});

test("nar ls prints Nix's .ls listing", () => {
  const nar = run("nix-store", ["--dump", fx.tree]);
  const ours = JSON.parse(nixociOk(["nar", "ls", "-"], { input: nar }).text);
  assert.equal(ours.version, 1);
  assert.equal(ours.root.type, "directory");
  const dir = mkdtempSync(join(tmpdir(), "nixoci-ls-"));
  const file = join(dir, "tree.nar");
  writeFileSync(file, nar);
  const nix = JSON.parse(nixCmd(["nar", "ls", "--json", "-R", file, "/"]).toString());
  assert.deepEqual(
    JSON.parse(nixociOk(["nar", "ls", file]).text),
    ours,
    "file and stdin give the same listing",
  );
  rmSync(dir, { recursive: true, force: true });
  const strip = (n: Record<string, unknown>): unknown => {
    if (n.type === "directory") {
      const entries = n.entries as Record<string, Record<string, unknown>>;
      return {
        type: "directory",
        entries: Object.fromEntries(Object.entries(entries).map(([k, v]) => [k, strip(v)])),
      };
    }
    const { narOffset: _o, ...rest } = n;
    return rest;
  };
  assert.deepEqual(strip(ours.root), strip(nix));
});

test("bad arguments: one-line errors, non-zero exits", () => {
  const cases: [string[], RegExp, number][] = [
    [["closure", "/nix/store/not-a-valid-hash-foo"], /not-a-valid-hash-foo/, 1],
    [["path-info", "/nix/store/00000000000000000000000000000000-missing"], /not valid/, 1],
    [["path-info", "/etc/passwd"], /\/etc\/passwd.*not in \/nix\/store/, 1],
    [["path-info", "./does-not-exist"], /does-not-exist/, 1],
    [["closure"], /missing PATH/, 2],
    [["nar", "dump", "/nonexistent/x"], /\/nonexistent\/x/, 1],
    [["nar", "ls", "/nonexistent/x.nar"], /\/nonexistent\/x.nar/, 1],
    [["no-such-command"], /unknown command/, 2],
    [["substitute", "/nix/store/00000000000000000000000000000000-x"], /missing --from/, 2],
    [["path-info", "--bogus", "x"], /bogus/, 2],
  ];
  for (const [args, pattern, code] of cases) {
    const r = nixoci(args);
    assert.equal(r.status, code, `nixoci ${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, pattern, `nixoci ${args.join(" ")}`);
    assert.ok(!/\n\s+at /.test(r.stderr), `no stack trace for nixoci ${args.join(" ")}: ${r.stderr}`);
  }
});

test("--store that is empty or of a scheme nixoci does not read: a usage error naming it, not a directory of that name", () => {
  for (const [store, message] of [
    ["", "--store: empty (give a store directory or a binary cache URL)"],
    [
      "ftp://host/cache",
      '--store "ftp://host/cache": ftp: stores are not supported (a directory, local?root=DIR, file:///DIR, http:// or https://)',
    ],
    [
      "file:",
      '--store "file:": a binary cache URL is file:///DIR, http://HOST[/PATH] or https://HOST[/PATH]',
    ],
  ]) {
    const r = nixoci(["path-info", "--store", store, fx.hello]);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stderr, `nixoci: ${message}\n`);
  }
});
