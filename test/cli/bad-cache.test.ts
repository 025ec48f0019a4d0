// Malformed and lying binary caches: every case gets a one-line error naming the file and the problem, a
// non-zero exit, and leaves nothing behind in the target store directory.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import {
  cpSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  truncateSync,
  writeFileSync,
  statSync,
  existsSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildFixtures, generateCacheKey, makeNixCache } from "../support/fixtures.js";
import { run } from "../support/run.js";
import { nixoci } from "../support/cli.js";

const fx = buildFixtures();
const work = mkdtempSync(join(tmpdir(), "nixoci-bad-cache-"));
after(() => {
  run("chmod", ["-R", "u+w", work]);
  rmSync(work, { recursive: true, force: true });
});
const key = generateCacheKey("bad-cache-1", work);
const pristine = join(work, "pristine");
makeNixCache({
  paths: [fx.greeting, fx.hello],
  dir: pristine,
  compression: "xz",
  secretKeyFile: key.secretKeyFile,
});
const target = fx.greeting;
const hashPart = target.slice("/nix/store/".length, "/nix/store/".length + 32);

interface Case {
  name: string;
  mutate: (dir: string, narinfo: string) => void;
  error: RegExp;
  unsigned?: boolean;
  path?: string;
}

const replaceLine = (text: string, key: string, value: string | null): string =>
  text
    .split("\n")
    .filter((l) => value !== null || !l.startsWith(`${key}:`))
    .map((l) => (l.startsWith(`${key}:`) ? `${key}: ${value}` : l))
    .join("\n");

const narFile = (dir: string, narinfo: string): string =>
  join(dir, /^URL: (.*)$/m.exec(readFileSync(narinfo, "utf8"))![1]);
const edit = (narinfo: string, f: (t: string) => string): void =>
  writeFileSync(narinfo, f(readFileSync(narinfo, "utf8")));

const CASES: Case[] = [
  {
    name: "missing NarHash",
    mutate: (_d, n) => edit(n, (t) => replaceLine(t, "NarHash", null)),
    error: /narinfo.*NarHash/,
  },
  {
    name: "missing URL",
    mutate: (_d, n) => edit(n, (t) => replaceLine(t, "URL", null)),
    error: /narinfo.*URL/,
  },
  {
    name: "missing StorePath",
    mutate: (_d, n) => edit(n, (t) => replaceLine(t, "StorePath", null)),
    error: /narinfo.*StorePath/,
  },
  {
    name: "NarSize not a number",
    mutate: (_d, n) => edit(n, (t) => replaceLine(t, "NarSize", "12x")),
    error: /narinfo.*NarSize/,
  },
  {
    name: "malformed NarHash",
    mutate: (_d, n) => edit(n, (t) => replaceLine(t, "NarHash", "sha256:xyz")),
    error: /narinfo.*(NarHash|hash)/,
  },
  {
    name: "StorePath of another path",
    mutate: (_d, n) => edit(n, (t) => replaceLine(t, "StorePath", fx.hello)),
    error: /narinfo.*(StorePath|match)/,
  },
  {
    name: "signature by an unknown key name",
    mutate: (_d, n) => edit(n, (t) => t.replace(/^Sig: bad-cache-1:/m, "Sig: someone-else-1:")),
    error: /narinfo.*signature/,
  },
  {
    name: "corrupted signature bytes",
    mutate: (_d, n) =>
      edit(n, (t) => t.replace(/^(Sig: bad-cache-1:)(.)/m, (_m, p, c) => p + (c === "A" ? "B" : "A"))),
    error: /narinfo.*signature/,
  },
  {
    name: "truncated signature",
    mutate: (_d, n) => edit(n, (t) => t.replace(/^(Sig: bad-cache-1:.{20}).*$/m, "$1")),
    error: /narinfo.*signature/,
  },
  {
    name: "NarHash that does not match the NAR",
    unsigned: true,
    mutate: (_d, n) =>
      edit(n, (t) =>
        replaceLine(t, "NarHash", "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s"),
      ),
    error: /nar.*hash mismatch/i,
  },
  {
    name: "NarSize that does not match the NAR",
    unsigned: true,
    mutate: (_d, n) => edit(n, (t) => t.replace(/^NarSize: (\d+)$/m, (_m, s) => `NarSize: ${Number(s) + 8}`)),
    error: /nar.*size mismatch/i,
  },
  {
    name: "corrupt compressed NAR",
    mutate: (d, n) => {
      const f = narFile(d, n);
      const b = readFileSync(f);
      for (let i = 40; i < b.length - 20; i += 7) b[i] ^= 0x55;
      writeFileSync(f, b);
    },
    error: /\.nar\.xz: /,
  },
  {
    name: "truncated compressed NAR",
    mutate: (d, n) => {
      const f = narFile(d, n);
      truncateSync(f, Math.floor(statSync(f).size / 2));
    },
    error: /\.nar\.xz: /,
  },
  { name: "NAR file missing", mutate: (d, n) => rmSync(narFile(d, n)), error: /\.nar\.xz: .*missing/ },
  {
    name: "URL escaping the cache",
    unsigned: true,
    mutate: (_d, n) => edit(n, (t) => replaceLine(t, "URL", "../../../../etc/passwd")),
    error: /narinfo.*URL/,
  },
  {
    name: "unknown compression",
    mutate: (_d, n) => edit(n, (t) => replaceLine(t, "Compression", "lzma9")),
    error: /lzma9/,
  },
  {
    name: "cache for another store dir",
    mutate: (d) => writeFileSync(join(d, "nix-cache-info"), "StoreDir: /gnu/store\n"),
    error: /nix-cache-info.*\/gnu\/store/,
  },
];

