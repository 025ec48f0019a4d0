// Fault drills for the store-side writers:
// - `nixoci nar restore DEST` SIGKILLed at random and early points: DEST is absent or a tree whose NAR equals the
//   source's `nix-store --dump`; the restore run again completes; no temporary is left beside DEST.
// - `nixoci substitute` from a file:// binary cache (xz) into a temp --store-dir, SIGKILLed likewise: every path
//   in the store directory is complete (its NAR equals the source's); the substitution run again completes
//   with every path valid; no temporary is left in the store directory or TMPDIR.
// - a dead upstream: an HTTP binary cache (a child process) SIGKILLs itself after sending half of a NAR:
//   `nixoci substitute` fails with a one-line error naming the NAR's URL and saying the cache closed the
//   connection, and leaves no partial path and no temporary; the same cache going silent instead (alive, the
//   connection open) fails as "stalled" once NIXOCI_STALLED_DOWNLOAD_TIMEOUT passes.
import { test, describe, before } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { basename, join } from "node:path";
import { buildFixtures, makeSignedNixCache, makeTempDir, type FixtureAttr } from "../support/fixtures.js";
import { GiveUp, until } from "../support/poll.js";
import { run, runText } from "../support/run.js";
import {
  assertNoTemporaries,
  describeEnd,
  drillTimeout,
  entries,
  killPoints,
  measure,
  privateTmpdir,
  runNixoci,
  runNixociKilledAt,
  runNixociOk,
  runTrials,
  substituteArgs,
} from "../support/drill.js";

/** sha256 (hex) of `nix-store --dump PATH`: the NAR of a tree, to compare trees with. */
function dumpHash(path: string): string {
  return createHash("sha256")
    .update(run("nix-store", ["--dump", path]))
    .digest("hex");
}

let fx: Record<FixtureAttr, string>;
before(
  () => {
    fx = buildFixtures();
  },
  { timeout: 240_000 },
);

describe("drill: nixoci nar restore SIGKILLed", () => {
  test(
    "DEST absent or equal to the source, the rerun completes, nothing left beside it",
    { timeout: drillTimeout(30_000) },
    async () => {
      const work = makeTempDir("drill-nar");
      // A source tree with every node kind and a few MB: fixture trees, 16 MiB of incompressible bytes, 300 files.
      const src = join(work, "src");
      mkdirSync(join(src, "many"), { recursive: true });
      for (const a of ["big", "tree", "sort-order", "long-names", "self-ref"] as const)
        cpSync(fx[a], join(src, a), { recursive: true, verbatimSymlinks: true });
      const blob = Buffer.alloc(16 << 20);
      for (let off = 0, i = 0; off < blob.length; i++)
        off += createHash("sha256").update(`drill-${i}`).digest().copy(blob, off);
      writeFileSync(join(src, "random.bin"), blob);
      for (let i = 0; i < 300; i++) writeFileSync(join(src, "many", `f${i}`), `file ${i}\n`.repeat(i));
      const nar = join(work, "src.nar");
      writeFileSync(nar, run("nix-store", ["--dump", src]));
      const want = createHash("sha256").update(readFileSync(nar)).digest("hex");

      const measured = await measure(["nar", "restore", join(work, "measured")], { stdinFile: nar });
      assert.equal(dumpHash(join(work, "measured")), want);
      console.log(`nar restore: one uninterrupted restore takes ${measured} ms`);
      await runTrials("nar restore", killPoints("nar restore", measured), async (p, i) => {
        const parent = join(work, `t${i}`);
        mkdirSync(parent);
        const dest = join(parent, "out");
        const r = await runNixociKilledAt(["nar", "restore", dest], p.ms, { stdinFile: nar });
        const end = describeEnd(r);
        assert.ok(r.signal === "SIGKILL" || r.code === 0, end);
        const visible = entries(parent).filter((n) => !n.startsWith("."));
        assert.ok(visible.length === 0 || (visible.length === 1 && visible[0] === "out"), visible.join(" "));
        const complete = existsSync(dest);
        if (complete) {
          assert.equal(dumpHash(dest), want, "the restored tree's NAR is the source's");
          rmSync(dest, { recursive: true }); // to restore again
        }
        await runNixociOk(["nar", "restore", dest], { stdinFile: nar });
        assert.equal(dumpHash(dest), want, "after the rerun");
        // The next restore of DEST removes what killed restores of it left (issue 11's F5 fix, aeb416f).
        assertNoTemporaries([parent], "after the rerun");
        return `${end}${complete ? " (tree already complete)" : ""}`;
      });
    },
  );
});

