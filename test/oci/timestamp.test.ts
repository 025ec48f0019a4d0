// RFC 3339 times as Go reads them (a config's `created`): impossible dates, out-of-range fields and times without
// a zone are refused, which Date.parse would take (rolling February 30th over to March).
import { test } from "node:test";
import assert from "node:assert/strict";
import { isRfc3339Time } from "../../src/oci/timestamp.js";
import { emptySpec, validateSpec } from "../../src/image/spec.js";

test("RFC 3339 with a zone and calendar-valid fields only", () => {
  for (const ok of [
    "1970-01-01T00:00:01Z",
    "2024-02-29T23:59:59Z",
    "2024-01-01t00:00:00z",
    "2024-06-30T12:00:00.123456789+02:00",
    "2024-06-30T12:00:00-11:30",
  ])
    assert.ok(isRfc3339Time(ok), ok);
  for (const bad of [
    "2024-02-30T00:00:00Z",
    "2023-02-29T00:00:00Z",
    "2024-04-31T00:00:00Z",
    "2024-13-01T00:00:00Z",
    "2024-00-10T00:00:00Z",
    "2024-01-00T00:00:00Z",
    "2024-01-01T24:00:00Z",
    "2024-01-01T23:60:00Z",
    "2024-01-01T23:59:60Z",
    "2024-01-01T00:00:00",
    "2024-01-01T00:00:00+24:00",
    "2024-01-01 00:00:00Z",
    "yesterday",
    "",
  ])
    assert.ok(!isRfc3339Time(bad), bad);
});

test("a spec's impossible date is refused, naming it", () => {
  assert.throws(
    () => validateSpec({ ...emptySpec(), created: "2024-02-30T00:00:00Z" }, "app.yaml"),
    /^NixociError: app\.yaml: created "2024-02-30T00:00:00Z" is not an RFC 3339 time$/,
  );
});
