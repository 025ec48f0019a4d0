// Fuzzing with fast-check: generated and mutated inputs driven through one target at scale, plus the saved
// regression corpus. (A coverage-guided engine was tried first: @jazzer.js/core 4's native fuzzer needs glibc 2.38,
// Debian 12 has 2.36, and 2.x downloads its binary at install; so inputs are generated, not coverage-guided.)
//
// Budget, per target: NIXOCI_FUZZ_RUNS generated inputs (default 300: the short run `npm test` does) within
// NIXOCI_FUZZ_SECONDS (default 20); `npm run fuzz` raises both. A failing input is written to
// test/fuzz/corpus/<target>/<sha256>.bin (in the source tree) and replayed by every later run, before anything new.
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import fc from "fast-check";
import { findRoot } from "./fixtures.js";

export const FUZZ_RUNS = Number(process.env.NIXOCI_FUZZ_RUNS ?? 300);
export const FUZZ_MS = Number(process.env.NIXOCI_FUZZ_SECONDS ?? 20) * 1000;
const CORPUS = join(findRoot(), "test/fuzz/corpus");

/** The saved inputs of a target (its regression corpus), oldest name order. */
export function corpus(target: string): Buffer[] {
  const dir = join(CORPUS, target);
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith(".bin"));
  } catch {
    return [];
  }
  return names.sort().map((n) => readFileSync(join(dir, n)));
}

function save(target: string, input: Buffer): string {
  const dir = join(CORPUS, target);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${createHash("sha256").update(input).digest("hex").slice(0, 16)}.bin`);
  writeFileSync(`${file}.tmp-${process.pid}`, input);
  renameSync(`${file}.tmp-${process.pid}`, file);
  return file;
}

/**
 * Runs `check` on every corpus input of `target`, then on generated inputs (shrunk to a small failing one when
 * one fails, which is then saved to the corpus). `check` must throw (or reject) only for a real defect: the
 * expected rejection of a bad input is for it to catch and verify.
 */
export async function fuzz(
  target: string,
  inputs: fc.Arbitrary<Uint8Array>,
  check: (input: Buffer) => Promise<void> | void,
  opts: { runs?: number } = {},
): Promise<void> {
  for (const input of corpus(target)) await check(input);
  const result = await fc.check(
    fc.asyncProperty(inputs, async (bytes) => {
      await check(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    }),
    { numRuns: opts.runs ?? FUZZ_RUNS, interruptAfterTimeLimit: FUZZ_MS, markInterruptAsFailure: false },
  );
  if (!result.failed) return;
  const [bytes] = result.counterexample ?? [];
  const file = bytes ? save(target, Buffer.from(bytes)) : "(no counterexample)";
  throw new Error(
    `fuzz target ${target}: ${String(result.errorInstance ?? "failed")} (input saved as ${file}; seed ${result.seed})`,
    { cause: result.errorInstance },
  );
}

/**
 * Inputs near the valid ones: a seed (a valid input) with a few mutations — bytes flipped, replaced or inserted,
 * ranges deleted or repeated, the end cut off, a little-endian 64-bit field (as NAR lengths are) set to an odd
 * value — or, now and then, random bytes.
 */
export function mutated(seeds: readonly Buffer[]): fc.Arbitrary<Uint8Array> {
  const op = fc.oneof(
    fc.record({ kind: fc.constant("flip" as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
    fc.record({ kind: fc.constant("set" as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
    fc.record({
      kind: fc.constant("insert" as const),
      at: fc.nat(),
      bytes: fc.uint8Array({ maxLength: 16 }),
    }),
    fc.record({
      kind: fc.constant("delete" as const),
      at: fc.nat(),
      length: fc.integer({ min: 1, max: 64 }),
    }),
    fc.record({
      kind: fc.constant("repeat" as const),
      at: fc.nat(),
      length: fc.integer({ min: 1, max: 64 }),
    }),
    fc.record({ kind: fc.constant("truncate" as const), at: fc.nat() }),
    fc.record({
      kind: fc.constant("u64" as const),
      at: fc.nat(),
      value: fc.oneof(fc.bigInt({ min: 0n, max: 64n }), fc.bigInt({ min: 0n, max: (1n << 64n) - 1n })),
    }),
  );
  const fromSeed = fc
    .tuple(fc.integer({ min: 0, max: seeds.length - 1 }), fc.array(op, { minLength: 1, maxLength: 4 }))
    .map(([i, ops]) => {
      let b = Buffer.from(seeds[i]);
      for (const o of ops) {
        const at = b.length ? o.at % (b.length + 1) : 0;
        switch (o.kind) {
          case "flip":
            if (at < b.length) b[at] ^= 1 << o.bit;
            break;
          case "set":
            if (at < b.length) b[at] = o.value;
            break;
          case "insert":
            b = Buffer.concat([b.subarray(0, at), o.bytes, b.subarray(at)]);
            break;
          case "delete":
            b = Buffer.concat([b.subarray(0, at), b.subarray(at + o.length)]);
            break;
          case "repeat":
            b = Buffer.concat([b.subarray(0, at + o.length), b.subarray(at)]);
            break;
          case "truncate":
            b = b.subarray(0, at);
            break;
          case "u64": {
            const pos = at - (at % 8);
            if (pos + 8 <= b.length) b.writeBigUInt64LE(o.value, pos);
            break;
          }
        }
      }
      return new Uint8Array(b);
    });
  return fc.oneof(
    { arbitrary: fromSeed, weight: 9 },
    { arbitrary: fc.uint8Array({ maxLength: 512 }), weight: 1 },
  );
}
