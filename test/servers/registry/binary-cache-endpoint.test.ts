// The binary cache endpoint against the real Nix 2.8: `nix copy --from http://...` with signatures required
// copies exact NARs (zstd, xz and uncompressed), `nix path-info --store http://...` agrees with the local
// store, a wrong trusted key fails; nixoci's own BinaryCacheStore reads it; listings equal Nix's; malformed
// names are 404s that never touch the filesystem; a path whose bytes changed on disk is never sent whole.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { chmodSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import { connect, type AddressInfo } from "node:net";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { Hash } from "../../../src/nix/hash.js";
import { dumpPath, narHashOfPath } from "../../../src/nix/nar-writer.js";
import {
  binaryCacheRoutes,
  type BinaryCacheRoutesOptions,
} from "../../../src/servers/registry/binary-cache-endpoint.js";
import { NarFileCache } from "../../../src/servers/registry/nar-file-cache.js";
import { parseNarInfo } from "../../../src/nix/narinfo.js";
import { parsePublicKey, parseSecretKey } from "../../../src/nix/signature.js";
import { BinaryCacheStore } from "../../../src/store/binary-cache.js";
import { LocalStore } from "../../../src/store/local-store.js";
import { decompressBuffer } from "../../../src/util/compression.js";
import { buildFixtures, generateCacheKey, makeNixCache, makeTempDir } from "../../support/fixtures.js";
import { until } from "../../support/poll.js";
import { toolProcesses } from "../../support/processes.js";
import { nixCmd, run, runText } from "../../support/run.js";

const fx = buildFixtures();
const closure = runText("nix-store", ["-qR", fx.all]).split("\n").sort();
const work = makeTempDir("bcache-endpoint");
const key = generateCacheKey("nixoci-serve-test-1", work);
const otherKey = generateCacheKey("other-cache-1", work);
const signKey = parseSecretKey(key.secretKey);
const systemStore = new LocalStore();
// Nix keeps narinfos it fetched in ~/.cache/nix; a private cache keeps runs (and ports reused) apart.
const nixEnv = { XDG_CACHE_HOME: join(work, "xdg") };

/**
 * Runs `nix ...` without blocking the event loop (the servers under test live in this process) and returns
 * its stdout; rejects with its stderr.
 */
function nixAsync(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      "nix",
      ["--extra-experimental-features", "nix-command", ...args],
      { env: { ...process.env, ...nixEnv }, maxBuffer: 1 << 30 },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`nix ${args.join(" ")}: ${err.message}\n${stderr}`));
        else resolve(stdout);
      },
    );
  });
}

const hashPart = (p: string): string => p.slice("/nix/store/".length, "/nix/store/".length + 32);

interface Served {
  url: string;
  port: number;
  bytes: () => number;
  errors: unknown[];
  /** Requests whose handling has not finished yet. */
  pending: () => number;
  close: () => Promise<void>;
}

const servers: Served[] = [];
after(async () => {
  for (const s of servers) await s.close();
  systemStore.close();
});

async function serve(opts: Partial<BinaryCacheRoutesOptions> = {}): Promise<Served> {
  let bytes = 0;
  let pending = 0;
  const errors: unknown[] = [];
  const routes = binaryCacheRoutes({
    store: systemStore,
    signKey,
    onServed: (n) => (bytes += n),
    onError: (err) => errors.push(err),
    ...opts,
  });
  const server = http.createServer((req, res) => {
    pending++;
    routes(req, res)
      .finally(() => pending--)
      .then(
        (handled) => {
          if (!handled) {
            res.writeHead(418);
            res.end("not the cache\n");
          }
        },
        (err: unknown) => {
          errors.push(err);
          res.destroy();
        },
      );
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;
  const s: Served = {
    url: `http://127.0.0.1:${port}`,
    port,
    bytes: () => bytes,
    errors,
    pending: () => pending,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
        routes.close();
      }),
  };
  servers.push(s);
  return s;
}

interface Response {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  complete: boolean;
}

function request(
  url: string,
  opts: { method?: string; headers?: Record<string, string> } = {},
): Promise<Response> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: opts.method ?? "GET", headers: opts.headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("error", () => {});
      res.on("close", () =>
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(chunks),
          complete: res.complete,
        }),
      );
    });
    req.on("error", reject);
    req.end();
  });
}

