// ISA-L's igzip for tests: its path (a test fails, never skips, when the install step has not put it there) and
// its own output for some bytes, the reference the layers' bytes are compared with.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { findOnPath } from "../../src/util/tool-versions.js";

export function igzipPath(): string {
  const p = findOnPath("igzip");
  assert.ok(p, "igzip is not installed: run scripts/install-runtime-deps.sh (the isal package)");
  return p;
}

/** `igzip ARGS` with `input` on stdin: its stdout (the test fails on a non-zero exit). */
export function runIgzip(args: string[], input: Buffer): Buffer {
  const r = spawnSync(igzipPath(), args, { input, maxBuffer: 1 << 30 });
  assert.equal(r.status, 0, r.stderr?.toString());
  return r.stdout;
}
