// Layering strategies: hand-worked small graphs for each algorithm, comparisons against straightforward
// (slow, set-based) restatements of the algorithms on random graphs, properties (coverage, limits, order,
// determinism), and the rebuild property that makes size-first worth having: one changed package only
// changes the layers holding it and the paths that depend on it.
import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { NixociError } from "../../src/util/errors.js";
import {
  NIXERY_SIZE_THRESHOLD,
  planLayers,
  planNixery,
  planPopularity,
  planSizeFirst,
  type LayeringInput,
} from "../../src/image/layering.js";
import type { LayeringStrategy, PlannedLayer } from "../../src/image/types.js";
import {
  graph,
  largeGraphs,
  randomGraph,
  storePath,
  toInput,
  type RandomGraph,
} from "../support/layering-graphs.js";

const STRATEGIES: LayeringStrategy[] = ["size", "popularity", "nixery"];

function nameOf(path: string): string {
  return path.slice(path.indexOf("-") + 1);
}

/** Two salts under which `x` and `y` come in opposite path orders. */
function oppositeSalts(x: string, y: string): [string, string] {
  const before = (salt: string) => storePath(x, x + salt) < storePath(y, y + salt);
  for (let i = 1; ; i++) if (before(String(i)) !== before("")) return ["", String(i)];
}

/** A plan as names: layers in order, names inside a layer sorted (path order is checked separately). */
function names(plan: PlannedLayer[]): string[][] {
  return plan.map((l) => l.paths.map(nameOf).sort());
}

/** Coverage, limit, no empty layer, path order inside layers. */
function checkPlan(plan: PlannedLayer[], input: LayeringInput, limit: number): void {
  assert.ok(plan.length <= limit, `${plan.length} layers > limit ${limit}`);
  const seen = new Set<string>();
  for (const layer of plan) {
    assert.ok(layer.paths.length > 0, "empty layer");
    for (let i = 1; i < layer.paths.length; i++) {
      assert.ok(layer.paths[i - 1] < layer.paths[i], "paths in a layer not in strict string order");
    }
    for (const p of layer.paths) {
      assert.ok(input.infos.has(p), `${p} is not in the closure`);
      assert.ok(!seen.has(p), `${p} is in two layers`);
      seen.add(p);
    }
  }
  assert.equal(seen.size, input.infos.size, "some closure path is in no layer");
}

// ---------------------------------------------------------------------------------------------------------
// Slow restatements of the three algorithms, on plain Sets, for small graphs.

function nameKey(path: string): [string, string] {
  const base = path.slice(path.lastIndexOf("/") + 1);
  const dash = base.indexOf("-");
  return [base.slice(dash + 1), base.slice(0, dash)];
}

function byNameOrder(a: string, b: string): number {
  const [na, ha] = nameKey(a);
  const [nb, hb] = nameKey(b);
  return na < nb ? -1 : na > nb ? 1 : ha < hb ? -1 : ha > hb ? 1 : 0;
}

class SlowGraph {
  readonly deps = new Map<string, string[]>();
  readonly users = new Map<string, string[]>();
  readonly size = new Map<string, number>();
  constructor(readonly input: LayeringInput) {
    for (const [p, i] of input.infos) {
      this.deps.set(p, [...new Set(i.references.filter((r) => r !== p))]);
      this.size.set(p, i.narSize);
      if (!this.users.has(p)) this.users.set(p, []);
      for (const r of this.deps.get(p)!) {
        if (!this.users.has(r)) this.users.set(r, []);
        this.users.get(r)!.push(p);
      }
    }
  }
  /** Everything reachable from `p` through `edges`, `p` excluded. */
  reach(p: string, edges: Map<string, string[]>): Set<string> {
    const done = new Set<string>();
    const todo = [...edges.get(p)!];
    while (todo.length) {
      const x = todo.pop()!;
      if (!done.has(x)) {
        done.add(x);
        todo.push(...edges.get(x)!);
      }
    }
    return done;
  }
  closureSize(paths: string[]): number {
    const all = new Set(paths);
    for (const p of paths) for (const d of this.reach(p, this.deps)) all.add(d);
    return [...all].reduce((s, p) => s + this.size.get(p)!, 0);
  }
  /** Popularity by the contest's recurrence: merge each child's counters, adding one per level. */
  popularity(): Map<string, bigint> {
    const memo = new Map<string, Map<string, bigint>>();
    const contest = (children: string[]): Map<string, bigint> => {
      const out = new Map<string, bigint>();
      for (const c of children) {
        out.set(c, (out.get(c) ?? 0n) + 1n);
        let sub = memo.get(c);
        if (!sub) memo.set(c, (sub = contest(this.deps.get(c)!)));
        for (const [x, k] of sub) out.set(x, (out.get(x) ?? 0n) + k + 1n);
      }
      return out;
    };
    return contest([...this.deps.keys()].filter((p) => this.users.get(p)!.length === 0));
  }
}