/** Sends a request line as is (no client-side normalisation) and returns the status code. */
function rawStatus(port: number, target: string, method = "GET"): Promise<number> {
  return new Promise((resolve, reject) => {
    const sock = connect(port, "127.0.0.1");
    const chunks: Buffer[] = [];
    sock.on("data", (c: Buffer) => chunks.push(c));
    sock.on("error", reject);
    sock.on("close", () => {
      const m = /^HTTP\/1\.1 (\d{3})/.exec(Buffer.concat(chunks).toString("latin1"));
      if (m) resolve(Number(m[1]));
      else reject(new Error(`no HTTP response to ${JSON.stringify(target.slice(0, 100))}`));
    });
    // Not end(): a client that half-closes before the answer is ready gets none.
    sock.write(`${method} ${target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n`);
  });
}

/** Names of this process's child processes (compressors it spawned and did not reap). */
function dumpOf(realStoreDir: string, path: string): Buffer {
  return run("nix-store", ["--dump", join(realStoreDir, path.slice("/nix/store/".length))]);
}

const trustArgs = (k: string) => ["--option", "trusted-public-keys", k, "--option", "require-sigs", "true"];

for (const compression of ["zstd", "xz", "none"] as const) {
  test(`nix copy --from the endpoint (${compression}) with signatures required copies exact NARs`, async () => {
    const s = await serve({ compression });
    const dest = join(work, `dest-${compression}`);
    await nixAsync(["copy", "--from", s.url, "--to", dest, ...trustArgs(key.publicKey), fx.all]);
    for (const p of closure) {
      assert.ok(
        dumpOf(join(dest, "nix/store"), p).equals(run("nix-store", ["--dump", p])),
        `${p} copied exactly`,
      );
    }
    // The copied paths are registered and valid in the destination store.
    const copied = runText("nix-store", ["--store", dest, "-qR", fx.all]).split("\n").sort();
    assert.deepEqual(copied, closure);
    assert.ok(s.bytes() > 0);
    assert.deepEqual(s.errors, []);
  });
}

test("nix path-info --store http://... agrees with the local store and shows our signature", async () => {
  const s = await serve({ compression: "zstd" });
  const remote = JSON.parse(
    await nixAsync(["path-info", "--json", "-r", "--store", s.url, fx.all]),
  ) as Record<string, unknown>[];
  const local = JSON.parse(nixCmd(["path-info", "--json", "-r", fx.all]).toString()) as Record<
    string,
    unknown
  >[];
  const byPath = new Map(local.map((i) => [i.path as string, i]));
  assert.equal(remote.length, closure.length);
  for (const info of remote) {
    const l = byPath.get(info.path as string);
    assert.ok(l, `${info.path} is local`);
    for (const field of ["narHash", "narSize", "references", "deriver", "ca"]) {
      assert.deepEqual(info[field], l[field], `${info.path}: ${field}`);
    }
    const narHash = (await systemStore.queryPathInfo(info.path as string))!.narHash
      .toString("nix32")
      .slice(7);
    assert.equal(info.url, `nar/${hashPart(info.path as string)}-${narHash}.nar.zst`);
    const sigs = info.signatures as string[];
    assert.ok(
      sigs.some((x) => x.startsWith("nixoci-serve-test-1:")),
      "signed by our key",
    );
  }
  // Uncompressed: the download hash and size are the NAR's.
  const plain = await serve({ compression: "none" });
  const [one] = JSON.parse(await nixAsync(["path-info", "--json", "--store", plain.url, fx.hello])) as Record<
    string,
    unknown
  >[];
  const [mine] = local.filter((i) => i.path === fx.hello);
  assert.equal(one.downloadHash, mine.narHash);
  assert.equal(one.downloadSize, mine.narSize);
  // Nix's own signature check, as a second opinion.
  await nixAsync(["store", "verify", "--store", s.url, "--trusted-public-keys", key.publicKey, "-r", fx.all]);
});

