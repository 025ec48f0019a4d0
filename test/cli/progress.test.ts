// The wording helpers of the CLI's feedback: sizes, durations, plurals, and a status line cut to a terminal's width.
import { test } from "node:test";
import assert from "node:assert/strict";
import { fitWidth, formatBytes, formatDuration, plural } from "../../src/cli/progress.js";

test("sizes in binary units, one decimal above bytes", () => {
  assert.deepEqual(
    [0, 1023, 1024, 1536, 48.1 * 1024 * 1024, 3 * 1024 ** 4, 2048 * 1024 ** 4].map(formatBytes),
    ["0 B", "1023 B", "1.0 KiB", "1.5 KiB", "48.1 MiB", "3.0 TiB", "2048.0 TiB"],
  );
});

test("durations: tenths of seconds under a minute, then minutes and seconds", () => {
  assert.deepEqual([0, 49, 50, 3240, 59_949, 59_950, 60_000, 125_400, 3_600_000].map(formatDuration), [
    "0.0 s",
    "0.0 s",
    "0.1 s",
    "3.2 s",
    "59.9 s",
    "1 min 00 s",
    "1 min 00 s",
    "2 min 05 s",
    "60 min 00 s",
  ]);
});

test("plurals: 1 store path, 0 and 2 store paths", () => {
  assert.deepEqual(
    [0, 1, 2].map((n) => plural(n, "store path")),
    ["0 store paths", "1 store path", "2 store paths"],
  );
});

test("a status line fits the terminal with its last column free; no width known, it stays whole", () => {
  const line = "[3/12 layers] 12.4 MiB/48.1 MiB";
  assert.equal(fitWidth(line, 80), line);
  assert.equal(fitWidth(line, line.length + 1), line);
  assert.equal(fitWidth(line, line.length), `${line.slice(0, line.length - 2)}…`);
  assert.equal(fitWidth(line, 10), "[3/12 la…");
  assert.equal(fitWidth(line, 0), line);
  assert.equal(fitWidth(line, undefined), line);
  assert.equal(fitWidth(line, 2), "");
});
