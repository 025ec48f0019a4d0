// Layering: splits a closure's store paths into at most N layers, bottom layer first. Three strategies, each
// following a peer's published algorithm (see the reference notes, "Layering algorithms of the peers"):
//
//   "size"        nixpkgs' auto-layer (dockerTools' current default): the largest paths become layer owners
//                 one by one; every other path lands in the layer of the set of owners that need it.
//   "popularity"  the popularity contest (older dockerTools, nix2container): the N-1 most popular paths get a
//                 layer each, everything else shares one catch-all layer on top.
//   "nixery"      Nixery's dominator-tree grouping with rating-ordered merging.
//
// Determinism. The result depends only on the graph (paths, sizes, references, roots): never on Map insertion
// order, reference order or sort stability. Two orders are used, both total:
//   - PATH ORDER: plain string comparison of full store paths (`<` on UTF-16 code units, the same as bytewise
//     for store paths, which are ASCII). Paths inside every layer are listed in this order.
//   - NAME ORDER: (name, hash part), then the full path; the peers' tie-break. Used wherever two paths (or
//     layers, through a representative path) have equal sort keys.
// Self references are ignored everywhere. Reference cycles (which Nix forbids) are rejected.
//
// Cost. The transitive dependencies of every path are held as a bitset matrix (n^2/8 bytes: 3 MB for 5,000
// paths), which turns the closure and "is a user of" questions into bit tests and row ORs. Size-first then
// costs, per step, one scan of the step's dependencies plus work per distinct owner set among them; it runs
// about `limit` steps (5,000 paths: well under 100 ms at limit 99; under a second even for a 5,000-deep chain
// at a limit near n). Popularity sums are exact: doubles, redone in BigInt only when route counts pass 2^53
// (a pathological stack of 1,666 diamonds takes about a second).
import type { PathInfo } from "../store/path-info.js";
import { NixociError, quote } from "../util/errors.js";
import type { LayeringStrategy, PlannedLayer } from "./types.js";

export interface LayeringInput {
  /** The requested paths (the image's packages), in the order given by the user. */
  roots: string[];
  /** The closure of roots: every path's metadata, keyed by path. */
  infos: ReadonlyMap<string, PathInfo>;
}

/** Nixery: a path whose closure is larger than this (bytes of NAR) is given its own layer. */
export const NIXERY_SIZE_THRESHOLD = 100 * 1000 * 1000;
/** Nixery: a path at least this popular is given its own layer. */
export const NIXERY_POPULARITY_THRESHOLD = 100n;

/**
 * Plans at most `maxStoreLayers` layers (>= 1) of store paths, bottom layer first. Every closure path appears
 * in exactly one layer; no layer is empty. Paths inside a layer are in plain string (bytewise) order.
 */
export function planLayers(
  strategy: LayeringStrategy,
  input: LayeringInput,
  maxStoreLayers: number,
): PlannedLayer[] {
  switch (strategy) {
    case "size":
      return planSizeFirst(input, maxStoreLayers);
    case "popularity":
      return planPopularity(input, maxStoreLayers);
    case "nixery":
      return planNixery(input, maxStoreLayers);
    default: {
      const never: never = strategy;
      throw new NixociError("layering strategy", `unknown strategy ${quote(String(never))}`);
    }
  }
}

/**
 * nixpkgs auto-layer. Paths are taken by narSize descending (ties in name order); each in turn becomes a
 * "primary" path: it gets the owner set {P}, and every dependency D of P drops the owners that use P and,
 * unless one of its remaining owners is itself a dependency of P, gains P. Paths with the same owner set
 * share a layer. This stops just before the number of distinct owner sets would exceed `limit` (so with
 * at most `limit` paths, every path gets its own layer). Layers are ordered by the NAR size of their
 * closure ascending (ties: the layer whose first path in name order comes first), which puts a layer
 * after the layers it depends on in most cases.
 */