test("with a wrong trusted key nix copy fails", async () => {
  const s = await serve();
  const dest = join(work, "dest-wrong-key");
  await assert.rejects(
    nixAsync(["copy", "--from", s.url, "--to", dest, ...trustArgs(otherKey.publicKey), fx.hello]),
    /lacks a valid signature/,
  );
  // Unsigned (no key configured): refused with signatures required, too.
  const unsigned = await serve({ signKey: undefined });
  await assert.rejects(
    nixAsync([
      "copy",
      "--from",
      unsigned.url,
      "--to",
      join(work, "dest-unsigned"),
      ...trustArgs(key.publicKey),
      fx.hello,
    ]),
    /lacks a valid signature/,
  );
});

test("nixoci's BinaryCacheStore reads the endpoint and verifies every NAR", async () => {
  for (const compression of ["zstd", "none"] as const) {
    const s = await serve({ compression });
    const cache = await BinaryCacheStore.open(s.url, { trustedKeys: [parsePublicKey(key.publicKey)] });
    assert.equal(cache.priority, 30);
    for (const p of closure) {
      const info = await cache.queryPathInfo(p);
      assert.ok(info, `${p} in the cache`);
      const local = await systemStore.queryPathInfo(p);
      assert.ok(local!.narHash.equals(info.narHash));
      const chunks: Buffer[] = [];
      for await (const c of await cache.narFromPath(info)) chunks.push(c as Buffer);
      assert.ok(Buffer.concat(chunks).equals(run("nix-store", ["--dump", p])), `${p} (${compression})`);
    }
    const untrusting = await BinaryCacheStore.open(s.url, {
      trustedKeys: [parsePublicKey(otherKey.publicKey)],
    });
    await assert.rejects(untrusting.queryPathInfo(fx.hello), /trusted/);
  }
});

test("nix-cache-info, narinfo fields, HEAD, ranges and NAR listings", async () => {
  const s = await serve({ compression: "none", priority: 17 });
  const ci = await request(`${s.url}/nix-cache-info`);
  assert.equal(ci.status, 200);
  assert.equal(ci.body.toString(), "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 17\n");

  const p = fx.tree;
  const local = (await systemStore.queryPathInfo(p))!;
  const get = await request(`${s.url}/${hashPart(p)}.narinfo`);
  assert.equal(get.status, 200);
  assert.equal(get.headers["content-type"], "text/x-nix-narinfo");
  const ni = parseNarInfo(get.body.toString(), { input: "test", expectedHashPart: hashPart(p) });
  assert.equal(ni.storePath, p);
  assert.equal(ni.compression, "none");
  assert.ok(ni.fileHash!.equals(local.narHash));
  assert.equal(ni.fileSize, local.narSize);
  const head = await request(`${s.url}/${hashPart(p)}.narinfo`, { method: "HEAD" });
  assert.equal(head.status, 200);
  assert.equal(head.body.length, 0);
  assert.equal(head.headers["content-length"], get.headers["content-length"]);

  const dump = run("nix-store", ["--dump", p]);
  const nar = await request(`${s.url}/${ni.url}`);
  assert.equal(nar.status, 200);
  assert.equal(nar.headers["content-length"], String(dump.length));
  assert.ok(nar.body.equals(dump));
  const narHead = await request(`${s.url}/${ni.url}`, { method: "HEAD" });
  assert.equal(narHead.status, 200);
  assert.equal(narHead.headers["content-length"], String(dump.length));
  assert.equal(narHead.body.length, 0);
  const part = await request(`${s.url}/${ni.url}`, { headers: { Range: "bytes=100-299" } });
  assert.equal(part.status, 206);
  assert.equal(part.headers["content-range"], `bytes 100-299/${dump.length}`);
  assert.ok(part.body.equals(dump.subarray(100, 300)));
  const tail = await request(`${s.url}/${ni.url}`, { headers: { Range: "bytes=-10" } });
  assert.ok(tail.body.equals(dump.subarray(dump.length - 10)));
  const bad = await request(`${s.url}/${ni.url}`, { headers: { Range: `bytes=${dump.length}-` } });
  assert.equal(bad.status, 416);

  // The same NAR under the other compressions' names.
  const zst = await request(`${s.url}/${ni.url}.zst`);
  assert.equal(zst.status, 200);
  assert.ok((await decompressBuffer("zstd", zst.body, "zst")).equals(dump));
  const xz = await request(`${s.url}/${ni.url}.xz`);
  assert.ok((await decompressBuffer("xz", xz.body, "xz")).equals(dump));

  // The listing equals the one Nix writes.
  const nixCache = join(work, "nix-ls");
  makeNixCache({ paths: [p], dir: nixCache, compression: "none", writeNarListing: true });
  const ls = await request(`${s.url}/${hashPart(p)}.ls`);
  assert.equal(ls.status, 200);
  assert.equal(ls.body.toString(), readFileSync(join(nixCache, `${hashPart(p)}.ls`), "utf8"));
  // Asked again (a plan step asks on every build): the same bytes, kept from the first time.
  const again = await request(`${s.url}/${hashPart(p)}.ls`);
  assert.equal(again.status, 200);
  assert.ok(again.body.equals(ls.body));
  assert.deepEqual(s.errors, []);
});

