// Which fetch step makes each layer: batches earlier builds ran are repeated (cache hits), the new layers go into a
// few new, size-balanced steps, and the ledger in BuildKit's cache mount keeps what it should.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, utimesSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  chooseBatches,
  MAX_RECORDS,
  readLedger,
  recordBatches,
  RETAIN_MS,
  type BatchRecord,
  type PlannedLayer,
} from "../../../src/servers/buildkit/fetch-batches.js";
import { layerDir, type Plan } from "../../../src/servers/buildkit/steps.js";
import { nixoci, nixociOk } from "../../support/cli.js";
import { buildFixtures, makeTempDir } from "../../support/fixtures.js";

const layer = (name: string, narSize = 1000): PlannedLayer => {
  const paths = [`/nix/store/${name.padStart(32, "a").slice(-32)}-${name}`];
  return { dir: layerDir(paths), paths, narSize };
};
const dirsOf = (b: { layers: Array<{ dir: string }> }) => b.layers.map((l) => l.dir);

describe("fetch batches", () => {
  const planned = Array.from({ length: 40 }, (_, i) => layer(`p${i}`, (i + 1) * 1000));

  test("a cold plan: at most maxNew new batches, every layer in exactly one, balanced by size, deterministic", () => {
    const chosen = chooseBatches(planned, [], 4);
    assert.equal(chosen.length, 4);
    assert.ok(chosen.every((b) => b.reused === undefined));
    assert.deepEqual(chosen.flatMap(dirsOf).sort(), planned.map((l) => l.dir).sort());
    const sizes = chosen.map((b) =>
      b.layers.reduce((n, l) => n + planned.find((p) => p.dir === l.dir)!.narSize, 0),
    );
    assert.ok(Math.max(...sizes) - Math.min(...sizes) <= 40_000, `sizes ${sizes.join(", ")}`);
    for (const b of chosen) assert.deepEqual(dirsOf(b), [...dirsOf(b)].sort(), "ordered by directory name");
    assert.deepEqual(
      chooseBatches([...planned].reverse(), [], 4),
      chosen,
      "the plan's order does not matter",
    );
    // No more layers than batches: one each.
    assert.deepEqual(
      chooseBatches(planned.slice(0, 3), [], 4).map((b) => b.layers.length),
      [1, 1, 1],
    );
  });

  test("after a change: the recorded batches again, verbatim, and one new step for exactly the changed layer", () => {
    const cold = chooseBatches(planned, [], 4);
    const known: BatchRecord[] = cold.map((b, i) => ({ name: `r${i}.json`, layers: b.layers, usedMs: 1 }));
    const changed = [...planned];
    changed[7] = layer("p7-changed", 8000);
    const again = chooseBatches(changed, known, 4);
    const reused = again.filter((b) => b.reused);
    assert.equal(reused.length, 4, "every old batch still has unchanged layers");
    for (const b of reused)
      assert.deepEqual(b.layers, known.find((k) => k.name === b.reused)!.layers, "repeated verbatim");
    const fresh = again.filter((b) => !b.reused);
    assert.deepEqual(fresh.map(dirsOf), [[changed[7].dir]]);
    // Every planned layer is made by exactly one of them (the old p7 stays in its old batch, unused).
    const made = again.flatMap(dirsOf).filter((d) => changed.some((l) => l.dir === d));
    assert.deepEqual(made.sort(), changed.map((l) => l.dir).sort());
  });

  test("records: the one covering most unplaced layers first; a record naming a layer with other paths is not used", () => {
    const [a, b, c] = [layer("a"), layer("b"), layer("c")];
    const known: BatchRecord[] = [
      { name: "small.json", layers: [a], usedMs: 5 },
      { name: "big.json", layers: [a, b], usedMs: 1 },
      {
        name: "bad.json",
        layers: [{ dir: c.dir, paths: ["/nix/store/" + "z".repeat(32) + "-other"] }],
        usedMs: 9,
      },
    ];
    const chosen = chooseBatches([a, b, c], known, 4);
    assert.deepEqual(
      chosen.map((x) => x.reused ?? dirsOf(x).join()),
      ["big.json", c.dir],
    );
  });

  test("the ledger: batches recorded whole, reused ones marked used, malformed files skipped, old and surplus ones dropped", () => {
    const ledger = makeTempDir("fetch-batch-ledger");
    const scope = "image@sha256:1 fetch --from http://cache";
    assert.deepEqual(readLedger(ledger, scope), [], "an empty cache mount");
    const cold = chooseBatches(planned, [], 4);
    const names = recordBatches(ledger, scope, cold, 1_000_000);
    const read = readLedger(ledger, scope);
    assert.deepEqual(read.map((r) => r.name).sort(), [...names].sort());
    for (const r of read) assert.deepEqual(r.layers, cold[names.indexOf(r.name)].layers);
    assert.deepEqual(readLedger(ledger, "another scope"), [], "records are per scope");
    const dir = join(ledger, readdirSync(ledger)[0]);
    assert.ok(!readdirSync(dir).some((n) => n.includes(".tmp-")), "no temporary left");

    // A malformed record and a foreign file are skipped, not fatal.
    writeFileSync(join(dir, "0".repeat(64) + ".json"), "{ not json");
    writeFileSync(
      join(dir, "1".repeat(64) + ".json"),
      JSON.stringify({ layers: [{ dir: "../x", paths: ["/p"] }] }),
    );
    writeFileSync(join(dir, "README"), "hello");
    assert.equal(readLedger(ledger, scope).length, 4);

    // Reusing marks a record used now; one unused for longer than RETAIN_MS goes.
    const later = 1_000_000 + RETAIN_MS + 1000;
    const chosen = chooseBatches(planned.slice(0, 10), readLedger(ledger, scope), 4);
    recordBatches(ledger, scope, chosen, later);
    const kept = readLedger(ledger, scope).map((r) => r.name);
    assert.deepEqual(kept.sort(), chosen.map((b) => b.reused!).sort(), "the unused records went");

    // No more than MAX_RECORDS records: the least recently used go.
    const many = join(makeTempDir("fetch-batch-many"));
    mkdirSync(many, { recursive: true });
    const batches = Array.from({ length: MAX_RECORDS + 5 }, (_, i) => ({ layers: [layer(`m${i}`)] }));
    recordBatches(many, scope, batches.slice(0, 5), 2_000_000);
    for (const r of readLedger(many, scope)) utimesSync(join(many, readdirSync(many)[0], r.name), 1, 1);
    recordBatches(many, scope, batches.slice(5), 2_000_000);
    const left = readLedger(many, scope);
    assert.equal(left.length, MAX_RECORDS);
    assert.ok(
      left.every((r) => r.usedMs > 1000),
      "the five least recently used went",
    );
    assert.ok(existsSync(many));
  });
});