export function planSizeFirst(input: LayeringInput, limit: number): PlannedLayer[] {
  checkLimit(limit);
  const g = buildGraph(input);
  const n = g.n;
  if (n === 0) return [];

  const order = range(n).sort((a, b) => g.size[b] - g.size[a] || g.rank[a] - g.rank[b]);

  // Owner sets are interned: id -> sorted node indices; id 0 is the empty set every path starts with.
  const sets: number[][] = [[]];
  const setIds = new Map<string, number>([["", 0]]);
  const refCount: number[] = [n];
  // Per-iteration memo of "old owner set -> new owner set": within one iteration the update of a path's
  // owner set depends only on that set, so it is computed once per distinct set, not once per path.
  const memoIter: number[] = [-1];
  const memoSet: number[] = [0];
  const memoSlot: number[] = [0];
  const intern = (owners: number[]): number => {
    const key = owners.join(",");
    let id = setIds.get(key);
    if (id === undefined) {
      id = sets.length;
      sets.push(owners);
      setIds.set(key, id);
      refCount.push(0);
      memoIter.push(-1);
      memoSet.push(0);
      memoSlot.push(0);
    }
    return id;
  };

  const split = new Int32Array(n); // path -> owner set id
  let distinct = 1;
  // With no more paths than layers the loop never stops early, and every path ends up the only member of
  // its own owner set (a primary's set {P} never changes again: P never uses a later primary), so the
  // answer is known. Otherwise the loop runs until the limit is hit, usually after about `limit` steps.
  if (n <= limit) split.forEach((_, v) => (split[v] = v));
  for (let iter = 0; iter < n && n > limit; iter++) {
    const p = order[iter];
    const pRow = p * g.words;
    // Pass 1: which owner sets the dependencies of p hold, how many hold each, and what each becomes.
    const seen: number[] = [];
    const holders: number[] = [];
    forEachBit(g.desc, pRow, g.words, (d) => {
      const old = split[d];
      if (memoIter[old] !== iter) {
        // Drop owners that use p (p is among their dependencies); add p unless an owner is a dependency of p.
        // (No owner is both: the graph is acyclic.) Most sets stay as they are; only changed ones are interned.
        const owners = sets[old];
        let users = 0;
        let covered = false;
        for (const o of owners) {
          if (hasBit(g.desc, o * g.words, p)) users++;
          else if (hasBit(g.desc, pRow, o)) covered = true;
        }
        let updated = old;
        if (users > 0 || !covered) {
          const kept = users > 0 ? owners.filter((o) => !hasBit(g.desc, o * g.words, p)) : [...owners];
          if (!covered) {
            let at = kept.length;
            while (at > 0 && kept[at - 1] > p) at--;
            kept.splice(at, 0, p);
          }
          updated = intern(kept);
        }
        memoIter[old] = iter;
        memoSet[old] = updated;
        memoSlot[old] = seen.length;
        seen.push(old);
        holders.push(0);
      }
      holders[memoSlot[old]]++;
    });

    // The number of distinct owner sets after the step, from each set's net change in population.
    const own = intern([p]);
    const net = new Map<number, number>([[split[p], -1]]);
    net.set(own, (net.get(own) ?? 0) + 1);
    seen.forEach((old, i) => {
      const updated = memoSet[old];
      if (updated === old) return;
      net.set(old, (net.get(old) ?? 0) - holders[i]);
      net.set(updated, (net.get(updated) ?? 0) + holders[i]);
    });
    let next = distinct;
    for (const [id, change] of net) {
      const before = refCount[id];
      const after = before + change;
      if (before > 0 && after === 0) next--;
      else if (before === 0 && after > 0) next++;
    }
    if (next > limit) break; // the previous split is the answer

    // Pass 2: apply.
    for (const [id, change] of net) refCount[id] += change;
    split[p] = own;
    forEachBit(g.desc, pRow, g.words, (d) => (split[d] = memoSet[split[d]]));
    distinct = next;
  }

  const groups = new Map<number, number[]>();
  for (let v = 0; v < n; v++) {
    const members = groups.get(split[v]);
    if (members) members.push(v);
    else groups.set(split[v], [v]);
  }
  const layers = [...groups.values()].map((members) => ({
    members,
    closureSize: closureSizeOf(g, members),
    firstRank: members.reduce((min, v) => Math.min(min, g.rank[v]), g.n),
  }));
  layers.sort((a, b) => a.closureSize - b.closureSize || a.firstRank - b.firstRank);
  return layers.map((l) => toLayer(g, l.members));
}