test("malformed and unknown names are 404s, other methods 405, and the server keeps serving", async () => {
  const s = await serve();
  const h = hashPart(fx.hello);
  const info = (await systemStore.queryPathInfo(fx.hello))!;
  const narHash = info.narHash.toString("nix32").slice(7);
  const notFound = [
    `/${h.toUpperCase()}.narinfo`,
    `/${h.slice(0, 31)}.narinfo`,
    `/${h}a.narinfo`,
    `/${h.slice(0, 31)}e.narinfo`, // 'e' is not a nix32 character
    `/..%2f..%2fetc%2fpasswd.narinfo`,
    `/${"0".repeat(32)}.narinfo`, // well-formed, not in the store
    `/nar/../../etc/passwd`,
    `/nar/..%2f..%2fetc%2fpasswd`,
    `/nar/${h}-${narHash}.nar.gz`,
    `/nar/${h}-${narHash}.nar.bz2`,
    `/nar/${h}-${narHash}`,
    `/nar/${h}-${narHash}.nar.zst/`,
    `/nar/${h}-${"0".repeat(52)}.nar`, // not this path's NarHash
    `/nar/${"0".repeat(32)}-${narHash}.nar`,
    `/nar/${h.toUpperCase()}-${narHash}.nar`,
    `/nar/${h}-${narHash}.nar%00`,
    `/nar/./${h}-${narHash}.nar`,
    `/nar//${h}-${narHash}.nar`,
    `/nar/${"a".repeat(8000)}.nar`,
    `/${"a".repeat(8000)}.narinfo`,
    `/${"a".repeat(8000)}.ls`,
    `/${h}.ls.narinfo`,
    `/nar/`,
    `/nar/${h}-${narHash}.nar.zst?x=../../etc/passwd`.replace(narHash, "1".repeat(52)),
  ];
  for (const target of notFound) {
    assert.equal(await rawStatus(s.port, target), 404, target.slice(0, 120));
  }
  // A query string does not change what is served.
  assert.equal(await rawStatus(s.port, `/${h}.narinfo?foo=bar`), 200);
  for (const method of ["POST", "PUT", "DELETE", "PATCH"]) {
    assert.equal(await rawStatus(s.port, `/${h}.narinfo`, method), 405, method);
    assert.equal(await rawStatus(s.port, `/nix-cache-info`, method), 405, method);
  }
  // Not ours: left to the next route (the test server answers 418).
  for (const target of [
    "/",
    "/v2/",
    "/metrics",
    "/foo/bar.narinfo",
    "/../../etc/passwd.narinfo",
    `/${h}.narinfo/`,
    "/nix-cache-info/x",
    "http://x/nix-cache-info",
  ]) {
    assert.equal(await rawStatus(s.port, target), 418, target);
  }
  assert.equal((await request(`${s.url}/nix-cache-info`)).status, 200);
  assert.equal((await request(`${s.url}/${h}.narinfo`)).status, 200);
  assert.deepEqual(s.errors, []);
});

