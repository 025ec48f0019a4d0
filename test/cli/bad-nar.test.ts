// Binary caches whose narinfo is valid and signed but whose NAR file is empty or garbage, for every
// compression (issue 11, F1): substituting into a store directory that does not exist yet fails with one line
// naming the NAR's URL and leaves nothing behind; `nixoci substitute` exits 1, `nixoci serve` answers the pull
// with an error and keeps serving. Neither may crash: the NAR's stream fails while its reader is still
// creating the store directory, which was an unhandled 'error' event. The HTTP caches are served from this
// process, so a client has the whole NAR at once and it fails at once (every time for a "none" NAR).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { cpSync, existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { basename, join, resolve, sep } from "node:path";
import { COMPRESSIONS } from "../../src/util/compression.js";
import { nixoci, nixociAsync, ROOT } from "../support/cli.js";
import { freePort } from "../support/daemons.js";
import { buildFixtures, generateCacheKey, makeNixCache, makeTempDir } from "../support/fixtures.js";
import { GiveUp, until } from "../support/poll.js";

const fx = buildFixtures();
const work = makeTempDir("bad-nar");
const key = generateCacheKey("bad-nar-1", work);
const target = fx.greeting;
const hashPart = basename(target).slice(0, 32);

const BAD_NARS = {
  empty: Buffer.alloc(0),
  garbage: Buffer.from("this is neither a NAR nor compressed data\n".repeat(20)),
};

interface BadCache {
  name: string;
  dir: string;
  /** The NAR file's name in the cache (the narinfo's URL). */
  nar: string;
}

const caches: BadCache[] = [];
for (const compression of COMPRESSIONS) {
  const pristine = join(work, `pristine-${compression}`);
  makeNixCache({ paths: [target], dir: pristine, compression, secretKeyFile: key.secretKeyFile });
  for (const [kind, bytes] of Object.entries(BAD_NARS)) {
    const dir = join(work, `${compression}-${kind}`);
    cpSync(pristine, dir, { recursive: true });
    const nar = /^URL: (.*)$/m.exec(readFileSync(join(dir, `${hashPart}.narinfo`), "utf8"))![1];
    writeFileSync(join(dir, nar), bytes);
    caches.push({ name: `${compression} NAR is ${kind}`, dir, nar });
  }
}

/** A static web server for `root` in this process: GET a file, anything else 404. */
async function serveFiles(root: string): Promise<{ url: string; server: Server }> {
  const server = createServer((req, res) => {
    const file = resolve(root, "." + decodeURIComponent(new URL(req.url ?? "/", "http://x").pathname));
    if (!file.startsWith(root + sep)) return void res.writeHead(404).end();
    readFile(file).then(
      (body) => res.writeHead(200, { "Content-Length": body.length }).end(body),
      () => res.writeHead(404).end(),
    );
  });
  await new Promise<void>((ok) => server.listen(0, "127.0.0.1", ok));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server };
}

const web = await serveFiles(work);
after(() => web.server.close());

const sources = caches.flatMap((c) => [
  { ...c, transport: "file", url: `file://${c.dir}` },
  { ...c, transport: "http", url: `${web.url}/${basename(c.dir)}` },
]);

/** Store directory entries other than nixoci's metadata directory (an absent directory has none). */
const leftovers = (dir: string): string[] =>
  existsSync(dir) ? readdirSync(dir).filter((n) => n !== ".nixoci") : [];

for (const [i, s] of sources.entries()) {
  test(`substitute, ${s.name} (${s.transport}): a one-line error, no crash, nothing left`, async () => {
    const storeDir = join(work, `store-${i}`, "nix", "store"); // does not exist yet
    const r = await nixociAsync([
      "substitute",
      "--from",
      s.url,
      "--trusted-public-key",
      key.publicKey,
      "--store-dir",
      storeDir,
      target,
    ]);
    assert.equal(r.status, 1, `exit ${r.status}, stderr:\n${r.stderr}`);
    assert.doesNotMatch(r.stderr, /Unhandled|\n\s+at /, "no crash, no stack trace");
    const lines = r.stderr.split("\n").filter((l) => l.startsWith("nixoci:"));
    assert.equal(lines.length, 1, `one error line:\n${r.stderr}`);
    assert.ok(lines[0].includes(target), `names the path: ${lines[0]}`);
    assert.ok(lines[0].includes(`${s.url}/${s.nar}: `), `names the NAR's URL: ${lines[0]}`);
    assert.deepEqual(leftovers(storeDir), [], "nothing left in the store directory");
  });
}

test("serve: a pull of a path no cache can deliver is a 500, and the registry keeps serving", async () => {
  const host = `127.0.0.1:${await freePort()}`;
  const storeDir = join(work, "serve-store", "nix", "store"); // does not exist yet
  const args = ["serve", "--listen", host, "--storage", join(work, "serve-storage"), "--store", storeDir];
  for (const s of sources) args.push("--substituter", s.url);
  args.push("--trusted-public-key", key.publicKey, "--log-level", "error");
  const proc = spawn(process.execPath, [join(ROOT, "bin/nixoci.js"), ...args], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  proc.stderr.on("data", (d) => (log += d));
  const exited = new Promise<number | null>((ok) => proc.once("exit", (code) => ok(code)));
  try {
    await until("nixoci serve to answer", 30_000, async () => {
      if (proc.exitCode !== null) throw new GiveUp(`exited with ${proc.exitCode}: ${log}`);
      assert.equal((await fetch(`http://${host}/v2/`)).status, 200);
    });
    for (let attempt = 1; attempt <= 2; attempt++) {
      const res = await fetch(`http://${host}/v2/${basename(target)}/manifests/latest`).catch((err) => {
        throw new Error(`attempt ${attempt}: ${String(err)}; serve's exit code ${proc.exitCode}:\n${log}`);
      });
      const message = await res.text();
      assert.equal(res.status, 500, `attempt ${attempt}: ${message}\n${log}`);
      assert.equal((JSON.parse(message) as { errors: { code: string }[] }).errors[0].code, "UNKNOWN");
      assert.ok(message.includes(target), message);
      assert.ok(message.includes(`${sources[0].url}/${sources[0].nar}: `), `names a NAR's URL: ${message}`);
      assert.equal(proc.exitCode, null, `serve is still running: ${log}`);
      assert.equal((await fetch(`http://${host}/v2/`)).status, 200, `serve answers /v2/: ${log}`);
    }
    assert.doesNotMatch(log, /Unhandled|uncaught/i);
    assert.deepEqual(leftovers(storeDir), [], "nothing left in the store directory");
  } finally {
    proc.kill("SIGTERM");
  }
  assert.equal(await exited, 0, `serve exits cleanly on SIGTERM: ${log}`);
});

test("nar: an unknown subcommand, extra arguments or an empty one are usage errors (exit 2), not a missing PATH", () => {
  for (const [args, message] of [
    [["frob", "x"], 'unknown nar command "frob"'],
    [["dump", "/nix/store/a", "/nix/store/b"], "nar dump takes one argument, got 2"],
    [["restore", ""], "nar restore: the argument is empty"],
  ] as const) {
    const r = nixoci(["nar", ...args]);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stderr, `nixoci: ${message}; run 'nixoci nar --help' for its options\n`);
  }
});