/**
 * The popularity contest. A path's popularity is the number of routes in the reference graph from the graph's
 * roots (the paths nothing refers to) to the path or to any path that uses it; equivalently the sum, over the
 * path and everything above it, of the number of routes reaching that path. Paths are ranked by popularity
 * descending, then name order; with more paths than `limit`, the `limit - 1` most popular get a layer each
 * (most popular at the bottom) and the rest share one catch-all layer on top.
 */
export function planPopularity(input: LayeringInput, limit: number): PlannedLayer[] {
  checkLimit(limit);
  const g = buildGraph(input);
  if (g.n === 0) return [];
  const pop = popularity(g);
  const ranked = range(g.n).sort((a, b) => compareBig(pop[b], pop[a]) || g.rank[a] - g.rank[b]);
  if (ranked.length <= limit) return ranked.map((v) => toLayer(g, [v]));
  const singles = ranked.slice(0, limit - 1).map((v) => toLayer(g, [v]));
  return [...singles, toLayer(g, ranked.slice(limit - 1))];
}

/**
 * Nixery's layering. A virtual root gets edges to the requested paths, to any path nothing refers to, and to
 * every path whose closure is larger than 100 MB or whose popularity (as in the popularity contest, computed
 * within this closure since there is no package-set-wide count here) is at least 100. Each child of the root
 * in the dominator tree, with everything it dominates, forms a layer, rated (child's popularity) x (the
 * layer's NAR size). Layers are sorted by rating ascending (ties: the child in name order). While there are
 * more than `limit`, the first two are merged and the merged layer stays first (Nixery does not re-sort),
 * so the lowest-rated layers end up in one catch-all at the bottom, followed by the others by rating.
 */
export function planNixery(input: LayeringInput, limit: number): PlannedLayer[] {
  checkLimit(limit);
  const g = buildGraph(input);
  const n = g.n;
  if (n === 0) return [];
  const pop = popularity(g);

  const fromRoot = new Uint8Array(n);
  for (const r of g.roots) fromRoot[r] = 1;
  for (let v = 0; v < n; v++) {
    if (g.users[v].length === 0) fromRoot[v] = 1;
    else if (closureSizeOf(g, [v]) > NIXERY_SIZE_THRESHOLD || pop[v] >= NIXERY_POPULARITY_THRESHOLD) {
      fromRoot[v] = 1;
    }
  }

  // Immediate dominators of a DAG: visiting paths users-first, a path's idom is the nearest common
  // ancestor, in the dominator tree built so far, of all its predecessors. Common ancestors by binary lifting.
  const ROOT = n;
  let levels = 1;
  while (1 << levels <= n + 1) levels++;
  const up = Array.from({ length: levels }, () => new Int32Array(n + 1).fill(ROOT));
  const depth = new Int32Array(n + 1);
  const lca = (a: number, b: number): number => {
    if (depth[a] < depth[b]) [a, b] = [b, a];
    for (let k = levels - 1; k >= 0; k--) if (depth[a] - (1 << k) >= depth[b]) a = up[k][a];
    if (a === b) return a;
    for (let k = levels - 1; k >= 0; k--) {
      if (up[k][a] !== up[k][b]) {
        a = up[k][a];
        b = up[k][b];
      }
    }
    return up[0][a];
  };
  const top = new Int32Array(n); // the root's child whose subtree holds the path
  for (const v of g.topo) {
    let idom: number;
    if (fromRoot[v]) {
      idom = ROOT;
    } else {
      idom = g.users[v][0];
      for (let i = 1; i < g.users[v].length && idom !== ROOT; i++) idom = lca(idom, g.users[v][i]);
    }
    up[0][v] = idom;
    for (let k = 1; k < levels; k++) up[k][v] = up[k - 1][up[k - 1][v]];
    depth[v] = depth[idom] + 1;
    top[v] = idom === ROOT ? v : top[idom];
  }

  const groups = new Map<number, number[]>();
  for (let v = 0; v < n; v++) {
    const members = groups.get(top[v]);
    if (members) members.push(v);
    else groups.set(top[v], [v]);
  }
  const layers = [...groups].map(([head, members]) => ({
    head,
    members,
    rating: pop[head] * BigInt(members.reduce((sum, v) => sum + g.size[v], 0)),
  }));
  layers.sort((a, b) => compareBig(a.rating, b.rating) || g.rank[a.head] - g.rank[b.head]);
  if (layers.length <= limit) return layers.map((l) => toLayer(g, l.members));
  const merged = layers.slice(0, layers.length - limit + 1).flatMap((l) => l.members);
  return [merged, ...layers.slice(layers.length - limit + 1).map((l) => l.members)].map((m) => toLayer(g, m));
}