test("a store without Nix's database (nixoci's sidecar) is served; unregistered or changed paths are not", async () => {
  const dir = join(work, "side/nix/store");
  mkdirSync(dir, { recursive: true });
  const side = new LocalStore({ dir, dbFile: null });
  after(() => side.close());
  const helloClosure = runText("nix-store", ["-qR", fx.hello]).split("\n");
  for (const p of [...helloClosure, fx["single-file"]]) {
    const info = (await systemStore.queryPathInfo(p))!;
    await side.addPath(info, await systemStore.narFromPath(info));
  }
  // A path much larger than what the streams between the store and the socket buffer.
  const bigSrc = join(work, "big-src");
  mkdirSync(bigSrc);
  writeFileSync(join(bigSrc, "data.bin"), randomBytes(48 << 20));
  const bigNar = await narHashOfPath(bigSrc);
  const big = `/nix/store/${"1".repeat(32)}-big-random`;
  await side.addPath(
    {
      path: big,
      narHash: new Hash("sha256", bigNar.narHash),
      narSize: bigNar.narSize,
      references: [],
      sigs: [],
    },
    dumpPath(bigSrc),
  );
  const s = await serve({ store: side, dbFile: null, compression: "zstd" });
  const narUrlOf = async (p: string) =>
    parseNarInfo((await request(`${s.url}/${hashPart(p)}.narinfo`)).body.toString(), { input: "t" });
  const cache = await BinaryCacheStore.open(s.url, { trustedKeys: [parsePublicKey(key.publicKey)] });
  for (const p of helloClosure) {
    const info = (await cache.queryPathInfo(p))!;
    const chunks: Buffer[] = [];
    for await (const c of await cache.narFromPath(info)) chunks.push(c as Buffer);
    assert.ok(Buffer.concat(chunks).equals(run("nix-store", ["--dump", p])), p);
  }
  // nix copy out of it as well.
  const dest = join(work, "dest-side");
  await nixAsync(["copy", "--from", s.url, "--to", dest, ...trustArgs(key.publicKey), fx.hello]);
  assert.ok(dumpOf(join(dest, "nix/store"), fx.hello).equals(run("nix-store", ["--dump", fx.hello])));

  // A directory in the store without metadata is not a valid path.
  const fake = "0123456789abcdfghijklmnpqrsvwxyz";
  mkdirSync(join(dir, `${fake}-fake`));
  assert.equal((await request(`${s.url}/${fake}.narinfo`)).status, 404);
  // Paths of the system store are not in this one.
  assert.equal((await request(`${s.url}/${hashPart(fx.tree)}.narinfo`)).status, 404);

  // A client that goes away mid-NAR: not an error, and the compressor it had is gone.
  const bigUrl = (await narUrlOf(big)).url;
  for (const suffix of ["", ".zst"]) {
    await new Promise<void>((resolve, reject) => {
      const req = http.get(`${s.url}/${bigUrl.replace(/\.zst$/, "")}${suffix}`, (res) => {
        res.once("data", () => {
          req.destroy();
          resolve();
        });
      });
      req.on("error", (err) => (req.destroyed ? undefined : reject(err)));
    });
  }
  // Once the server has finished with both requests (bounded), no compressor is left and nothing was an error.
  await until(
    "the server to finish the abandoned requests and their compressors to end",
    15_000,
    async () => {
      assert.equal(s.pending(), 0, "requests still being handled");
      assert.deepEqual(await toolProcesses(), [], "no compressor left running");
    },
    20,
  );
  assert.deepEqual(s.errors, []);
  // One that goes away before the first byte (xz writes nothing for seconds on 48 MB of random data): its
  // compressor is stopped at once, not when its first output finds the client gone.
  const early = http.get(`${s.url}/${bigUrl.replace(/\.zst$/, "")}.xz`);
  early.on("error", () => undefined);
  await until(
    "xz to start",
    15_000,
    async () => assert.ok((await toolProcesses()).some((p) => / xz\b/.test(` ${p}`))),
    20,
  );
  early.destroy();
  await until(
    "the abandoned xz to be stopped",
    2_000,
    async () => {
      assert.equal(s.pending(), 0, "requests still being handled");
      assert.deepEqual(await toolProcesses(), [], "no compressor left running");
    },
    20,
  );
  assert.deepEqual(s.errors, []);

  // Change a file's bytes behind the store's back: the NAR fails verification and is never sent whole. The
  // last chunk is held back until the NAR is verified: a small NAR gets a 500, a large one (whose first
  // chunks went out) an aborted response.
  const tamper = (file: string): (() => void) => {
    chmodSync(file, 0o644);
    const original = readFileSync(file);
    const changed = Buffer.from(original);
    changed[changed.length - 1] ^= 1;
    writeFileSync(file, changed);
    return () => {
      writeFileSync(file, original);
      chmodSync(file, 0o444);
    };
  };
  const sf = fx["single-file"];
  const sfInfo = await narUrlOf(sf);
  const restoreSf = tamper(join(dir, sf.slice("/nix/store/".length)));
  for (const suffix of ["", ".zst", ".xz"]) {
    const r = await request(`${s.url}/${sfInfo.url.replace(/\.zst$/, "")}${suffix}`);
    assert.equal(r.status, 500, `tampered small ${suffix || "uncompressed"} NAR`);
    assert.match(String(r.headers["content-type"]), /^text\/plain/);
    assert.equal(r.headers["content-range"], undefined);
  }
  const bigInfo = await narUrlOf(big);
  const restoreBig = tamper(join(dir, big.slice("/nix/store/".length), "data.bin"));
  for (const suffix of ["", ".zst"]) {
    const r = await request(`${s.url}/${bigInfo.url.replace(/\.zst$/, "")}${suffix}`);
    assert.equal(r.status, 200);
    assert.equal(
      r.complete,
      false,
      `tampered large ${suffix || "uncompressed"} NAR response must be aborted`,
    );
    if (suffix === "") assert.ok(r.body.length < bigInfo.narSize);
  }
  assert.ok(
    s.errors.length >= 5 && s.errors.every((e) => /NAR hash mismatch/.test(String(e))),
    String(s.errors),
  );
  // The listing is refused as well.
  s.errors.length = 0;
  assert.equal((await request(`${s.url}/${hashPart(sf)}.ls`)).status, 500);
  assert.ok(s.errors.some((e) => /NAR hash mismatch/.test(String(e))));
  restoreSf();
  restoreBig();
  for (const p of [sf, big]) {
    const r = await request(`${s.url}/${(await narUrlOf(p)).url}`);
    assert.equal(r.status, 200);
    assert.ok(r.complete);
  }
});