describe("drill: nixoci substitute SIGKILLed (file:// binary cache, xz, into a temp --store-dir)", () => {
  test(
    "every path complete, the rerun completes, no temporaries",
    { timeout: drillTimeout(30_000) },
    async () => {
      const work = makeTempDir("drill-substitute");
      const tmp = privateTmpdir("substitute");
      const { url: cache, key } = makeSignedNixCache(work, "drill-substitute", [fx.all]);
      const closure = runText("nix-store", ["-qR", fx.all]).split("\n");
      const wantHash = new Map(closure.map((p) => [basename(p), dumpHash(p)]));
      const args = (store: string): string[] => substituteArgs(cache, key.publicKey, store, [fx.all]);
      const env = { TMPDIR: tmp };
      /** Every store path in `store` is complete; returns how many the target's metadata says are valid. */
      const check = async (store: string): Promise<number> => {
        for (const n of entries(store)) {
          if (n.startsWith(".")) continue;
          assert.ok(wantHash.has(n), `${n}: a path of the closure`);
          assert.equal(dumpHash(join(store, n)), wantHash.get(n), `${n} is complete`);
        }
        const info = await runNixoci(["path-info", "--json", "--store", store, ...closure]);
        const valid = (JSON.parse(info.stdout) as Array<{ path: string; valid?: boolean }>).filter(
          (i) => i.valid !== false,
        );
        for (const v of valid)
          assert.ok(existsSync(join(store, basename(v.path))), `${v.path} valid and there`);
        return valid.length;
      };

      const measured = await measure(args(join(work, "measured")), { env });
      assert.equal(await check(join(work, "measured")), closure.length);
      console.log(
        `substitute: one uninterrupted substitution of ${closure.length} paths takes ${measured} ms`,
      );
      await runTrials("substitute", killPoints("substitute", measured), async (p, i) => {
        const store = join(work, `store-${i}`);
        const r = await runNixociKilledAt(args(store), p.ms, { env });
        const end = describeEnd(r);
        assert.ok(r.signal === "SIGKILL" || r.code === 0, end);
        const validAfterKill = await check(store);
        await runNixociOk(args(store), { env });
        assert.equal(await check(store), closure.length, "every path valid after the rerun");
        assertNoTemporaries([store], "after the rerun");
        assert.deepEqual(entries(tmp), [], "nothing left in TMPDIR");
        return `${end} (${validAfterKill}/${closure.length} paths valid after the kill)`;
      });
    },
  );
});

/**
 * A binary cache over HTTP in a child process that serves `dir` and, after sending half of the NAR file whose
 * name contains `dieOn` (with the full Content-Length announced), SIGKILLs itself (`how` "die") or sends nothing
 * more and keeps the connection open (`how` "stall"). Resolves with its URL.
 */