function slowSizeFirst(input: LayeringInput, limit: number): string[][] {
  const g = new SlowGraph(input);
  const all = [...input.infos.keys()];
  let split = new Map<string, Set<string>>(all.map((p) => [p, new Set()]));
  const distinct = (s: Map<string, Set<string>>) =>
    new Set([...s.values()].map((v) => [...v].sort().join())).size;
  const bySize = [...all].sort((a, b) => g.size.get(b)! - g.size.get(a)! || byNameOrder(a, b));
  for (const p of bySize) {
    const next = new Map([...split].map(([k, v]) => [k, new Set(v)]));
    next.set(p, new Set([p]));
    const deps = g.reach(p, g.deps);
    const users = g.reach(p, g.users);
    for (const d of deps) {
      const owners = new Set([...next.get(d)!].filter((o) => !users.has(o)));
      if (![...owners].some((o) => deps.has(o))) owners.add(p);
      next.set(d, owners);
    }
    if (distinct(next) > limit) break;
    split = next;
  }
  const groups = new Map<string, string[]>();
  for (const p of all) {
    const key = [...split.get(p)!].sort().join();
    groups.set(key, [...(groups.get(key) ?? []), p]);
  }
  const layers = [...groups.values()].map((paths) => ({
    paths: paths.sort(),
    closure: g.closureSize(paths),
    first: [...paths].sort(byNameOrder)[0],
  }));
  layers.sort((a, b) => a.closure - b.closure || byNameOrder(a.first, b.first));
  return layers.map((l) => l.paths);
}

function slowPopularity(input: LayeringInput, limit: number): string[][] {
  const pop = new SlowGraph(input).popularity();
  const ranked = [...input.infos.keys()].sort((a, b) => {
    const d = pop.get(b)! - pop.get(a)!;
    return d > 0n ? 1 : d < 0n ? -1 : byNameOrder(a, b);
  });
  if (ranked.length <= limit) return ranked.map((p) => [p]);
  return [...ranked.slice(0, limit - 1).map((p) => [p]), ranked.slice(limit - 1).sort()];
}

function slowNixery(input: LayeringInput, limit: number): string[][] {
  const g = new SlowGraph(input);
  const pop = g.popularity();
  const all = [...input.infos.keys()];
  const ROOT = "<root>";
  const roots = new Set(input.roots);
  for (const p of all) {
    const big = g.closureSize([p]) > NIXERY_SIZE_THRESHOLD || pop.get(p)! >= 100n;
    if (g.users.get(p)!.length === 0 || big) roots.add(p);
  }
  const edges = new Map([...g.deps, [ROOT, [...roots]]]);
  // d dominates v when v cannot be reached from the root without passing d.
  const dominators = new Map<string, Set<string>>(all.map((p) => [p, new Set([p])]));
  for (const d of all) {
    const seen = new Set([ROOT, d]);
    const todo = [ROOT];
    while (todo.length) {
      for (const x of edges.get(todo.pop()!)!) {
        if (!seen.has(x)) {
          seen.add(x);
          todo.push(x);
        }
      }
    }
    for (const v of all) if (!seen.has(v)) dominators.get(v)!.add(d);
  }
  // Dominators form a chain; the top one is the root's child.
  const groups = new Map<string, string[]>();
  for (const v of all) {
    const top = [...dominators.get(v)!].sort((a, b) => dominators.get(a)!.size - dominators.get(b)!.size)[0];
    groups.set(top, [...(groups.get(top) ?? []), v]);
  }
  const layers = [...groups].map(([top, paths]) => ({
    top,
    paths,
    rating: pop.get(top)! * BigInt(paths.reduce((s, p) => s + g.size.get(p)!, 0)),
  }));
  layers.sort((a, b) => (a.rating < b.rating ? -1 : a.rating > b.rating ? 1 : byNameOrder(a.top, b.top)));
  while (layers.length > limit) {
    const [a, b] = layers.splice(0, 2);
    layers.unshift({ top: a.top, paths: [...a.paths, ...b.paths], rating: a.rating + b.rating });
  }
  return layers.map((l) => l.paths.sort());
}

