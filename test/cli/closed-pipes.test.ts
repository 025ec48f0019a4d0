// A reader that goes away early: on stdout, a listing ends quietly (status 0, as `| head` expects) but an image
// archive or a NAR cut short is a failed delivery (status 1, one line saying so); on stderr (progress, warnings)
// nothing changes: the work goes on and its product is complete.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { buildFixtures, makeTempDir } from "../support/fixtures.js";
import { ROOT } from "../support/cli.js";

const fx = buildFixtures();
const BIN = join(ROOT, "bin/nixoci.js");

interface Ended {
  status: number | null;
  stderr: string;
}

/** Runs nixoci and closes our end of its stdout after its first bytes. */
function closeStdoutEarly(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Ended> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      stdio: ["ignore", "pipe", "pipe"],
      env: { ...process.env, ...env },
    });
    let stderr = "";
    child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    child.stdout.once("data", () => child.stdout.destroy());
    child.on("error", reject);
    child.on("close", (status) => resolve({ status, stderr }));
  });
}

/** Runs nixoci and closes our end of its stderr after its first bytes; stdout is not read. */
function closeStderrEarly(
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<Ended & { gotStderr: boolean }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, ...env },
    });
    let gotStderr = false;
    child.stderr.once("data", () => {
      gotStderr = true;
      child.stderr.destroy();
    });
    child.on("error", reject);
    child.on("close", (status) => resolve({ status, stderr: "", gotStderr }));
  });
}

test("an image archive on stdout whose reader closes early fails with one line", async () => {
  const cache = makeTempDir("closed-stdout-cache");
  const r = await closeStdoutEarly(["build", "-q", "--cache-dir", cache, fx.big, "-o", "-"]);
  assert.equal(r.status, 1, r.stderr);
  assert.equal(r.stderr, "nixoci: stdout: cannot write the archive: the reader closed the pipe\n");
});

test("a NAR on stdout whose reader closes early fails with one line", async () => {
  const r = await closeStdoutEarly(["nar", "dump", fx.big]);
  assert.equal(r.status, 1, r.stderr);
  assert.equal(r.stderr, "nixoci: stdout: cannot write the NAR: the reader closed the pipe\n");
});

test("a listing on stdout whose reader closes early ends quietly with status 0", async () => {
  const r = await closeStdoutEarly(["closure", fx.all]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, "");
});

test("a build whose stderr reader closes early completes its output", async () => {
  const cache = makeTempDir("closed-stderr-cache");
  const out = join(makeTempDir("closed-stderr-out"), "layout");
  // Progress lines (one per layer when stderr is not a terminal), so stderr is written to after it closed.
  const r = await closeStderrEarly(["build", "--cache-dir", cache, fx.all, "-o", `oci:${out}:x`]);
  assert.ok(r.gotStderr, "the build wrote progress to stderr");
  assert.equal(r.status, 0);
  const index = JSON.parse(readFileSync(join(out, "index.json"), "utf8")) as { manifests: unknown[] };
  assert.equal(index.manifests.length, 1);
  assert.deepEqual(
    readdirSync(join(out, "..")).filter((n) => n !== "layout"),
    [],
    "no temporary beside the layout",
  );
  assert.ok(existsSync(join(out, "oci-layout")));
});

test("output to a full device fails with one line naming stdout, whatever the command", async () => {
  const cache = makeTempDir("full-stdout-cache");
  const layout = join(makeTempDir("full-stdout-out"), "layout");
  for (const [args, line] of [
    [["closure", fx.all], "nixoci: stdout: cannot write: no space left on device\n"],
    [["path-info", "-r", fx.all], "nixoci: stdout: cannot write: no space left on device\n"],
    [["sbom", fx.hello], "nixoci: stdout: cannot write: no space left on device\n"],
    [["nar", "dump", fx.big], "nixoci: stdout: cannot write the NAR: no space left on device\n"],
    // The layout is written; the digest it prints is what is lost.
    [
      ["build", "-q", "--cache-dir", cache, fx.hello, "-o", `oci:${layout}`],
      "nixoci: stdout: cannot write: no space left on device\n",
    ],
  ] as const) {
    const full = openSync("/dev/full", "w");
    try {
      const r = spawnSync(process.execPath, [BIN, ...args], { stdio: ["ignore", full, "pipe"] });
      assert.equal(r.status, 1, `${args.join(" ")}: ${r.stderr}`);
      assert.equal(r.stderr.toString(), line, args.join(" "));
    } finally {
      closeSync(full);
    }
  }
});