test("NAR bodies are bounded: one producing, one waiting, a third gets 503 with Retry-After; the waiting one is served next", async () => {
  const dir = join(work, "bounded/nix/store");
  mkdirSync(dir, { recursive: true });
  const side = new LocalStore({ dir, dbFile: null });
  after(() => side.close());
  // Far larger than the socket and stream buffers, so a client that reads nothing holds its stream.
  const src = join(work, "bounded-src");
  mkdirSync(src);
  writeFileSync(join(src, "data.bin"), randomBytes(48 << 20));
  const { narHash, narSize } = await narHashOfPath(src);
  const path = `/nix/store/${"2".repeat(32)}-bounded`;
  await side.addPath(
    { path, narHash: new Hash("sha256", narHash), narSize, references: [], sigs: [] },
    dumpPath(src),
  );
  const s = await serve({ store: side, dbFile: null, maxNarStreams: 1, maxQueuedNarStreams: 1 });
  const info = parseNarInfo((await request(`${s.url}/${hashPart(path)}.narinfo`)).body.toString(), {
    input: "t",
  });
  const url = `${s.url}/${info.url.replace(/\.zst$/, "")}`;

  const holder = await new Promise<http.IncomingMessage>((resolve, reject) => {
    const req = http.get(url, (res) => {
      res.pause();
      resolve(res);
    });
    req.on("error", reject);
  });
  assert.equal(holder.statusCode, 200);
  const second = request(url);
  const third = request(url);
  // Whichever of the two reached the queue second is refused at once; the other waits for the stream.
  const refused = await Promise.race([second, third]);
  assert.equal(refused.status, 503);
  assert.equal(refused.headers["retry-after"], "1");
  holder.resume();
  const [b, c] = await Promise.all([second, third]);
  const served = [b, c].find((r) => r.status !== 503)!;
  assert.equal(served.status, 200);
  assert.ok(served.body.equals(run("nix-store", ["--dump", src])), "the waiting request got the whole NAR");
  assert.deepEqual(s.errors, []);
});