// ---------------------------------------------------------------------------------------------------------
// The graph, indexed: node i is the i-th path in path order, so indices themselves are canonical.

interface Graph {
  n: number;
  /** Node -> store path, in path order. */
  paths: string[];
  /** Node -> narSize. */
  size: number[];
  /** Node -> position in name order. */
  rank: Int32Array;
  /** Node -> distinct direct references, self excluded. */
  refs: number[][];
  /** Node -> distinct direct users, self excluded. */
  users: number[][];
  /** Every node, each after all of its users. */
  topo: number[];
  /** The requested roots, as nodes (duplicates removed). */
  roots: number[];
  /** Words per bitset row. */
  words: number;
  /** n rows of `words` words: row i has bit j set iff j is a (transitive) dependency of i, i != j. */
  desc: Uint32Array;
}

function buildGraph(input: LayeringInput): Graph {
  const paths = [...input.infos.keys()].sort(comparePaths);
  const n = paths.length;
  const index = new Map<string, number>();
  paths.forEach((p, i) => index.set(p, i));

  const size: number[] = [];
  const refs: number[][] = [];
  const users: number[][] = Array.from({ length: n }, () => []);
  for (let v = 0; v < n; v++) {
    const info = input.infos.get(paths[v]) as PathInfo;
    if (!Number.isSafeInteger(info.narSize) || info.narSize < 0) {
      throw new NixociError(paths[v], `invalid narSize ${String(info.narSize)}`);
    }
    size.push(info.narSize);
    const out = new Set<number>();
    for (const ref of info.references) {
      if (ref === paths[v]) continue;
      const r = index.get(ref);
      if (r === undefined) {
        throw new NixociError(
          paths[v],
          `references ${quote(ref)}, which is not in the closure being layered`,
        );
      }
      out.add(r);
    }
    refs.push([...out].sort((a, b) => a - b));
  }
  for (let v = 0; v < n; v++) for (const r of refs[v]) users[r].push(v); // ascending, as v ascends

  const roots: number[] = [];
  for (const root of new Set(input.roots)) {
    const r = index.get(root);
    if (r === undefined) throw new NixociError(root, "requested path is not in the closure being layered");
    roots.push(r);
  }
  roots.sort((a, b) => a - b);

  // Kahn's algorithm: a node is ready once all its users are placed.
  const pending = users.map((u) => u.length);
  const topo: number[] = [];
  for (let v = 0; v < n; v++) if (pending[v] === 0) topo.push(v);
  for (let i = 0; i < topo.length; i++) {
    for (const r of refs[topo[i]]) if (--pending[r] === 0) topo.push(r);
  }
  if (topo.length < n) {
    const stuck = range(n).filter((v) => pending[v] > 0);
    throw new NixociError(
      paths[stuck[0]],
      `reference cycle among ${stuck.length} paths (self references aside, Nix store paths cannot form cycles)`,
    );
  }

  const words = (n + 31) >>> 5;
  const desc = new Uint32Array(n * words);
  for (let i = n - 1; i >= 0; i--) {
    const v = topo[i];
    const row = v * words;
    for (const r of refs[v]) {
      const from = r * words;
      for (let w = 0; w < words; w++) desc[row + w] |= desc[from + w];
      desc[row + (r >>> 5)] |= 1 << (r & 31);
    }
  }

  const rank = new Int32Array(n);
  range(n)
    .sort((a, b) => compareNameOrder(paths[a], paths[b]))
    .forEach((v, i) => (rank[v] = i));

  return { n, paths, size, rank, refs, users, topo, roots, words, desc };
}