// ---------------------------------------------------------------------------------------------------------

describe("size-first (nixpkgs auto-layer)", () => {
  test("diamond: the largest paths split off first, the rest stays together", () => {
    // T -> L -> B, T -> R -> B
    const input = graph({ T: [10, ["L", "R"]], L: [20, ["B"]], R: [30, ["B"]], B: [40, []] }, ["T"]);
    assert.deepEqual(names(planSizeFirst(input, 1)), [["B", "L", "R", "T"]]);
    assert.deepEqual(names(planSizeFirst(input, 2)), [["B"], ["L", "R", "T"]]);
    assert.deepEqual(names(planSizeFirst(input, 3)), [["B"], ["R"], ["L", "T"]]);
    // One path per layer, by closure size: B 40, L 60, R 70, T 100.
    assert.deepEqual(names(planSizeFirst(input, 4)), [["B"], ["L"], ["R"], ["T"]]);
    assert.deepEqual(names(planSizeFirst(input, 100)), [["B"], ["L"], ["R"], ["T"]]);
  });

  test("chain: a primary path takes its dependencies along", () => {
    // A -> B -> C -> D; B is the largest, so B, C and D form the first layer.
    const input = graph({ A: [1, ["B"]], B: [4, ["C"]], C: [2, ["D"]], D: [3, []] }, ["A"]);
    assert.deepEqual(names(planSizeFirst(input, 1)), [["A", "B", "C", "D"]]);
    assert.deepEqual(names(planSizeFirst(input, 2)), [["B", "C", "D"], ["A"]]);
    assert.deepEqual(names(planSizeFirst(input, 3)), [["D"], ["B", "C"], ["A"]]);
    assert.deepEqual(names(planSizeFirst(input, 4)), [["D"], ["C"], ["B"], ["A"]]);
  });

  test("two applications sharing a big dependency", () => {
    const input = graph(
      {
        app1: [10, ["big", "glibc", "u1"]],
        app2: [20, ["big", "glibc", "u2"]],
        big: [1000, ["bigdep", "glibc"]],
        bigdep: [50, []],
        glibc: [300, []],
        u1: [5, []],
        u2: [7, []],
      },
      ["app1", "app2"],
    );
    const rest = ["app1", "app2", "u1", "u2"];
    assert.deepEqual(names(planSizeFirst(input, 1)), [[...rest, "big", "bigdep", "glibc"].sort()]);
    assert.deepEqual(names(planSizeFirst(input, 2)), [["big", "bigdep", "glibc"], rest]);
    assert.deepEqual(names(planSizeFirst(input, 3)), [["glibc"], ["big", "bigdep"], rest]);
    assert.deepEqual(names(planSizeFirst(input, 4)), [["bigdep"], ["glibc"], ["big"], rest]);
    // app2 then app1 become primaries; the count stays at 5 after app1 (the empty-owner group vanishes).
    assert.deepEqual(names(planSizeFirst(input, 5)), [
      ["bigdep"],
      ["glibc"],
      ["big"],
      ["app1", "u1"],
      ["app2", "u2"],
    ]);
    assert.deepEqual(names(planSizeFirst(input, 6)), [
      ["u2"],
      ["bigdep"],
      ["glibc"],
      ["big"],
      ["app1", "u1"],
      ["app2"],
    ]);
    assert.deepEqual(names(planSizeFirst(input, 7)), [
      ["u1"],
      ["u2"],
      ["bigdep"],
      ["glibc"],
      ["big"],
      ["app1"],
      ["app2"],
    ]);
  });

  test("dependencies shared by several primaries get a layer per set of primaries", () => {
    // X and Y both use s -> t; Z uses t only.
    const input = graph({ X: [100, ["s"]], Y: [90, ["s"]], Z: [3, ["t"]], s: [1, ["t"]], t: [2, []] }, [
      "X",
      "Y",
      "Z",
    ]);
    assert.deepEqual(names(planSizeFirst(input, 3)), [
      ["Y", "Z"],
      ["X", "s", "t"],
    ]);
    assert.deepEqual(names(planSizeFirst(input, 4)), [["s", "t"], ["Z"], ["Y"], ["X"]]);
    assert.deepEqual(names(planSizeFirst(input, 5)), [["t"], ["s"], ["Z"], ["Y"], ["X"]]);
  });

  test("equal sizes are taken in name order, whatever the hashes", () => {
    // a and b (same size) both use c; a comes first by name, so with 2 layers a splits off with c.
    for (const salt of oppositeSalts("a", "b")) {
      const input = graph({ a: [5, ["c"]], b: [5, ["c"]], c: [1, []] }, ["a", "b"], salt);
      assert.deepEqual(names(planSizeFirst(input, 2)), [["a", "c"], ["b"]]);
    }
    // Equal closure sizes: the layer whose first path by name comes first goes first.
    for (const salt of oppositeSalts("p", "q")) {
      const input = graph({ p: [5, []], q: [5, []] }, ["p", "q"], salt);
      assert.deepEqual(names(planSizeFirst(input, 2)), [["p"], ["q"]]);
    }
  });

  test("agrees with a slow set-based restatement on random graphs", () => {
    for (const seed of [1, 2, 3, 4, 5, 6]) {
      const input = toInput(randomGraph(seed, 40 + seed * 20));
      for (const limit of [1, 2, 3, 5, 8, 13, 30, 100, 1000]) {
        const plan = planSizeFirst(input, limit);
        assert.deepEqual(
          plan.map((l) => l.paths),
          slowSizeFirst(input, limit),
          `seed ${seed}, limit ${limit}`,
        );
      }
    }
  });

  test("layers come in closure size order; with paths <= limit each path has its own layer", () => {
    for (const seed of [11, 12, 13]) {
      const input = toInput(randomGraph(seed, 80));
      const slow = new SlowGraph(input);
      for (const limit of [3, 20, 79, 80, 200]) {
        const plan = planSizeFirst(input, limit);
        const sizes = plan.map((l) => slow.closureSize(l.paths));
        for (let i = 1; i < sizes.length; i++) assert.ok(sizes[i - 1] <= sizes[i], `seed ${seed}`);
        if (limit >= 80) assert.ok(plan.every((l) => l.paths.length === 1));
      }
    }
  });
});

