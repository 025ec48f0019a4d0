// Layer benchmark: planning layers for large closures, and building one layer blob in this process.
//
//   1. planLayers (size, popularity, nixery) on three made-up inputs of about 5,000 paths
//      (test/support/layering-graphs.ts largeGraphs: a random closure-like graph, a 5,000-deep chain, and a
//      ladder of 1,666 stacked diamonds whose rungs all also use the bottom), at layer limits 99, 1000 and
//      5000 (the ladder at 99 only: its 2^1666 routes make popularity's route counts BigInts, which is slow).
//   2. One layer of the whole bench closure (bench/fixtures/closure.nix `top`, the closure bench/build.ts uses;
//      built with nix-build once, kept under os.tmpdir()/nixoci-bench-closure): storePathsTar alone (read and
//      counted), buildLayerBlob with none / gzip / zstd into a fresh blob store, against GNU
//      `tar -c --sort=name` piped through cat and through `gzip -6` (to /dev/null). Best of RUNS, with MB/s of
//      tar bytes and the ratio to tar | gzip -6.
// Nothing about time is asserted; each plan is checked for coverage and its limit (a wrong plan throws).
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { buildLayerBlob } from "../src/image/layer-builder.js";
import { storePathsTar } from "../src/image/layer-tar.js";
import { planLayers } from "../src/image/layering.js";
import type { LayeringStrategy } from "../src/image/types.js";
import { BlobStore } from "../src/oci/blob-store.js";
import { largeGraphs } from "../test/support/layering-graphs.js";
import { median, nixBuild } from "./common.js";

const RUNS = Number(process.env.NIXOCI_BENCH_LAYERS_RUNS) || 3;
const CLOSURE_NIX = fileURLToPath(new URL("../../bench/fixtures/closure.nix", import.meta.url));
const STRATEGIES: LayeringStrategy[] = ["size", "popularity", "nixery"];

function benchPlanning(): void {
  console.log(`\n1. planLayers on about 5,000 paths: median of ${RUNS} (ms)`);
  console.log(
    "input".padEnd(28) +
      "strategy".padEnd(12) +
      "limit".padStart(6) +
      "layers".padStart(8) +
      "ms".padStart(9),
  );
  for (const { kind, input, limits } of largeGraphs()) {
    for (const strategy of STRATEGIES) {
      for (const limit of limits) {
        const times: number[] = [];
        let layers = 0;
        for (let i = 0; i < RUNS; i++) {
          const t0 = performance.now();
          const plan = planLayers(strategy, input, limit);
          times.push(performance.now() - t0);
          layers = plan.length;
          const covered = plan.reduce((n, l) => n + l.paths.length, 0);
          if (plan.length > limit || covered !== input.infos.size)
            throw new Error(`${kind}/${strategy}/${limit}: ${plan.length} layers covering ${covered} paths`);
        }
        console.log(
          `${kind}, ${input.infos.size} paths`.padEnd(28) +
            strategy.padEnd(12) +
            String(limit).padStart(6) +
            String(layers).padStart(8) +
            median(times).toFixed(0).padStart(9),
        );
      }
    }
  }
}

async function best(f: () => Promise<unknown> | unknown): Promise<number> {
  let b = Infinity;
  for (let i = 0; i < RUNS; i++) {
    const t0 = performance.now();
    await f();
    b = Math.min(b, performance.now() - t0);
  }
  return b;
}

async function benchLayerBlob(): Promise<void> {
  const rootsDir = join(tmpdir(), "nixoci-bench-closure"); // shared with bench/build.ts
  fs.mkdirSync(rootsDir, { recursive: true });
  const top = nixBuild(CLOSURE_NIX, "top", join(rootsDir, "top"));
  const paths = execFileSync("nix-store", ["--query", "--requisites", top])
    .toString()
    .split("\n")
    .filter(Boolean);
  const inStore = () => paths.map((p) => ({ storePath: p, realPath: p }));
  const work = fs.mkdtempSync(join(tmpdir(), "nixoci-bench-layers-"));
  try {
    let size = 0;
    const rows: [string, number][] = [];
    rows.push([
      "storePathsTar only",
      await best(async () => {
        size = 0;
        for await (const chunk of storePathsTar(inStore())) size += (chunk as Buffer).length;
      }),
    ]);
    let n = 0;
    for (const compression of ["none", "gzip", "zstd"] as const) {
      rows.push([
        `buildLayerBlob ${compression}`,
        await best(async () => {
          const blobs = new BlobStore(join(work, `store-${n++}`));
          await buildLayerBlob(storePathsTar(inStore()), { compression, blobs });
          fs.rmSync(blobs.root, { recursive: true, force: true });
        }),
      ]);
    }
    const rel = paths.map((p) => p.slice(1));
    const bash = (script: string) => () =>
      execFileSync("bash", ["-c", script, "bash", ...rel], { stdio: ["ignore", "ignore", "inherit"] });
    // (Through cat: GNU tar writing to /dev/null itself skips reading the files.)
    rows.push([
      "GNU tar --sort=name | cat",
      await best(bash('tar -c --sort=name -C / "$@" | cat > /dev/null')),
    ]);
    rows.push([
      "GNU tar --sort=name | gzip -6",
      await best(bash('tar -c --sort=name -C / "$@" | gzip -6 > /dev/null')),
    ]);
    console.log(
      `\n2. one layer of the bench closure (${paths.length} store paths, tar ${(size / 1e6).toFixed(0)} MB): ` +
        `best of ${RUNS}`,
    );
    const gzipMs = rows.find(([what]) => what === "GNU tar --sort=name | gzip -6")![1];
    for (const [what, ms] of rows) {
      console.log(
        what.padEnd(34) +
          `${(ms / 1000).toFixed(2)} s`.padStart(9) +
          `${(size / ms / 1000).toFixed(0)} MB/s`.padStart(11) +
          `${(ms / gzipMs).toFixed(2)}x tar | gzip -6`.padStart(22),
      );
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

export async function benchLayers(): Promise<void> {
  benchPlanning();
  await benchLayerBlob();
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await benchLayers();
