// dumpPath against the reference vectors and against the real `nix-store --dump`.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { PassThrough, Writable } from "node:stream";
import { dumpPath, dumpPathTo, narHashOfPath } from "../../src/nix/nar-writer.js";
import { nix32Encode } from "../../src/nix/nix32.js";
import { NixociError } from "../../src/util/errors.js";
import { until } from "../support/poll.js";
import { buildStorePath, makeTree, nixDump } from "./nar-fixtures.js";
import { collect } from "../support/streams.js";

let work: string;
before(() => {
  work = fs.mkdtempSync(join(tmpdir(), "nixoci-nar-test-"));
});
after(() => {
  execFileSync("chmod", ["-R", "u+w", work]);
  fs.rmSync(work, { recursive: true, force: true });
});

const sha256nix32 = (b: Buffer) => nix32Encode(createHash("sha256").update(b).digest());

test("reference vectors", async () => {
  const f = join(work, "hi");
  fs.writeFileSync(f, "hi\n");
  assert.equal(
    sha256nix32(await collect(dumpPath(f))),
    "1xmr8jicvzszfzpz46g37mlpvbzjl2wpwvl2b05psipssyp1sm8h",
  );

  const l = join(work, "bin-link");
  fs.symlinkSync("/bin", l);
  assert.equal(
    sha256nix32(await collect(dumpPath(l))),
    "0z2mdmkd43l0ijdxfbj1y8vzli15yh9b09n3a3rrygmjshbyypsw",
  );

  const e = join(work, "empty");
  fs.writeFileSync(e, "");
  const eNar = await collect(dumpPath(e));
  assert.equal(eNar.length, 112);
  assert.equal(sha256nix32(eNar), "0ip26j2h11n1kgkz36rl4akv694yz65hr72q4kv4b3lxcbi65b3p");

  const d = join(work, "empty-dir");
  fs.mkdirSync(d);
  const dNar = await collect(dumpPath(d));
  assert.equal(dNar.length, 96);
  assert.equal(sha256nix32(dNar), "0sjjj9z1dhilhpc8pq4154czrb79z9cm044jvn75kxcjv6v5l2m5");
});

test("dumpPath equals nix-store --dump on an awkward tree (sorting, symlinks, modes, sizes, non-UTF-8 names)", async () => {
  const root = join(work, "tree");
  makeTree(root, { nonUtf8: true, big: true });
  const ours = await collect(dumpPath(root));
  const nix = nixDump(root);
  assert.equal(ours.length, nix.length);
  assert.ok(ours.equals(nix), "NAR bytes differ from nix-store --dump");
});

test("dumpPath equals nix-store --dump for single files, executables and symlinks at the root", async () => {
  const cases: [string, () => void][] = [
    ["plain", () => fs.writeFileSync(join(work, "plain"), "x".repeat(1000))],
    ["exec", () => fs.writeFileSync(join(work, "exec"), "#!/bin/sh\n", { mode: 0o700 })],
    ["group-x", () => fs.writeFileSync(join(work, "group-x"), "x", { mode: 0o610 })],
    ["dangling", () => fs.symlinkSync("nowhere", join(work, "dangling"))],
  ];
  for (const [name, make] of cases) {
    make();
    const p = join(work, name);
    assert.ok((await collect(dumpPath(p))).equals(nixDump(p)), name);
  }
});

test("dumpPath equals nix-store --dump on real store paths", async () => {
  const built = buildStorePath(work);
  const paths = [built];
  // And whatever else is in the store (other tests' outputs), up to a few.
  for (const name of fs.readdirSync("/nix/store").sort().slice(0, 12)) {
    if (name.startsWith(".") || name.endsWith(".lock")) continue;
    paths.push(join("/nix/store", name));
  }
  for (const p of paths) {
    let ours: Buffer, nix: Buffer;
    try {
      ours = await collect(dumpPath(p));
      nix = nixDump(p);
    } catch (e) {
      if (!fs.existsSync(p)) continue; // garbage-collected meanwhile by another test
      throw e;
    }
    assert.ok(ours.equals(nix), p);
  }
});