describe("popularity contest", () => {
  // The worked example of nixpkgs' closure-graph.py: A-B-C-D-F, B-E-F, C-E, A-G.
  const example = graph(
    {
      A: [1, ["B", "G"]],
      B: [1, ["C", "E"]],
      C: [1, ["D", "E"]],
      D: [1, ["F"]],
      E: [1, ["F"]],
      F: [1, []],
      G: [1, []],
    },
    ["A"],
  );

  test("popularity counts every route: F 9, E 5, D 4, C 3, B 2, G 2, A 1", () => {
    assert.deepEqual(names(planPopularity(example, 10)), [["F"], ["E"], ["D"], ["C"], ["B"], ["G"], ["A"]]);
    assert.deepEqual(names(planPopularity(example, 7)), [["F"], ["E"], ["D"], ["C"], ["B"], ["G"], ["A"]]);
  });

  test("the limit-1 most popular paths get a layer each, the rest one catch-all on top", () => {
    assert.deepEqual(names(planPopularity(example, 6)), [["F"], ["E"], ["D"], ["C"], ["B"], ["A", "G"]]);
    assert.deepEqual(names(planPopularity(example, 3)), [["F"], ["E"], ["A", "B", "C", "D", "G"]]);
    assert.deepEqual(names(planPopularity(example, 1)), [["A", "B", "C", "D", "E", "F", "G"]]);
  });

  test("foo -> bar -> baz -> tux, foo -> baz: tux 6, baz 4, bar 2, foo 1", () => {
    const input = graph({ foo: [1, ["bar", "baz"]], bar: [1, ["baz"]], baz: [1, ["tux"]], tux: [1, []] }, [
      "foo",
    ]);
    assert.deepEqual(names(planPopularity(input, 4)), [["tux"], ["baz"], ["bar"], ["foo"]]);
    assert.deepEqual(names(planPopularity(input, 2)), [["tux"], ["bar", "baz", "foo"]]);
  });

  test("equal popularity: name order, not hash order", () => {
    for (const salt of oppositeSalts("acl", "zlib")) {
      const input = graph({ r: [1, ["zlib", "acl"]], zlib: [1, []], acl: [1, []] }, ["r"], salt);
      assert.deepEqual(names(planPopularity(input, 3)), [["acl"], ["zlib"], ["r"]]);
      assert.deepEqual(names(planPopularity(input, 2)), [["acl"], ["r", "zlib"]]);
    }
  });

  test("route counts beyond 2^53 are compared exactly", () => {
    // A ladder of 70 diamonds doubles the route count at every rung: 2^70 routes reach the bottom.
    const spec: Record<string, [number, string[]]> = {};
    for (let i = 0; i < 70; i++) {
      spec[`n${i}`] = [1, [`a${i}`, `b${i}`]];
      spec[`a${i}`] = [1, [`n${i + 1}`]];
      spec[`b${i}`] = [1, [`n${i + 1}`]];
    }
    spec["n70"] = [1, ["leaf", "zleaf"]];
    spec["leaf"] = [1, []];
    spec["zleaf"] = [1, []];
    // One more route to zleaf makes it the most popular by exactly one route's worth.
    spec["top"] = [1, ["n0", "zleaf"]];
    const input = graph(spec, ["top"]);
    const plan = planPopularity(input, 3);
    assert.deepEqual(names(plan).slice(0, 2), [["zleaf"], ["leaf"]]);
  });

  test("agrees with the contest's recurrence on random graphs", () => {
    for (const seed of [21, 22, 23, 24]) {
      const input = toInput(randomGraph(seed, 60 + seed));
      for (const limit of [1, 2, 10, 50, 500]) {
        assert.deepEqual(
          planPopularity(input, limit).map((l) => l.paths),
          slowPopularity(input, limit),
          `seed ${seed}, limit ${limit}`,
        );
      }
    }
  });
});

