// Properties of layer planning on generated closures: every path in exactly one layer, no empty layer, within the
// limit, and the same plan whatever order the closure's paths and references arrive in.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { planLayers } from "../../src/image/layering.js";
import type { LayeringStrategy } from "../../src/image/types.js";
import { FUZZ_RUNS } from "../support/fuzz.js";
import { randomGraph, toInput } from "../support/layering-graphs.js";

test("property: plans cover the closure exactly once, within the limit, independent of input order", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 1 << 30 }),
      fc.integer({ min: 1, max: 120 }),
      fc.constantFrom<LayeringStrategy>("size", "popularity", "nixery"),
      fc.integer({ min: 1, max: 130 }),
      fc.integer({ min: 1, max: 1 << 30 }),
      (seed, n, strategy, limit, shuffleSeed) => {
        const g = randomGraph(seed, n);
        const plan = planLayers(strategy, toInput(g), limit);
        assert.ok(plan.length >= 1 && plan.length <= limit, `${plan.length} layers for limit ${limit}`);
        const seen = plan.flatMap((l) => {
          assert.ok(l.paths.length > 0, "an empty layer");
          assert.deepEqual(l.paths, [...l.paths].sort(), "paths in a layer are sorted");
          return l.paths;
        });
        assert.deepEqual([...seen].sort(), [...g.paths].sort(), "every closure path exactly once");
        assert.deepEqual(
          planLayers(strategy, toInput(g, shuffleSeed), limit),
          plan,
          "the same plan in any order",
        );
      },
    ),
    { numRuns: FUZZ_RUNS },
  );
});
