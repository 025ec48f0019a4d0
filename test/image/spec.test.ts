// Spec documents (spec.ts): an unknown key is named with the documented key it is closest to.
import { test } from "node:test";
import assert from "node:assert/strict";
import { specFromObject } from "../../src/image/spec.js";
import { NixociError } from "../../src/util/errors.js";

test("an unknown key suggests the documented spelling, not an alias", () => {
  for (const [key, want] of [
    ["tagz", "tags"],
    ["entrypiont", "entrypoint"],
    ["substituter", "substituters"],
    ["maxLayer", "maxLayers"],
  ] as const)
    assert.throws(
      () => specFromObject({ [key]: 1 }, "s.yaml"),
      (e: unknown) =>
        e instanceof NixociError && e.message === `s.yaml: unknown key "${key}" (did you mean ${want}?)`,
      key,
    );
  assert.throws(
    () => specFromObject({ zzzzzz: 1 }, "s.yaml"),
    /^NixociError: s\.yaml: unknown key "zzzzzz"$/,
  );
});

test("env as a mapping: strings, numbers and booleans as spelled; null, lists and mappings refused by name", () => {
  assert.deepEqual(specFromObject({ env: { A: "x", B: 1, C: true } }, "s.yaml").env, [
    "A=x",
    "B=1",
    "C=true",
  ]);
  for (const [value, got] of [
    [null, "null"],
    [[1], "a list"],
    [{ x: 1 }, "object"],
  ] as const)
    assert.throws(
      () => specFromObject({ env: { D: value } }, "s.yaml"),
      (e: unknown) =>
        e instanceof NixociError &&
        e.message === `s.yaml: env "D": expected a string, number or boolean, got ${got}`,
    );
});