describe("Nixery (dominator tree)", () => {
  // app -> libA -> base, app -> shared -> base, tool -> shared, tool -> big (200 MB).
  const input = graph(
    {
      app: [10, ["libA", "shared"]],
      libA: [20, ["base"]],
      tool: [30, ["shared", "big"]],
      shared: [40, ["base"]],
      base: [50, []],
      big: [200e6, []],
    },
    ["app", "tool"],
  );

  test("dominated paths join their dominator; big paths and shared paths stand alone", () => {
    // Popularity: app 1, tool 1, big 2, libA 2, shared 4, base 8. Ratings (popularity x layer size):
    // {app, libA} 30, {tool} 30, {shared} 160, {base} 400, {big} 400,000,000.
    const layers = [["app", "libA"], ["tool"], ["shared"], ["base"], ["big"]];
    assert.deepEqual(names(planNixery(input, 5)), layers);
    assert.deepEqual(names(planNixery(input, 100)), layers);
  });

  test("the lowest-rated layers are merged into one catch-all at the bottom", () => {
    assert.deepEqual(names(planNixery(input, 4)), [["app", "libA", "tool"], ["shared"], ["base"], ["big"]]);
    assert.deepEqual(names(planNixery(input, 3)), [["app", "libA", "shared", "tool"], ["base"], ["big"]]);
    assert.deepEqual(names(planNixery(input, 2)), [["app", "base", "libA", "shared", "tool"], ["big"]]);
    assert.deepEqual(names(planNixery(input, 1)), [["app", "base", "big", "libA", "shared", "tool"]]);
  });

  test("the catch-all stays first while merging, even when it outgrows the next layer", () => {
    // Ratings: a 10, b 10, c 15, d 16, e 1000. Merging a+b (20) and then with c gives {a,b,c} 35, d, e;
    // re-sorting after each merge would have given {c,d} then {a,b} instead.
    for (const salt of oppositeSalts("a", "b")) {
      const spec: Record<string, [number, string[]]> = {
        a: [10, []],
        b: [10, []],
        c: [15, []],
        d: [16, []],
        e: [1000, []],
      };
      const flat = graph(spec, ["a", "b", "c", "d", "e"], salt);
      assert.deepEqual(names(planNixery(flat, 3)), [["a", "b", "c"], ["d"], ["e"]]);
      assert.deepEqual(names(planNixery(flat, 5)), [["a"], ["b"], ["c"], ["d"], ["e"]]);
    }
  });

  test("a common dependency deep in one subtree is dominated by the subtree's head", () => {
    // p -> q1 -> s -> t, p -> q2 -> s; o -> t: s is dominated by p, t by nobody but the root.
    const deep = graph(
      { p: [1, ["q1", "q2"]], q1: [1, ["s"]], q2: [1, ["s"]], s: [1, ["t"]], t: [1, []], o: [1, ["t"]] },
      ["p", "o"],
    );
    assert.deepEqual(names(planNixery(deep, 10)).sort(), [["o"], ["p", "q1", "q2", "s"], ["t"]].sort());
  });

  test("popularity threshold: 100", () => {
    // k roots -> m -> lib -> deep: popularity of m 2k, lib 3k, deep 4k.
    const ladder = (k: number) => {
      const spec: Record<string, [number, string[]]> = {
        m: [10, ["lib"]],
        lib: [20, ["deep"]],
        deep: [30, []],
      };
      const roots = Array.from({ length: k }, (_, i) => `r${String(i).padStart(2, "0")}`);
      for (const r of roots) spec[r] = [1, ["m"]];
      return graph(spec, roots);
    };
    // k = 33: lib has 99, stays with m; deep (132) stands alone.
    const plan33 = names(planNixery(ladder(33), 100));
    assert.equal(plan33.length, 35);
    assert.deepEqual(plan33.slice(33), [["lib", "m"], ["deep"]]);
    // k = 34: lib has 102.
    const plan34 = names(planNixery(ladder(34), 100));
    assert.equal(plan34.length, 37);
    assert.deepEqual(plan34.slice(34), [["m"], ["lib"], ["deep"]]);
  });

  test("size threshold: a closure over 100 MB", () => {
    const at = graph({ x: [1, ["y"]], y: [60e6, ["z"]], z: [40e6, []] }, ["x"]);
    assert.deepEqual(names(planNixery(at, 10)), [["x", "y", "z"]]);
    const over = graph({ x: [1, ["y"]], y: [60e6, ["z"]], z: [40e6 + 1, []] }, ["x"]);
    assert.deepEqual(names(planNixery(over, 10)), [["x"], ["y", "z"]]);
  });

  test("requested paths that others use still get their own layer", () => {
    const input2 = graph({ a: [1, ["b"]], b: [1, ["c"]], c: [1, []] }, ["a", "b"]);
    assert.deepEqual(names(planNixery(input2, 10)), [["a"], ["b", "c"]]);
    const input1 = graph({ a: [1, ["b"]], b: [1, ["c"]], c: [1, []] }, ["a"]);
    assert.deepEqual(names(planNixery(input1, 10)), [["a", "b", "c"]]);
  });

  test("agrees with dominators computed by definition on random graphs", () => {
    for (const seed of [31, 32, 33, 34, 35]) {
      const g = randomGraph(seed, 50 + seed * 3);
      // Some paths over the size threshold, so that both kinds of root edges occur.
      g.sizes = g.sizes.map((s, i) => (i % 17 === 5 ? s + NIXERY_SIZE_THRESHOLD : s));
      const input = toInput(g);
      for (const limit of [1, 2, 5, 20, 94, 1000]) {
        assert.deepEqual(
          planNixery(input, limit).map((l) => l.paths),
          slowNixery(input, limit),
          `seed ${seed}, limit ${limit}`,
        );
      }
    }
  });
});

