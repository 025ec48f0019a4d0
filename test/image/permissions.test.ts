// Ownership and mode rules (permissions.ts): parsing, and the headers they rewrite, checked with GNU tar.
import { before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { storePathsTar, treeTar } from "../../src/image/layer-tar.js";
import {
  HeaderRewriter,
  ownershipIdentity,
  parseOwnerId,
  parsePermRule,
  type Ownership,
} from "../../src/image/permissions.js";
import { specFromObject, validateSpec, emptySpec } from "../../src/image/spec.js";
import { NixociError } from "../../src/util/errors.js";
import { buildFixtures, type FixtureAttr } from "../support/fixtures.js";
import { runText } from "../support/run.js";
import { collect } from "../support/streams.js";
import { decodeFileName } from "../../src/util/file-names.js";

let fx: Record<FixtureAttr, string>;
before(() => {
  fx = buildFixtures();
});

/** `tar -tv` lines with numeric owners, without times and column padding: "MODE UID/GID NAME". */
function listing(tar: Buffer): string[] {
  const out = runText("tar", ["--numeric-owner", "-tvf", "-"], { input: tar, env: { TZ: "UTC" } });
  return out.split("\n").map((l) => {
    const f = l.split(/ +/);
    return `${f[0]} ${f[1]} ${f.slice(5).join(" ")}`;
  });
}

const rules = (...r: string[]): Ownership => ({ rules: r.map((s) => parsePermRule(s)) });

describe("rules", () => {
  test("REGEX=MODE[:UID[:GID]]: the mode and owner follow the last '='", () => {
    assert.deepEqual(
      { ...parsePermRule("^/home/app(/|$)=0700:1000:100"), pattern: undefined },
      { source: "^/home/app(/|$)=0700:1000:100", pattern: undefined, mode: 0o700, uid: 1000, gid: 100 },
    );
    const r = parsePermRule("a=b=4755");
    assert.equal(r.pattern.source, "a=b");
    assert.equal(r.mode, 0o4755);
    assert.equal(r.uid, undefined);
    assert.equal(parsePermRule("x=755::5").gid, 5);
    assert.equal(parsePermRule("x=755::5").uid, undefined);
  });

  // Malformed rules and ids: one line naming the flag and what is wrong.
  for (const [bad, why] of [
    ["no-equals", /is not REGEX=MODE\[:UID\[:GID\]\]/],
    ["=0755", /is not REGEX=MODE/],
    ["x=999", /the mode is octal/],
    ["x=075555", /the mode is octal/],
    ["x=rwx", /the mode is octal/],
    ["x=0755:1:2:3", /is not REGEX=MODE/],
    ["x=0755:-1", /uid "-1" is not a number/],
    ["x=0755:1:99999999", /gid "99999999" is not a number from 0 to 2097151/],
    ["(=0755", /the pattern is not a valid regular expression/],
  ] as const)
    test(`refused: ${bad}`, () => {
      assert.throws(
        () => parsePermRule(bad),
        (e: unknown) =>
          e instanceof NixociError &&
          e.input === "--perm" &&
          why.test(e.message) &&
          !e.message.includes("\n"),
      );
    });

  test("--uid / --gid take 0 to 2097151", () => {
    assert.equal(parseOwnerId("0", "uid"), 0);
    assert.equal(parseOwnerId("2097151", "gid"), 2097151);
    for (const bad of ["-1", "2097152", "1e3", "", "app"])
      assert.throws(() => parseOwnerId(bad, "uid"), /--uid: uid .* is not a number from 0 to 2097151/);
  });

  test("spec perms: strings or mappings with a quoted mode; uid/gid integers; malformed entries refused", () => {
    const spec = specFromObject(
      {
        perms: [
          "^/a=0700",
          { path: "^/b", mode: "0750", uid: 1000, gid: 100 },
          { path: "^/c", mode: "4755" },
        ],
        uid: 5,
        gid: 6,
      },
      "s.yaml",
    );
    assert.deepEqual(spec.perms, ["^/a=0700", "^/b=0750:1000:100", "^/c=4755"]);
    assert.equal(spec.uid, 5);
    assert.equal(spec.gid, 6);
    for (const [doc, why] of [
      [{ perms: "x=0755" }, /perms must be a list/],
      [{ perms: [{ path: "x", mode: 493 }] }, /mode must be an octal string such as "0755" \(quote it\)/],
      [{ perms: [{ path: "x", mode: "0755", owner: 1 }] }, /perms\[0\]: unknown key "owner"/],
      [{ perms: [{ mode: "0755" }] }, /perms\[0\]: path must be a regular expression string/],
      [{ uid: -3 }, /uid "-3" is not a number/],
      [{ gid: "x" }, /gid must be an integer/],
    ] as const)
      assert.throws(
        () => specFromObject(doc, "s.yaml"),
        (e: unknown) => e instanceof NixociError && why.test(e.message),
      );
    assert.throws(
      () => validateSpec({ ...emptySpec(), perms: ["(=0755"] }, "s.yaml"),
      /s\.yaml: "\(=0755": the pattern is not a valid regular expression/,
    );
  });

  test("the cache identity: none without rules (layers keep their identities), the rules as written otherwise", () => {
    assert.equal(ownershipIdentity(undefined), undefined);
    assert.equal(ownershipIdentity({ rules: [] }), undefined);
    assert.deepEqual(ownershipIdentity({ uid: 1, rules: [parsePermRule("x=0700")] }), {
      uid: 1,
      gid: null,
      rules: ["x=0700"],
    });
  });
});

describe("rewritten headers", () => {
  test("--uid/--gid own the store paths' entries, not /nix and /nix/store; rules after them win", async () => {
    const rw = new HeaderRewriter(
      { uid: 1000, gid: 100, rules: [parsePermRule("/deep\\.txt$=0640:0:7")] },
      "/nix/store",
    );
    const tar = await collect(storePathsTar([{ storePath: fx.tree, realPath: fx.tree }], { rewriter: rw }));
    const lines = listing(tar);
    const base = fx.tree.slice(1);
    assert.equal(lines[0], "drwxr-xr-x 0/0 nix/");
    assert.equal(lines[1], "drwxr-xr-x 0/0 nix/store/");
    assert.equal(lines[2], `dr-xr-xr-x 1000/100 ${base}/`);
    assert.ok(lines.includes(`-rw-r----- 0/7 ${base}/nested/a/b/c/d/deep.txt`), lines.join("\n"));
    for (const l of lines.slice(2).filter((x) => !x.includes("deep.txt"))) assert.match(l, / 1000\/100 /);
    assert.ok(rw.rewritten);
  });

  test("names that are not UTF-8: a pattern's U+FFFD does not match their bytes", async () => {
    const latin1 = decodeFileName(Buffer.from([0x63, 0x61, 0x66, 0xe9])); // "caf\xe9"
    const entries = [
      { path: `/srv/${latin1}`, type: "file" as const, mode: 0o644, content: Buffer.from("x") },
    ];
    const rw = new HeaderRewriter(rules("^/srv/caf\ufffd$=0600"), undefined);
    assert.ok((await collect(treeTar(entries, { rewriter: rw }))).equals(await collect(treeTar(entries))));
    assert.equal(rw.rewritten, false);
  });

  test("a mode rule leaves symlinks at 0777 but gives them the owner; unmatched layers are byte-identical", async () => {
    const entries = [
      { path: "/home/app", type: "directory" as const, mode: 0o755 },
      { path: "/home/app/link", type: "symlink" as const, target: "/nix/store/x" },
      {
        path: "/etc/passwd",
        type: "file" as const,
        mode: 0o644,
        content: Buffer.from("root:x:0:0::/:/bin/sh\n"),
      },
    ];
    const rw = new HeaderRewriter(rules("^/home/app(/|$)=0700:1000:1000"), undefined);
    assert.deepEqual(listing(await collect(treeTar(entries, { rewriter: rw }))), [
      "-rw-r--r-- 0/0 etc/passwd",
      "drwx------ 1000/1000 home/app/",
      "lrwxrwxrwx 1000/1000 home/app/link -> /nix/store/x",
    ]);
    const untouched = new HeaderRewriter(rules("^/srv/=0700"), undefined);
    assert.ok(
      (await collect(treeTar(entries, { rewriter: untouched }))).equals(await collect(treeTar(entries))),
    );
    assert.equal(untouched.rewritten, false);
    const storeTar = (rw?: HeaderRewriter) =>
      collect(storePathsTar([{ storePath: fx.hello, realPath: fx.hello }], { rewriter: rw }));
    assert.ok(
      (await storeTar(new HeaderRewriter(rules("^/srv/=0700"), "/nix/store"))).equals(await storeTar()),
    );
  });
});