async function startDyingCache(
  dir: string,
  dieOn: string,
  how: "die" | "stall" = "die",
): Promise<{ url: string; exited: Promise<void>; stop: () => void }> {
  const script = `
    const http = require("node:http"), fs = require("node:fs"), path = require("node:path");
    const [dir, dieOn, how] = process.argv.slice(1);
    const srv = http.createServer((req, res) => {
      const file = path.join(dir, decodeURIComponent(req.url.split("?")[0]));
      if (!file.startsWith(dir + "/") || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
        res.writeHead(404).end();
        return;
      }
      const data = fs.readFileSync(file);
      res.writeHead(200, { "Content-Length": data.length });
      if (req.method === "HEAD") return res.end();
      if (!file.includes(dieOn)) return res.end(data);
      res.write(data.subarray(0, data.length >> 1), () => {
        if (how === "die") setTimeout(() => process.kill(process.pid, "SIGKILL"), 50);
      });
    });
    srv.listen(0, "127.0.0.1", () => console.log(srv.address().port));`;
  const child = spawn(process.execPath, ["-e", script, dir, dieOn, how], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  let out = "";
  child.stdout!.on("data", (d) => (out += d));
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  const port = await until("the dying cache to listen", 20_000, () => {
    if (child.exitCode !== null || child.signalCode !== null) throw new GiveUp("it exited");
    const m = /^(\d+)\n/.exec(out);
    assert.ok(m, "no port yet");
    return Number(m[1]);
  });
  return { url: `http://127.0.0.1:${port}`, exited, stop: () => child.kill("SIGKILL") };
}

describe("drill: the binary cache dies or goes silent in the middle of a NAR", () => {
  for (const [how, compression] of [
    ["die", "none"],
    ["die", "xz"],
    ["stall", "xz"],
  ] as const)
    test(
      `${how === "die" ? "killed" : "silent"}, compression ${compression}: one-line error, exit 1, nothing partial left`,
      { timeout: 300_000 },
      async () => {
        const work = makeTempDir("drill-dead-upstream");
        const tmp = privateTmpdir("dead-upstream");
        const { dir: cacheDir, key } = makeSignedNixCache(work, "drill-dead", [fx.all], compression);
        // The NAR of `big` (3 MB): the narinfo names its file.
        const narinfo = readFileSync(join(cacheDir, `${basename(fx.big).slice(0, 32)}.narinfo`), "utf8");
        const narFile = /^URL: (\S+)$/m.exec(narinfo)![1];
        const upstream = await startDyingCache(cacheDir, narFile, how);
        const store = join(work, "store");
        try {
          const r = await runNixoci(substituteArgs(upstream.url, key.publicKey, store, [fx.all]), {
            env: { TMPDIR: tmp, NIXOCI_STALLED_DOWNLOAD_TIMEOUT: "1" },
          });
          if (how === "die") await upstream.exited;
          console.log(
            `substitute from a cache that ${how === "die" ? "died" : "went silent"} mid-NAR (${compression}): exit ${r.code}: ${r.stderr.trim()}`,
          );
          assert.equal(r.code, 1, r.stderr);
          const lines = r.stderr.trim().split("\n");
          assert.equal(lines.length, 1, `one line: ${r.stderr}`);
          assert.ok(
            lines[0].startsWith(`nixoci: ${fx.big}: cannot substitute: ${upstream.url}/${narFile}: `),
            `names the path and the NAR's URL: ${lines[0]}`,
          );
          assert.match(
            lines[0],
            how === "die"
              ? / the cache closed the connection after \d+ of \d+ bytes/
              : / stalled: no data for 1 s after \d+ of \d+ bytes/,
          );
          // Paths that completed before the upstream failed are whole; `big` and what needs it are not there.
          for (const n of entries(store).filter((e) => !e.startsWith(".")))
            assert.equal(dumpHash(join(store, n)), dumpHash(join("/nix/store", n)), `${n} is complete`);
          assert.ok(!existsSync(join(store, basename(fx.big))), "the cut NAR's path is not there");
          assert.ok(!existsSync(join(store, basename(fx.all))));
          assertNoTemporaries([store], "after the failure");
          assert.deepEqual(entries(tmp), [], "nothing left in TMPDIR");
        } finally {
          upstream.stop();
        }
      },
    );
});