for (const [i, c] of CASES.entries()) {
  test(`bad cache: ${c.name}`, () => {
    const dir = join(work, `case-${i}`);
    cpSync(pristine, dir, { recursive: true });
    c.mutate(dir, join(dir, `${hashPart}.narinfo`));
    const storeDir = join(work, `store-${i}`);
    const args = ["substitute", "--from", `file://${dir}`, "--store-dir", storeDir, target];
    const r = nixoci(
      c.unsigned ? [...args, "--no-check-sigs"] : [...args, "--trusted-public-key", key.publicKey],
    );
    assert.equal(r.status, 1, `${c.name}: exit ${r.status}, stderr ${r.stderr}`);
    const lines = r.stderr
      .trim()
      .split("\n")
      .filter((l) => l.startsWith("nixoci:"));
    assert.equal(lines.length, 1, `${c.name}: one error line, got ${r.stderr}`);
    assert.match(lines[0], c.error, c.name);
    assert.ok(!/\n\s+at /.test(r.stderr), `${c.name}: no stack trace`);
    const left = existsSync(storeDir) ? readdirSync(storeDir).filter((n) => n !== ".nixoci") : [];
    assert.deepEqual(left, [], `${c.name}: nothing left in the store dir`);
  });
}

test("bad cache: malformed store paths on the command line", () => {
  for (const bad of [
    "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x",
    "/nix/store/short-x",
    "/nix/store/00000000000000000000000000000000-",
    "/nix/store/00000000000000000000000000000000-a b",
    "relative/00000000000000000000000000000000-x",
    `/nix/store/00000000000000000000000000000000-${"n".repeat(212)}`,
  ]) {
    const r = nixoci(["substitute", "--from", `file://${pristine}`, "--store-dir", join(work, "never"), bad]);
    assert.equal(r.status, 1, `${bad}: ${r.stderr}`);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.ok(r.stderr.includes(bad.slice(0, 40)), `error names the input: ${r.stderr}`);
  }
  assert.ok(!existsSync(join(work, "never")) || readdirSync(join(work, "never")).length === 0);
});