test("compressed NARs are kept once made: served from the file, bounded in size, nothing kept from an aborted download", async () => {
  const dir = join(makeTempDir("nar-file-cache"), "nar-cache");
  const [a, b] = [fx.tree, fx.hello];
  const sizes = await Promise.all([a, b].map(async (p) => (await systemStore.queryPathInfo(p))!.narSize));
  const s = await serve({ compression: "zstd", narCache: new NarFileCache(dir, 10 * 1024 * 1024) });
  const narUrl = async (p: string): Promise<string> =>
    parseNarInfo((await request(`${s.url}/${hashPart(p)}.narinfo`)).body.toString(), {
      input: "test",
      expectedHashPart: hashPart(p),
    }).url;
  const kept = (): string[] => readdirSync(dir).filter((n) => !n.startsWith("."));

  // First download: compressed on the fly and kept under the NAR's hash, compression and level.
  const url = await narUrl(a);
  const first = await request(`${s.url}/${url}`);
  assert.equal(first.status, 200);
  assert.ok((await decompressBuffer("zstd", first.body, "zst")).equals(await dumpBuffer(a)));
  const info = (await systemStore.queryPathInfo(a))!;
  const name = `${info.narHash.toString("nix32").slice("sha256:".length)}.zstd-3`;
  await until("the compressed NAR to be kept", 10_000, () => assert.deepEqual(kept(), [name]));
  assert.ok(readFileSync(join(dir, name)).equals(first.body));

  // Later downloads are the file (with its length), not a new compression: planted bytes show it.
  const planted = Buffer.concat([first.body.subarray(0, 4), Buffer.from("planted")]);
  writeFileSync(join(dir, name), planted);
  const again = await request(`${s.url}/${url}`);
  assert.equal(again.headers["content-length"], String(planted.length));
  assert.ok(again.body.equals(planted));
  const head = await request(`${s.url}/${url}`, { method: "HEAD" });
  assert.equal(head.headers["content-length"], String(planted.length));
  assert.equal(head.body.length, 0);
  writeFileSync(join(dir, name), first.body);

  // Another level is another file; xz another one too.
  const xz = await request(`${s.url}/${url.replace(/\.zst$/, ".xz")}`);
  assert.ok((await decompressBuffer("xz", xz.body, "xz")).equals(await dumpBuffer(a)));
  await until("the xz NAR to be kept", 10_000, () => assert.equal(kept().length, 2));

  // Bounded: a cache smaller than two files keeps the one served last.
  const small = join(makeTempDir("nar-file-cache-small"), "nar-cache");
  const s2 = await serve({ compression: "zstd", narCache: new NarFileCache(small, first.body.length + 16) });
  await request(`${s2.url}/${url}`);
  await request(`${s2.url}/${await narUrl(b)}`);
  const left = readdirSync(small).filter((n) => !n.startsWith("."));
  assert.equal(left.length, 1, left.join(" "));
  assert.ok(left[0].startsWith((await systemStore.queryPathInfo(b))!.narHash.toString("nix32").slice(7)));
  assert.ok(sizes.every((n) => n > 0));

  // A client that leaves in the middle leaves nothing kept, not even a temporary, once the server is done.
  const big = join(makeTempDir("nar-file-cache-abort"), "nar-cache");
  const s3 = await serve({ compression: "zstd", narCache: new NarFileCache(big, 10 * 1024 * 1024) });
  const bigUrl = await narUrl(fx.big);
  await new Promise<void>((resolve) => {
    const req = http.get(`${s3.url}/${bigUrl}`, (res) => {
      res.once("data", () => {
        req.destroy();
        resolve();
      });
    });
    req.on("error", () => resolve());
  });
  await until("the aborted download to end", 10_000, () => assert.equal(s3.pending(), 0));
  assert.deepEqual(readdirSync(big), []);
  assert.deepEqual([...s.errors, ...s2.errors], []);
});

async function dumpBuffer(p: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of dumpPath(p)) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}