describe("all strategies", () => {
  test("random graphs: coverage, limit, no empty layer, path order; same plan for any insertion order", () => {
    const cases: [seed: number, n: number][] = [
      [101, 50],
      [102, 50],
      [103, 400],
      [104, 400],
      [105, 1500],
      [106, 3000],
    ];
    for (const [seed, n] of cases) {
      const g = randomGraph(seed, n);
      const input = toInput(g);
      const shuffled = toInput(g, seed * 7919);
      assert.notDeepEqual([...input.infos.keys()], [...shuffled.infos.keys()]);
      for (const strategy of STRATEGIES) {
        for (const limit of [1, 2, 7, 99]) {
          const plan = planLayers(strategy, input, limit);
          checkPlan(plan, input, limit);
          if (n > 2 * limit) assert.ok(plan.length > limit / 2, `${strategy}: only ${plan.length} layers`);
          assert.deepEqual(planLayers(strategy, shuffled, limit), plan, `${strategy}, seed ${seed}`);
        }
      }
    }
  });

  test("edge cases: empty closure, single path, self references only", () => {
    const empty: LayeringInput = { roots: [], infos: new Map() };
    const one = graph({ solo: [7, []] }, ["solo"]);
    for (const strategy of STRATEGIES) {
      assert.deepEqual(planLayers(strategy, empty, 5), []);
      assert.deepEqual(names(planLayers(strategy, one, 1)), [["solo"]]);
      assert.deepEqual(names(planLayers(strategy, one, 5)), [["solo"]]);
    }
  });

  test("bad input is rejected", () => {
    const ok = graph({ a: [1, ["b"]], b: [1, []] }, ["a"]);
    const missing = graph({ a: [1, ["b"]] }, ["a"]);
    const cycle = graph({ a: [1, ["b"]], b: [1, ["a"]] }, ["a"]);
    const strayRoot = { ...ok, roots: [storePath("elsewhere")] };
    for (const strategy of STRATEGIES) {
      assert.throws(() => planLayers(strategy, ok, 0), RangeError);
      assert.throws(() => planLayers(strategy, ok, 1.5), RangeError);
      assert.throws(() => planLayers(strategy, missing, 5), NixociError);
      assert.throws(() => planLayers(strategy, cycle, 5), /cycle/);
      assert.throws(() => planLayers(strategy, strayRoot, 5), NixociError);
    }
    assert.throws(() => planLayers("bogus" as LayeringStrategy, ok, 5), NixociError);
  });

  // Large and deep inputs (how long planning them takes is measured in bench/layers.ts).
  test("5,000 paths: random, a chain and a diamond ladder are planned completely", () => {
    for (const { input, limits } of largeGraphs()) {
      for (const strategy of STRATEGIES) {
        for (const limit of limits) checkPlan(planLayers(strategy, input, limit), input, limit);
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------------------
// One package changes: it and everything that depends on it get new store paths (new hashes, same names).
// Size-first only depends on sizes, shape and names, so every layer without a changed path must come out
// byte-for-byte the same; those are the layers a registry or a runtime already has.

function changePackage(
  g: RandomGraph,
  leaf: number,
  newSize?: number,
): { changed: RandomGraph; affected: Set<string>; renamed: Set<string> } {
  const users: number[][] = g.paths.map(() => []);
  g.refs.forEach((refs, i) => refs.forEach((j) => users[j].push(i)));
  const affected = new Set<number>([leaf]);
  const todo = [leaf];
  while (todo.length) {
    for (const u of users[todo.pop()!]) {
      if (!affected.has(u)) {
        affected.add(u);
        todo.push(u);
      }
    }
  }
  const paths = g.paths.map((p, i) => {
    if (!affected.has(i)) return p;
    const base = p.slice("/nix/store/".length);
    return storePath(base.slice(33), `changed ${base}`);
  });
  const sizes = g.sizes.map((s, i) => (i === leaf && newSize !== undefined ? newSize : s));
  return {
    changed: { ...g, paths, sizes },
    affected: new Set([...affected].map((i) => g.paths[i])),
    renamed: new Set([...affected].map((i) => paths[i])),
  };
}

/** NAR bytes in the layers of `b` that `a` does not have: what a push or pull of `b` transfers. */
function newBytes(a: PlannedLayer[], b: PlannedLayer[], sizes: Map<string, number>): number {
  const inA = new Set(a.map((l) => l.paths.join("\n")));
  const fresh = b.filter((l) => !inA.has(l.paths.join("\n")));
  return fresh.reduce((sum, l) => sum + l.paths.reduce((s, p) => s + sizes.get(p)!, 0), 0);
}

/** How many layers of `a` with no affected path appear unchanged in `b`, out of how many. */
function keptLayers(a: PlannedLayer[], b: PlannedLayer[], affected: Set<string>): [kept: number, of: number] {
  const inB = new Set(b.map((l) => l.paths.join("\n")));
  const untouched = a.filter((l) => !l.paths.some((p) => affected.has(p)));
  return [untouched.filter((l) => inB.has(l.paths.join("\n"))).length, untouched.length];
}

describe("size-first: one changed package", () => {
  const leaves = (g: RandomGraph) => g.refs.flatMap((r, i) => (r.length === 0 ? [i] : []));

  test("new hashes: every layer without a changed path is identical", () => {
    for (const seed of [201, 202, 203, 204, 205]) {
      const g = randomGraph(seed, 1000, { distinctSizes: true });
      const leaf = leaves(g)[seed % leaves(g).length];
      const { changed, affected, renamed } = changePackage(g, leaf);
      const before = planSizeFirst(toInput(g), 99);
      const after = planSizeFirst(toInput(changed), 99);
      assert.equal(after.length, before.length);
      const [kept, of] = keptLayers(before, after, affected);
      assert.equal(kept, of, `seed ${seed}: ${of - kept} untouched layers changed`);
      assert.ok(of > 0);
      // And the other way round: no untouched layer of the new plan is new.
      const [keptBack, ofBack] = keptLayers(after, before, renamed);
      assert.equal(keptBack, ofBack);
      console.log(`seed ${seed}: ${affected.size} changed paths, ${of} of ${before.length} layers untouched`);
    }
  });

  test("new hashes and a new size: most layers are still identical", () => {
    let kept = 0;
    let of = 0;
    const transferred = { size: 0, popularity: 0, nixery: 0 };
    let total = 0;
    for (const seed of [211, 212, 213, 214, 215, 216]) {
      const g = randomGraph(seed, 1500);
      const leaf = leaves(g)[(seed * 7) % leaves(g).length];
      const { changed, affected } = changePackage(g, leaf, Math.round(g.sizes[leaf] * 1.03) + 1);
      const before = planSizeFirst(toInput(g), 99);
      const after = planSizeFirst(toInput(changed), 99);
      const [k, o] = keptLayers(before, after, affected);
      console.log(`seed ${seed}: ${affected.size} changed paths, ${k}/${o} untouched layers reused`);
      kept += k;
      of += o;
      const sizes = new Map(changed.paths.map((p, i) => [p, changed.sizes[i]]));
      total += changed.sizes.reduce((a, b) => a + b, 0);
      for (const strategy of STRATEGIES) {
        const b = planLayers(strategy, toInput(g), 99);
        const a = planLayers(strategy, toInput(changed), 99);
        transferred[strategy] += newBytes(b, a, sizes);
      }
    }
    assert.ok(kept >= 0.8 * of, `only ${kept} of ${of} untouched layers reused`);
    const share = (x: number) => `${((100 * x) / total).toFixed(1)}%`;
    console.log(
      `bytes transferred after the change: size-first ${share(transferred.size)}, ` +
        `popularity ${share(transferred.popularity)}, nixery ${share(transferred.nixery)}`,
    );
    assert.ok(transferred.size < transferred.popularity);
  });
});