test("narHashOfPath matches the sha256 and size of nix-store --dump", async () => {
  const root = join(work, "tree-hash");
  makeTree(root, { big: true });
  const nix = nixDump(root);
  const { narHash, narSize } = await narHashOfPath(root);
  assert.equal(narSize, nix.length);
  assert.ok(narHash.equals(createHash("sha256").update(nix).digest()));
});

test("dumpPath streams in large chunks with bounded size", async () => {
  const root = join(work, "tree-chunks");
  makeTree(root, { big: true });
  const sizes: number[] = [];
  // 'data' events show the chunks as pushed (async iteration would merge buffered chunks).
  await new Promise<void>((resolve, reject) =>
    dumpPath(root)
      .on("data", (c: Buffer) => sizes.push(c.length))
      .on("end", resolve)
      .on("error", reject),
  );
  const total = sizes.reduce((a, b) => a + b, 0);
  assert.ok(Math.max(...sizes) <= 1 << 20, `largest chunk ${Math.max(...sizes)}`);
  // 5 MB plus ~650 small files: a handful of ~1 MiB chunks, not thousands of tiny ones.
  assert.ok(sizes.length <= Math.ceil(total / (1 << 20)) + 4, `${sizes.length} chunks for ${total} bytes`);
});

test("dumpPath respects backpressure: a slow consumer does not make it read ahead", async () => {
  const f = join(work, "big-backpressure");
  fs.writeFileSync(f, Buffer.alloc(40 << 20, 1));
  const stream = dumpPath(f);
  // Read one chunk at a time; after each, wait until the stream has refilled its buffer up to its high-water
  // mark: it must stop there (about two 1 MiB chunks), not go on reading the 40 MB file ahead of the consumer.
  const it = stream[Symbol.asyncIterator]();
  for (let i = 0; i < 5; i++) {
    const { done, value } = await it.next();
    assert.equal(done, false);
    // A read takes everything buffered (about two 1 MiB chunks) plus what the refill it starts pushes at once
    // (one more): at most about 3 MiB, where a stream that read ahead would hand over the whole file.
    assert.ok((value as Buffer).length <= 4 << 20, `read ${(value as Buffer).length} bytes at once`);
    await until(
      `refill after chunk ${i + 1}`,
      10_000,
      () =>
        assert.ok(stream.readableLength >= stream.readableHighWaterMark, `buffered ${stream.readableLength}`),
      5,
    );
    assert.ok(
      stream.readableLength <= 2 << 20,
      `buffered ${stream.readableLength} bytes after chunk ${i + 1}`,
    );
  }
  stream.destroy();
});

test("dumpPathTo writes to file streams, other writables and, with end: false, leaves the sink open", async () => {
  const root = join(work, "tree-to");
  makeTree(root, {});
  const expected = nixDump(root);

  const out = join(work, "out.nar");
  await dumpPathTo(root, fs.createWriteStream(out));
  assert.ok(fs.readFileSync(out).equals(expected));

  const pass = new PassThrough();
  const got = collect(pass);
  await dumpPathTo(root, pass);
  assert.ok((await got).equals(expected));

  // Two NARs back to back into one file stream.
  const both = join(work, "both.nar");
  const ws = fs.createWriteStream(both);
  await dumpPathTo(root, ws, { end: false });
  await dumpPathTo(root, ws, { end: false });
  await new Promise<void>((resolve) => ws.end(resolve));
  assert.ok(fs.readFileSync(both).equals(Buffer.concat([expected, expected])));
});

test("dumpPathTo keeps the chunks it hands to a sink intact until they are written", async () => {
  // A slow writable that compares each chunk when its write completes with a copy taken at write time.
  const root = join(work, "tree-slow");
  makeTree(root, { big: true });
  const parts: Buffer[] = [];
  const sink = new Writable({
    highWaterMark: 1 << 24,
    write(chunk: Buffer, _enc, cb) {
      const copy = Buffer.from(chunk);
      setTimeout(() => {
        assert.ok(copy.equals(chunk), "chunk changed before its write completed");
        parts.push(copy);
        cb();
      }, 1);
    },
  });
  await dumpPathTo(root, sink);
  assert.ok(Buffer.concat(parts).equals(nixDump(root)));
});