describe("nixoci frontend plan --closure (a Nix file's plan step)", () => {
  const fx = buildFixtures();
  const dir = makeTempDir("plan-step");
  const planOf = (name: string, roots: string[], extra: string[] = []): Plan => {
    const closure = join(dir, `${name}.json`);
    writeFileSync(
      closure,
      execFileSync("nix", [
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        "--json",
        "-r",
        ...roots,
      ]),
    );
    writeFileSync(join(dir, `${name}.roots`), roots.join("\n") + "\n");
    const out = join(dir, `${name}.plan.json`);
    nixociOk([
      "frontend",
      "plan",
      "--out",
      out,
      "--closure",
      closure,
      "--roots",
      join(dir, `${name}.roots`),
      "--batches",
      join(dir, "ledger"),
      "--batch-scope",
      "test",
      ...extra,
    ]);
    return JSON.parse(readFileSync(out, "utf8")) as Plan;
  };

  test("the first plan records its one step; a plan with more paths repeats it and adds one for the new layers only", () => {
    const first = planOf("first", [fx.hello], ["--max-batches", "1"]);
    assert.equal(first.batches.length, 1);
    assert.deepEqual(
      first.batches[0].map((l) => l.dir).sort(),
      first.layers.map((l) => layerDir(l.paths)).sort(),
    );
    const second = planOf("second", [fx.hello, fx.tree], ["--max-batches", "1"]);
    assert.equal(second.batches.length, 2);
    assert.deepEqual(second.batches[0], first.batches[0], "the recorded step, verbatim");
    const old = new Set(first.layers.map((l) => layerDir(l.paths)));
    const fresh = second.layers.map((l) => layerDir(l.paths)).filter((d) => !old.has(d));
    assert.ok(fresh.length >= 1);
    assert.deepEqual(
      second.batches[1].map((l) => l.dir).sort(),
      fresh.sort(),
      "the new step: new layers only",
    );
  });

  test("a malformed closure file or a missing roots file: one line naming it, exit non-zero, no plan written", () => {
    const bad = join(dir, "bad.json");
    writeFileSync(bad, "{ not json");
    writeFileSync(join(dir, "r"), `${fx.hello}\n`);
    const out = join(dir, "bad.plan.json");
    const r = nixoci(["frontend", "plan", "--out", out, "--closure", bad, "--roots", join(dir, "r")]);
    assert.notEqual(r.status, 0);
    assert.equal(r.stderr.trim().split("\n").length, 1, r.stderr);
    assert.match(r.stderr, /bad\.json/);
    const noRoots = nixoci(["frontend", "plan", "--out", out, "--closure", join(dir, "first.json")]);
    assert.notEqual(noRoots.status, 0);
    assert.match(noRoots.stderr, /--roots is required/);
    assert.ok(!existsSync(out));
  });
});
