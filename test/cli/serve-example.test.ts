// scripts/serve-example.sh (the README's main job) says where it will listen and where its state goes before it
// installs and builds anything, and again when it starts the server. Run on a copy of the checkout: the script
// builds, and rebuilding this checkout's dist/ would change files other tests are loading.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { cpSync, readFileSync, symlinkSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { ROOT } from "../support/cli.js";
import { freePort } from "../support/daemons.js";
import { makeTempDir } from "../support/fixtures.js";
import { GiveUp, until } from "../support/poll.js";

const COPIED = [
  "package.json",
  "package-lock.json",
  "tsconfig.json",
  "bin",
  "src",
  "test",
  "bench",
  "proto",
  "scripts",
  "examples",
];

test("serve-example.sh prints where it listens and where its state is, first and when the server starts", async () => {
  const dir = makeTempDir("serve-example");
  const checkout = join(dir, "nixoci");
  for (const entry of COPIED) cpSync(join(ROOT, entry), join(checkout, entry), { recursive: true });
  symlinkSync(join(ROOT, "node_modules"), join(checkout, "node_modules"));
  const state = join(dir, "state");
  const listen = `127.0.0.1:${await freePort()}`;
  const child = spawn("bash", [join(checkout, "scripts/serve-example.sh")], {
    env: { ...process.env, LISTEN: listen, STATE: state },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => child.once("exit", (code) => r(code)));
  try {
    // Installing nothing (every package is here), building the copy, making the key, starting.
    await until("serve-example.sh to start serving", 300_000, () => {
      if (child.exitCode !== null) throw new GiveUp(`exited with ${child.exitCode}:\n${stderr}`);
      assert.match(stderr, /"msg":"listening"/);
    });
  } finally {
    // The script exec'd nixoci serve: the same process.
    child.kill("SIGTERM");
  }
  assert.equal(await exited, 0, stderr);
  const key = readFileSync(join(state, "cache-key.pub"), "utf8").trim();
  assert.match(key, new RegExp(`^${hostname()}-nixoci-1:`));
  const lines = stderr.split("\n");
  assert.deepEqual(lines.slice(0, 2), [
    `serve-example: nixoci serve will listen on ${listen} (LISTEN); its state goes to ${state} (STATE)`,
    `serve-example: starting nixoci serve on ${listen}, storage ${state}/registry; binary cache public key: ${key}`,
  ]);
  const listening = JSON.parse(lines[2]) as Record<string, unknown>;
  assert.deepEqual(
    {
      msg: listening.msg,
      address: listening.address,
      storage: listening.storage,
      resolver: listening.resolver,
    },
    {
      msg: "listening",
      address: listen,
      storage: join(state, "registry"),
      resolver: `nix file ${join(checkout, "examples/packages.nix")}`,
    },
  );
});