test("sockets, FIFOs and missing paths are errors naming the path", async () => {
  const d = join(work, "special");
  fs.mkdirSync(d);
  const fifo = join(d, "fifo");
  execFileSync("mkfifo", [fifo]);
  await assert.rejects(collect(dumpPath(d)), (e: unknown) => {
    assert.ok(e instanceof NixociError);
    assert.equal(e.message, `${fifo}: cannot be put in a NAR: it is a FIFO`);
    return true;
  });
  fs.unlinkSync(fifo);

  const sockPath = join(d, "sock");
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(sockPath, resolve));
  try {
    await assert.rejects(collect(dumpPath(d)), new RegExp(`^NixociError: ${sockPath}: .*a socket`));
    await assert.rejects(narHashOfPath(d), /a socket/);
    await assert.rejects(dumpPathTo(d, fs.createWriteStream(join(work, "sock.nar"))), /a socket/);
  } finally {
    server.close();
  }

  const missing = join(work, "does-not-exist");
  await assert.rejects(collect(dumpPath(missing)), (e: unknown) => {
    assert.ok(e instanceof NixociError);
    assert.equal(e.message, `${missing}: cannot lstat (no such file or directory)`);
    return true;
  });
});

test("unreadable files and directories are errors naming them", async () => {
  // Root reads anything, and the tests run as root: the dumps run in a child process as nobody (setpriv), on a
  // tree nobody may not read. The child loads a copy of the compiled modules from a temp dir that nobody can
  // traverse (the checkout may not be).
  const base = fs.mkdtempSync(join(tmpdir(), "nixoci-nar-perm-"));
  try {
    fs.chmodSync(base, 0o755);
    fs.cpSync(fileURLToPath(new URL("../../src", import.meta.url)), join(base, "dist/src"), {
      recursive: true,
    });
    fs.writeFileSync(join(base, "package.json"), '{"type":"module"}\n');
    fs.writeFileSync(
      join(base, "probe.mjs"),
      [
        'import { dumpPath } from "./dist/src/nix/nar-writer.js";',
        "const results = [];",
        "for (const path of process.argv.slice(2)) {",
        "  const chunks = [];",
        "  try {",
        "    for await (const c of dumpPath(path)) chunks.push(c);",
        '    results.push({ path, nar: Buffer.concat(chunks).toString("base64") });',
        "  } catch (e) {",
        "    results.push({ path, error: `${e.name}: ${e.message}` });",
        "  }",
        "}",
        "process.stdout.write(JSON.stringify({ uid: process.getuid(), results }));",
      ].join("\n"),
    );
    const tree = join(base, "tree");
    fs.mkdirSync(tree, { mode: 0o755 });
    const readable = join(tree, "readable");
    fs.writeFileSync(readable, "ok\n", { mode: 0o644 });
    const unreadable = join(tree, "unreadable");
    fs.writeFileSync(unreadable, "x", { mode: 0o000 });
    const locked = join(tree, "locked-dir");
    fs.mkdirSync(locked, { mode: 0o700 });
    fs.writeFileSync(join(locked, "inside"), "y", { mode: 0o644 });
    const inside = join(locked, "inside");

    const asNobody =
      process.getuid?.() === 0 ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] : [];
    const [cmd, ...args] = [...asNobody, process.execPath, join(base, "probe.mjs")];
    const out = JSON.parse(
      execFileSync(cmd, [...args, readable, unreadable, locked, inside, tree], { cwd: base }).toString(),
    ) as { uid: number; results: { path: string; nar?: string; error?: string }[] };

    assert.notEqual(out.uid, 0, "the probe ran unprivileged");
    const [ok, file, dir, under, whole] = out.results;
    // The same child reads what it may: the failures below are permissions, not a broken probe.
    assert.equal(ok.error, undefined);
    assert.ok(Buffer.from(ok.nar!, "base64").equals(nixDump(readable)));
    assert.equal(file.error, `NixociError: ${unreadable}: cannot open (permission denied)`);
    assert.equal(dir.error, `NixociError: ${locked}: cannot read directory (permission denied)`);
    assert.equal(under.error, `NixociError: ${inside}: cannot lstat (permission denied)`);
    // In a tree, the first unreadable entry in NAR order (locked-dir) stops the dump, named.
    assert.equal(whole.error, `NixociError: ${locked}: cannot read directory (permission denied)`);
  } finally {
    fs.rmSync(base, { recursive: true, force: true });
  }
});
