// Layering inputs for tests and benchmarks: small graphs written out by name, seeded random graphs shaped like
// closures (many users of a few deep libraries, name collisions, equal sizes, self references), and three large
// inputs of 5,000 paths (random, a chain, a diamond ladder).
import { createHash } from "node:crypto";
import type { LayeringInput } from "../../src/image/layering.js";
import { Hash } from "../../src/nix/hash.js";
import type { PathInfo } from "../../src/store/path-info.js";

const NIX32 = "0123456789abcdfghijklmnpqrsvwxyz";
/** A store path for `name` whose hash part comes from `seed`, so path order and name order disagree. */
export function storePath(name: string, seed = name): string {
  const digest = createHash("sha256").update(seed).digest();
  let hash = "";
  for (let i = 0; i < 32; i++) hash += NIX32[digest[i] % 32];
  return `/nix/store/${hash}-${name}`;
}

/** A PathInfo with a made-up NAR hash; references sorted. */
function info(path: string, narSize: number, references: string[]): PathInfo {
  return { path, narHash: Hash.of("sha256", path), narSize, references: [...references].sort(), sigs: [] };
}

/**
 * A graph from `name: [narSize, [references...]]`; every path also refers to itself, as most do. `salt`
 * changes every hash part (and so the path order) without changing names.
 */
export function graph(spec: Record<string, [number, string[]]>, roots: string[], salt = ""): LayeringInput {
  const sp = (name: string) => storePath(name, name + salt);
  const infos = new Map<string, PathInfo>();
  for (const [name, [size, refs]] of Object.entries(spec)) {
    infos.set(sp(name), info(sp(name), size, [name, ...refs].map(sp)));
  }
  return { roots: roots.map(sp), infos };
}

function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function shuffle<T>(items: T[], rand: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

const WORDS = [
  "glibc",
  "zlib",
  "openssl",
  "bash",
  "coreutils",
  "python3",
  "perl",
  "ncurses",
  "libffi",
  "gcc-lib",
];

export interface RandomGraph {
  /** Node i's path, size and references (node indices > i). */
  paths: string[];
  sizes: number[];
  refs: number[][];
  roots: number[];
}

export function randomGraph(seed: number, n: number, opts: { distinctSizes?: boolean } = {}): RandomGraph {
  const rand = prng(seed);
  const paths: string[] = [];
  const sizes: number[] = [];
  const refs: number[][] = [];
  const usedSizes = new Set<number>();
  for (let i = 0; i < n; i++) {
    let hash = "";
    for (let k = 0; k < 32; k++) hash += NIX32[Math.floor(rand() * 32)];
    // Few distinct names: many paths share one, as several versions or outputs of a package do.
    const word = WORDS[Math.floor(rand() * WORDS.length)];
    const name = rand() < 0.5 ? word : `${word}-${Math.floor(rand() * (n / 4))}`;
    paths.push(`/nix/store/${hash}-${name}`);
    let size = rand() < 0.1 ? 4096 : Math.round(Math.exp(7 + rand() * 12));
    if (opts.distinctSizes) while (usedSizes.has(size)) size++;
    usedSizes.add(size);
    sizes.push(size);
    const out = new Set<number>();
    const count = i === n - 1 ? 0 : Math.floor(rand() * rand() * 8);
    for (let k = 0; k < count; k++) {
      // Biased towards the end, where the widely used base libraries live.
      out.add(n - 1 - Math.floor((n - i - 1) * rand() * rand()));
    }
    refs.push([...out].sort((a, b) => a - b));
  }
  // Like a closure: a few top-level packages, everything else used by something earlier.
  const used = new Uint8Array(n);
  refs.forEach((r) => r.forEach((j) => (used[j] = 1)));
  const top = Math.max(2, Math.floor(n / 100));
  for (let i = top; i < n; i++) {
    if (!used[i]) {
      const user = Math.floor(rand() * i);
      refs[user] = [...refs[user], i].sort((a, b) => a - b);
    }
  }
  const roots = [];
  for (let i = 0; i < n; i++) if (i < top || rand() < 0.01) roots.push(i);
  return { paths, sizes, refs, roots };
}

/** The graph as a LayeringInput; `seed` shuffles insertion and reference order (0: natural order). */
export function toInput(g: RandomGraph, seed = 0): LayeringInput {
  const rand = prng(seed);
  const order = seed
    ? shuffle(
        g.paths.map((_, i) => i),
        rand,
      )
    : g.paths.map((_, i) => i);
  const infos = new Map<string, PathInfo>();
  for (const i of order) {
    const refs = g.refs[i].map((j) => g.paths[j]);
    if (i % 2 === 0) refs.push(g.paths[i]); // self reference
    const p = info(g.paths[i], g.sizes[i], refs);
    if (seed) p.references = shuffle(p.references, rand);
    infos.set(g.paths[i], p);
  }
  const roots = g.roots.map((i) => g.paths[i]);
  return { roots: seed ? shuffle(roots, rand) : roots, infos };
}

/** Three inputs of 5,000 paths and the layer limits to plan them with. */
export function largeGraphs(): { kind: string; input: LayeringInput; limits: number[] }[] {
  const chain: Record<string, [number, string[]]> = {};
  const ladder: Record<string, [number, string[]]> = {};
  for (let i = 0; i < 5000; i++) {
    chain[`c${i}`] = [1000 + ((i * 7919) % 5000), i < 4999 ? [`c${i + 1}`] : []];
  }
  // 1,666 diamonds stacked, every rung also using the bottom: deep, with a wide bottom.
  for (let r = 0; r < 1666; r++) {
    ladder[`n${r}`] = [r + 1, [`a${r}`, `b${r}`, "n1666"]];
    ladder[`a${r}`] = [2 * r + 1, [`n${r + 1}`]];
    ladder[`b${r}`] = [3 * r + 1, [`n${r + 1}`]];
  }
  ladder["n1666"] = [1, []];
  return [
    { kind: "random", input: toInput(randomGraph(4242, 5000)), limits: [99, 1000, 5000] },
    { kind: "chain", input: graph(chain, ["c0"]), limits: [99, 1000, 5000] },
    // The ladder has 2^1666 routes to its bottom: popularity sums need BigInts there, which is slow.
    { kind: "diamond ladder", input: graph(ladder, ["n0"]), limits: [99] },
  ];
}
