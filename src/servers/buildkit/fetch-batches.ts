// Which fetch step makes each layer. A fetch step (one ExecOp, one container start) makes a batch of layers, and
// BuildKit caches a step by its exact arguments: the same batch of layers is a cache hit, any other batch runs.
// So batches are chosen to be what ran before wherever they can be:
//
//   - the batches earlier builds ran are kept in a ledger (a directory in a BuildKit cache mount, so it lives and
//     goes with BuildKit's own cache), one small JSON file per batch;
//   - a planned layer found in a recorded batch is made by that batch's step again, verbatim, even where the batch
//     also holds layers this build no longer has: the step is a cache hit and runs nothing; it is greedy, the
//     record covering the most layers still unplaced first;
//   - the remaining (new) layers are split into at most `maxNew` new batches balanced by NAR size (one each when
//     there are no more than that), and recorded.
//
// After one package changed, exactly the steps of the changed layers run; a cold build runs `maxNew` steps,
// however many layers there are. A record whose step BuildKit has since pruned makes that step run again, its
// extra layers included (more work, still correct); records are kept while used and for RETAIN_MS after.
import { createHash } from "node:crypto";
import {
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { tempSuffix } from "../../util/fs.js";

/**
 * What one fetch or copy step writes: store paths straight under OUT (one layer), or several layers each under
 * OUT/<dir> (a batch of layers made by one step: one container start instead of one per layer).
 */
export interface StepLayer {
  /** The layer's directory under OUT ("" for OUT itself). */
  dir: string;
  paths: string[];
}

export interface PlannedLayer {
  /** layerDir(paths): the layer's directory name in its step. */
  dir: string;
  paths: string[];
  narSize: number;
}

/** A batch as recorded: the exact layers (and order) of a fetch step that ran, under a scope. */
export interface BatchRecord {
  /** The file's name in the ledger (a hash of its contents). */
  name: string;
  layers: StepLayer[];
  /** Last used (ms since the epoch): the least recently used records go first. */
  usedMs: number;
}

export interface ChosenBatch {
  layers: StepLayer[];
  /** The record this batch repeats; undefined for a new batch. */
  reused?: string;
}

/**
 * New fetch steps at most per build (build-arg fetch-batches), by default: one per core of the builder (the plan
 * step runs there), at least two. Each step is one process doing its layers' work on one core, and every step
 * costs a container start and its snapshots' mounts, so more steps than cores only add that cost.
 */
export function defaultFetchBatches(): number {
  return Math.max(2, availableParallelism());
}

/** Records unused this long are dropped. */
export const RETAIN_MS = 30 * 24 * 3600 * 1000;
/** At most this many records are kept per scope (least recently used dropped first). */
export const MAX_RECORDS = 1000;

/**
 * Batches for `planned` layers: recorded batches holding them first, then at most `maxNew` new ones, balanced by
 * NAR size. Deterministic for the same inputs. Every planned layer is in exactly one batch.
 */
export function chooseBatches(
  planned: readonly PlannedLayer[],
  known: readonly BatchRecord[],
  maxNew: number,
): ChosenBatch[] {
  const wanted = new Map(planned.map((l) => [l.dir, l]));
  const placed = new Set<string>();
  const chosen: ChosenBatch[] = [];
  // A record is usable only where each of its layers still has the same paths as planned (a layer's dir names
  // its paths, so that holds unless a record was edited by hand).
  const usable = known
    .filter((r) => r.layers.every((l) => !wanted.has(l.dir) || samePaths(wanted.get(l.dir)!.paths, l.paths)))
    .sort((a, b) => b.usedMs - a.usedMs || (a.name < b.name ? -1 : 1));
  for (;;) {
    let best: BatchRecord | undefined;
    let bestCount = 0;
    for (const r of usable) {
      const n = r.layers.filter((l) => wanted.has(l.dir) && !placed.has(l.dir)).length;
      if (n > bestCount) [best, bestCount] = [r, n];
    }
    if (!best) break;
    for (const l of best.layers) if (wanted.has(l.dir)) placed.add(l.dir);
    chosen.push({ layers: best.layers, reused: best.name });
  }
  const fresh = planned.filter((l) => !placed.has(l.dir));
  for (const layers of balance(fresh, Math.max(1, maxNew)))
    chosen.push({ layers: layers.map((l) => ({ dir: l.dir, paths: l.paths })) });
  return chosen;
}

function samePaths(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && [...a].sort().join("\n") === [...b].sort().join("\n");
}

/**
 * `layers` in at most `n` groups of about equal NAR size (largest first into the lightest group), each ordered by
 * directory name; a group each when there are no more layers than groups.
 */
function balance(layers: readonly PlannedLayer[], n: number): PlannedLayer[][] {
  if (layers.length <= n) return layers.map((l) => [l]);
  const groups = Array.from({ length: n }, () => ({ size: 0, layers: [] as PlannedLayer[] }));
  const bySize = [...layers].sort((a, b) => b.narSize - a.narSize || (a.dir < b.dir ? -1 : 1));
  for (const l of bySize) {
    const lightest = groups.reduce((min, g) => (g.size < min.size ? g : min));
    lightest.size += l.narSize;
    lightest.layers.push(l);
  }
  return groups.map((g) => g.layers.sort((a, b) => (a.dir < b.dir ? -1 : 1)));
}

const RECORD_NAME = /^[0-9a-f]{64}\.json$/;

/** A scope's directory in the ledger: records are only ever matched against steps of the same kind and sources. */
function scopeDir(ledger: string, scope: string): string {
  return join(ledger, createHash("sha256").update(scope).digest("hex").slice(0, 32));
}

/** The records of `scope` (unreadable or malformed files are skipped: the ledger is a cache, never trusted). */
export function readLedger(ledger: string, scope: string): BatchRecord[] {
  const dir = scopeDir(ledger, scope);
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => RECORD_NAME.test(n));
  } catch {
    return [];
  }
  const out: BatchRecord[] = [];
  for (const name of names) {
    try {
      const file = join(dir, name);
      const doc = JSON.parse(readFileSync(file, "utf8")) as { layers?: unknown };
      if (!Array.isArray(doc.layers) || !doc.layers.every(isStepLayer)) continue;
      out.push({ name, layers: doc.layers, usedMs: statSync(file).mtimeMs });
    } catch {
      // skipped
    }
  }
  return out;
}