/**
 * Popularity of every node (see planPopularity). Route counts grow exponentially with diamonds, so the sums
 * are done in doubles and redone in BigInt when a value leaves the range doubles hold exactly.
 */
function popularity(g: Graph): bigint[] {
  const fast = contest(g, 0, 1, (a, b) => a + b);
  if (fast.every((x) => x <= Number.MAX_SAFE_INTEGER)) return fast.map((x) => BigInt(x));
  return contest(g, 0n, 1n, (a, b) => a + b);
}

function contest<T>(g: Graph, zero: T, one: T, add: (a: T, b: T) => T): T[] {
  const routes: T[] = new Array<T>(g.n).fill(zero);
  for (const v of g.topo) {
    if (g.users[v].length === 0) routes[v] = one;
    for (const r of g.refs[v]) routes[r] = add(routes[r], routes[v]);
  }
  const pop = routes.slice();
  for (let w = 0; w < g.n; w++)
    forEachBit(g.desc, w * g.words, g.words, (x) => (pop[x] = add(pop[x], routes[w])));
  return pop;
}

function closureSizeOf(g: Graph, members: number[]): number {
  const acc = new Uint32Array(g.words);
  for (const v of members) {
    const row = v * g.words;
    for (let w = 0; w < g.words; w++) acc[w] |= g.desc[row + w];
    acc[v >>> 5] |= 1 << (v & 31);
  }
  let total = 0;
  forEachBit(acc, 0, g.words, (v) => (total += g.size[v]));
  return total;
}

function forEachBit(bits: Uint32Array, start: number, words: number, fn: (bit: number) => void): void {
  for (let w = 0; w < words; w++) {
    let word = bits[start + w];
    while (word !== 0) {
      const low = word & -word;
      fn((w << 5) | (31 - Math.clz32(low)));
      word ^= low;
    }
  }
}

function hasBit(bits: Uint32Array, start: number, bit: number): boolean {
  return (bits[start + (bit >>> 5)] & (1 << (bit & 31))) !== 0;
}

/** Members are node indices; ascending indices are path order. */
function toLayer(g: Graph, members: number[]): PlannedLayer {
  return { paths: [...members].sort((a, b) => a - b).map((v) => g.paths[v]) };
}

function checkLimit(limit: number): void {
  if (!Number.isInteger(limit) || limit < 1) {
    throw new RangeError(`the number of store layers must be a positive integer, got ${String(limit)}`);
  }
}

function range(n: number): number[] {
  return Array.from({ length: n }, (_, i) => i);
}

function comparePaths(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function compareBig(a: bigint, b: bigint): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Name order: (name, hash part), then the whole path, for "/<store>/<hash>-<name>". */
function compareNameOrder(a: string, b: string): number {
  const [ha, na] = splitBaseName(a);
  const [hb, nb] = splitBaseName(b);
  return comparePaths(na, nb) || comparePaths(ha, hb) || comparePaths(a, b);
}

function splitBaseName(path: string): [hash: string, name: string] {
  const base = path.slice(path.lastIndexOf("/") + 1);
  const dash = base.indexOf("-");
  return dash < 0 ? [base, ""] : [base.slice(0, dash), base.slice(dash + 1)];
}