function isStepLayer(l: unknown): l is StepLayer {
  const x = l as StepLayer;
  return (
    typeof x === "object" &&
    x !== null &&
    typeof x.dir === "string" &&
    /^[0-9a-f]{1,64}$/.test(x.dir) &&
    Array.isArray(x.paths) &&
    x.paths.length > 0 &&
    x.paths.every((p) => typeof p === "string" && p.startsWith("/"))
  );
}

/**
 * Records this build's batches under `scope` (new ones written whole, under a temporary name first; reused ones
 * marked used now), then drops records unused for RETAIN_MS and the least recently used beyond MAX_RECORDS.
 * Returns each batch's record name.
 */
export function recordBatches(
  ledger: string,
  scope: string,
  batches: readonly ChosenBatch[],
  now = Date.now(),
): string[] {
  const dir = scopeDir(ledger, scope);
  mkdirSync(dir, { recursive: true });
  const names = batches.map((b) => {
    const text = JSON.stringify({ layers: b.layers });
    const name = b.reused ?? `${createHash("sha256").update(text).digest("hex")}.json`;
    const file = join(dir, name);
    try {
      utimesSync(file, now / 1000, now / 1000);
    } catch {
      const tmp = `${file}${tempSuffix()}`; // pid 1 in every step's container: a random part too
      writeFileSync(tmp, text);
      renameSync(tmp, file);
    }
    return name;
  });
  const records = readLedger(ledger, scope).sort((a, b) => b.usedMs - a.usedMs);
  records.forEach((r, i) => {
    if (i >= MAX_RECORDS || now - r.usedMs > RETAIN_MS) rmSync(join(dir, r.name), { force: true });
  });
  return names;
}
