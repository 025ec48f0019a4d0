// The deterministic layer tar writer, checked with GNU tar (listing, extraction) and `nix-store --dump`.
import { before, describe, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import {
  storePathsTar,
  treeTar,
  TAR_CHUNK,
  TAR_FORMAT_VERSION,
  type TreeEntry,
} from "../../src/image/layer-tar.js";
import { TAR_FORMAT_LAYER_DOCKER20 } from "../../src/image/tar-header.js";
import { BufferPool } from "../../src/util/buffer-pool.js";
import { NixociError } from "../../src/util/errors.js";
import { buildFixtures, makeTempDir, type FixtureAttr } from "../support/fixtures.js";
import { until } from "../support/poll.js";
import { run, runText } from "../support/run.js";
import { collect } from "../support/streams.js";

let fx: Record<FixtureAttr, string>;
before(() => {
  fx = buildFixtures();
});

function closure(path: string): string[] {
  return runText("nix-store", ["-qR", path]).split("\n").sort();
}

const inStore = (paths: string[]) => paths.map((p) => ({ storePath: p, realPath: p }));

/** `tar -tv` lines (numeric owners, full UTC times), without the column padding. */
function listing(tar: Buffer): string[] {
  const out = runText("tar", ["--full-time", "--numeric-owner", "-tvf", "-"], {
    input: tar,
    env: { TZ: "UTC" },
  });
  return out.split("\n").map((l) => l.replace(/ +/g, " "));
}

interface RawHeader {
  type: string;
  name: string;
  size: number;
  /** The mode field as written (octal), file-type bits included when there are any. */
  mode: number;
  uname: string;
  gname: string;
}

/** The raw headers of a tar (PAX headers included), checked for valid checksums and an end of two zero blocks. */
function rawHeaders(tar: Buffer): RawHeader[] {
  assert.equal(tar.length % 512, 0);
  const out: RawHeader[] = [];
  let off = 0;
  for (;;) {
    const h = tar.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i];
    assert.equal(parseInt(h.toString("latin1", 148, 154), 8), sum, `checksum at ${off}`);
    const size = parseInt(h.toString("latin1", 124, 135), 8);
    const field = (a: number, b: number) => h.toString("utf8", a, b).replace(/\0.*$/s, "");
    const prefix = field(345, 500);
    out.push({
      type: String.fromCharCode(h[156]),
      name: (prefix ? prefix + "/" : "") + field(0, 100),
      size,
      mode: parseInt(field(100, 108), 8),
      uname: field(265, 297),
      gname: field(297, 329),
    });
    off += 512 + Math.ceil(size / 512) * 512;
  }
  assert.equal(tar.length, off + 1024, "the archive ends with exactly two zero blocks");
  assert.ok(tar.subarray(off).every((b) => b === 0));
  return out;
}

describe("storePathsTar", () => {
  test("the hello closure lists as expected in GNU tar: order, modes, owners, mtime 1, symlinks", async () => {
    assert.equal(TAR_FORMAT_VERSION, 3);
    const paths = closure(fx.hello);
    assert.deepEqual(paths, [fx.busybox, fx.greeting, fx.hello].sort());
    const tar = await collect(storePathsTar(inStore(paths)));
    const rel = (p: string) => p.slice(1);
    const T = "0/0 0 1970-01-01 00:00:01";
    const entries: Record<string, string[]> = {
      [fx.busybox]: [
        `dr-xr-xr-x ${T} ${rel(fx.busybox)}/`,
        `dr-xr-xr-x ${T} ${rel(fx.busybox)}/bin/`,
        `-r-xr-xr-x 0/0 ${fs.statSync(`${fx.busybox}/bin/busybox`).size} 1970-01-01 00:00:01 ${rel(fx.busybox)}/bin/busybox`,
        ...["cat", "echo", "env", "ls", "sh", "true"].map(
          (a) => `lrwxrwxrwx ${T} ${rel(fx.busybox)}/bin/${a} -> busybox`,
        ),
      ],
      [fx.greeting]: [
        `dr-xr-xr-x ${T} ${rel(fx.greeting)}/`,
        `dr-xr-xr-x ${T} ${rel(fx.greeting)}/share/`,
        `-r--r--r-- 0/0 ${fs.statSync(`${fx.greeting}/share/greeting.txt`).size} 1970-01-01 00:00:01 ${rel(fx.greeting)}/share/greeting.txt`,
      ],
      [fx.hello]: [
        `dr-xr-xr-x ${T} ${rel(fx.hello)}/`,
        `dr-xr-xr-x ${T} ${rel(fx.hello)}/bin/`,
        `-r-xr-xr-x 0/0 ${fs.statSync(`${fx.hello}/bin/hello`).size} 1970-01-01 00:00:01 ${rel(fx.hello)}/bin/hello`,
      ],
    };
    const expected = [
      `drwxr-xr-x ${T} nix/`,
      `drwxr-xr-x ${T} nix/store/`,
      ...paths.flatMap((p) => entries[p]),
    ];
    assert.deepEqual(listing(tar), expected);
    // As containerd and Docker >= 23 write: the mode field holds permission bits only, no owner names; no PAX
    // headers are needed here.
    const raw = rawHeaders(tar);
    assert.ok(raw.every((h) => h.type !== "x"));
    assert.ok(raw.every((h) => h.mode <= 0o7777 && h.uname === "" && h.gname === ""));
    assert.ok(raw.some((h) => h.type === "5" && h.mode === 0o555));

    // dockerd 20.10's format: the same entries and contents; file-type bits in the mode, owner names "root".
    const docker20 = await collect(storePathsTar(inStore(paths), { format: TAR_FORMAT_LAYER_DOCKER20 }));
    assert.deepEqual(listing(docker20), expected);
    const typeBits: Record<string, number> = { "0": 0o100000, "2": 0o120000, "5": 0o040000 };
    assert.deepEqual(
      rawHeaders(docker20),
      raw.map((h) => ({ ...h, mode: h.mode | typeBits[h.type], uname: "root", gname: "root" })),
    );
    assert.equal(docker20.length, tar.length);
  });

  for (const attr of ["hello", "all"] as const) {
    test(`extracting the ${attr} closure with tar -x restores every path exactly (nix-store --dump)`, async () => {
      const paths = closure(fx[attr]);
      const tar = await collect(storePathsTar(inStore(paths)));
      const dir = makeTempDir("layer-x");
      // No warnings either (GNU tar warns about absolute names, unknown PAX keywords, bad headers).
      const x = spawnSync("tar", ["-xf", "-", "-C", dir], { input: tar });
      assert.equal(x.status, 0);
      assert.equal(x.stderr.toString(), "");
      assert.deepEqual(fs.readdirSync(join(dir, "nix/store")).sort(), paths.map((p) => p.slice(11)).sort());
      for (const p of paths) {
        const ours = run("nix-store", ["--dump", join(dir, p)]);
        assert.ok(ours.equals(run("nix-store", ["--dump", p])), p);
      }
      if (attr === "all") {
        // Long names and the 1500-byte symlink target came through PAX records.
        const raw = rawHeaders(tar);
        assert.ok(raw.some((h) => h.type === "x"));
        const target = fs.readlinkSync(join(dir, fx.tree, "links/long-target"));
        assert.equal(target.length, fs.readlinkSync(join(fx.tree, "links/long-target")).length);
        assert.ok(target.length > 1000);
      }
    });
  }

  test("entries are walked depth-first in bytewise name order (NAR order), UTF-8 names via PAX", async () => {
    const tar = await collect(storePathsTar(inStore([fx["sort-order"]])));
    const base = fx["sort-order"].slice(1);
    const names = listing(tar)
      .slice(3)
      .map((l) => l.slice(l.indexOf(base) + base.length + 1));
    const expected = fs
      .readdirSync(fx["sort-order"], { encoding: "buffer" })
      .sort(Buffer.compare)
      .flatMap((n) => (n.toString() === "dir" ? ["dir/", "dir/x"] : [n.toString()]));
    assert.deepEqual(names, expected);
    assert.ok(names.indexOf("dir/x") < names.indexOf("dir-x"));
    // Non-ASCII names get a PAX path record; ASCII ones do not.
    const raw = rawHeaders(tar);
    assert.equal(raw.filter((h) => h.type === "x").length, 4); // ä-umlaut é-acute z-日本語 Ω
  });

  test("store paths that are a file, an executable, a symlink, an empty dir, an empty file", async () => {
    const attrs = ["single-file", "single-executable", "symlink-path", "empty-dir", "empty-file"] as const;
    const tar = await collect(storePathsTar(inStore(attrs.map((a) => fx[a]))));
    const lines = listing(tar);
    const line = (a: (typeof attrs)[number]) => lines.find((l) => l.includes(fx[a].slice(1)));
    assert.match(line("single-file")!, /^-r--r--r-- 0\/0 33 .* nix\/store\/\S+-single-file$/);
    assert.match(line("single-executable")!, /^-r-xr-xr-x 0\/0 \d+ .*-single-executable$/);
    assert.match(
      line("symlink-path")!,
      new RegExp(`^lrwxrwxrwx .*-symlink-path -> ${fx.greeting}/share/greeting.txt$`),
    );
    assert.match(line("empty-dir")!, /^dr-xr-xr-x 0\/0 0 .*-empty-dir\/$/);
    assert.match(line("empty-file")!, /^-r--r--r-- 0\/0 0 .*-empty-file$/);
  });

  test("deterministic: same bytes twice, concurrently, and for any input order", async () => {
    const paths = closure(fx.all);
    const a = await collect(storePathsTar(inStore(paths)));
    const [b, c] = await Promise.all([
      collect(storePathsTar(inStore([...paths].reverse()))),
      collect(storePathsTar(inStore([paths[3], ...paths.slice(0, 3), ...paths.slice(4)]))),
    ]);
    assert.ok(a.equals(b));
    assert.ok(a.equals(c));
  });

  test("with a pool: the same bytes, in views of the pool's buffers, reused once given back", async () => {
    const paths = closure(fx.all);
    const plain = await collect(storePathsTar(inStore(paths)));
    const pool = new BufferPool(TAR_CHUNK);
    const parts: Buffer[] = [];
    const seen = new Set<ArrayBufferLike>();
    for await (const chunk of storePathsTar(inStore(paths), { pool })) {
      const c = chunk as Buffer;
      seen.add(c.buffer);
      assert.equal(c.buffer.byteLength, TAR_CHUNK, "a view of a pool buffer");
      parts.push(Buffer.from(c));
      pool.give(c);
    }
    assert.ok(Buffer.concat(parts).equals(plain));
    assert.ok(parts.length > 4, `${parts.length} chunks`);
    assert.ok(seen.size <= 3, `${seen.size} buffers for ${parts.length} chunks`);
    assert.throws(
      () => storePathsTar(inStore(paths), { pool: new BufferPool(4096) }),
      /1048576-byte buffers/,
    );
  });

  test("independent of readdir order and of the modes a tree has on disk (realPath vs storePath)", async () => {
    const work = makeTempDir("layer-order");
    const names = ["b", "a", "c-x", "c", "C", "zz", "a.b", "a-b"];
    const make = (root: string, order: string[], canonical: boolean) => {
      fs.mkdirSync(join(root, "c"), { recursive: true });
      for (const n of order) {
        if (n === "c") fs.writeFileSync(join(root, "c/inner"), "inner\n");
        else fs.writeFileSync(join(root, n), `${n}\n`, { mode: n === "zz" ? 0o755 : 0o644 });
      }
      if (canonical) {
        for (const n of order) if (n !== "c") fs.chmodSync(join(root, n), n === "zz" ? 0o555 : 0o444);
        fs.chmodSync(join(root, "c/inner"), 0o444);
        fs.chmodSync(join(root, "c"), 0o555);
        fs.chmodSync(root, 0o555);
      }
    };
    const storePath = "/nix/store/00000000000000000000000000000000-order";
    make(join(work, "one"), names, true);
    make(join(work, "two"), [...names].reverse(), false);
    const one = await collect(storePathsTar([{ storePath, realPath: join(work, "one") }]));
    const two = await collect(storePathsTar([{ storePath, realPath: join(work, "two") }]));
    assert.ok(one.equals(two));
    const l = listing(one).slice(2);
    assert.deepEqual(
      l.map((x) => x.split(" ")[0] + " " + x.slice(x.lastIndexOf("order") + 5)),
      [
        "dr-xr-xr-x /",
        "-r--r--r-- /C",
        "-r--r--r-- /a",
        "-r--r--r-- /a-b",
        "-r--r--r-- /a.b",
        "-r--r--r-- /b",
        "dr-xr-xr-x /c/",
        "-r--r--r-- /c/inner",
        "-r--r--r-- /c-x",
        "-r-xr-xr-x /zz",
      ],
    );
  });

  test("hard-linked files are written as two regular files", async () => {
    const store = makeTempDir("layer-hardlink");
    const p = join(store, "11111111111111111111111111111111-links");
    fs.mkdirSync(p);
    fs.writeFileSync(join(p, "a"), "same content\n");
    fs.linkSync(join(p, "a"), join(p, "b"));
    assert.equal(fs.statSync(join(p, "b")).nlink, 2);
    // Also a hard link shared with another store path (as the store optimiser makes).
    const q = join(store, "22222222222222222222222222222222-other");
    fs.mkdirSync(q);
    fs.linkSync(join(p, "a"), join(q, "c"));
    const tar = await collect(storePathsTar(inStore([q, p])));
    const l = listing(tar);
    const rel = (s: string) => s.slice(1);
    assert.deepEqual(l.slice(2), [
      `dr-xr-xr-x 0/0 0 1970-01-01 00:00:01 ${rel(p)}/`,
      `-r--r--r-- 0/0 13 1970-01-01 00:00:01 ${rel(p)}/a`,
      `-r--r--r-- 0/0 13 1970-01-01 00:00:01 ${rel(p)}/b`,
      `dr-xr-xr-x 0/0 0 1970-01-01 00:00:01 ${rel(q)}/`,
      `-r--r--r-- 0/0 13 1970-01-01 00:00:01 ${rel(q)}/c`,
    ]);
    // The store directory's own ancestors come first.
    const dirs = rel(store).split("/");
    assert.deepEqual(
      l.slice(0, 2),
      [1, 2].map((n) => `drwxr-xr-x 0/0 0 1970-01-01 00:00:01 ${dirs.slice(0, n).join("/")}/`),
    );
    assert.ok(rawHeaders(tar).every((h) => h.type !== "1"));
    const out = run("tar", ["-xOf", "-", `${rel(q)}/c`], { input: tar });
    assert.equal(out.toString(), "same content\n");
  });

  test("sockets and FIFOs fail with a NixociError naming the path", async () => {
    const store = makeTempDir("layer-special");
    const p = join(store, "33333333333333333333333333333333-special");
    fs.mkdirSync(p);
    fs.writeFileSync(join(p, "ok"), "ok\n");
    run("mkfifo", [join(p, "fifo")]);
    await assert.rejects(collect(storePathsTar(inStore([p]))), (e: unknown) => {
      assert.ok(e instanceof NixociError);
      assert.equal(e.input, join(p, "fifo"));
      assert.match(e.message, /FIFO/);
      return true;
    });
    fs.rmSync(join(p, "fifo"));
    const server = createServer();
    await new Promise<void>((r) => server.listen(join(p, "sock"), r));
    try {
      await assert.rejects(collect(storePathsTar(inStore([p]))), (e: unknown) => {
        assert.ok(e instanceof NixociError);
        assert.equal(e.input, join(p, "sock"));
        assert.match(e.message, /socket/);
        return true;
      });
    } finally {
      await new Promise((r) => server.close(r));
    }
    await assert.rejects(
      collect(storePathsTar(inStore([join(store, "44444444444444444444444444444444-missing")]))),
      {
        name: "NixociError",
        message: /cannot read the store path \(no such file or directory\)/,
      },
    );
  });

  test("a file that shrinks or grows while it is read fails", async () => {
    const store = makeTempDir("layer-change");
    const p = join(store, "55555555555555555555555555555555-change");
    fs.mkdirSync(p);
    const big = join(p, "big");
    for (const change of ["shrink", "grow"] as const) {
      fs.writeFileSync(big, Buffer.alloc(6 << 20, 7));
      const stream = storePathsTar(inStore([p]));
      const it = stream[Symbol.asyncIterator]();
      await it.next(); // The producer is now at most ~2 MiB into the file, waiting for the consumer.
      if (change === "shrink") fs.truncateSync(big, 1000);
      else fs.appendFileSync(big, "more");
      await assert.rejects(
        (async () => {
          for (;;) if ((await it.next()).done) break;
        })(),
        {
          name: "NixociError",
          message: change === "shrink" ? /shrank while being read/ : /grew while being read/,
        },
      );
    }
  });

  test("destroying the stream early stops the walk and closes its files", async () => {
    const fds = () => fs.readdirSync("/proc/self/fd").length;
    const before = fds();
    const stream = storePathsTar(inStore(closure(fx.all)));
    for await (const chunk of stream) {
      assert.ok((chunk as Buffer).length > 0);
      // The first chunk ends inside a file (fx.all's closure has files larger than a chunk): it is open.
      assert.ok(fds() > before, "a file of the walk is open mid-walk");
      break; // destroys the stream
    }
    assert.ok(stream.destroyed);
    // The files close as the destruction completes: poll for it, bounded.
    await until("the walk's files to be closed", 10_000, () => assert.equal(fds(), before), 10);
  });

  test("invalid input is rejected up front", () => {
    assert.throws(() => storePathsTar(inStore(["nix/store/abc-x"])), NixociError);
    assert.throws(() => storePathsTar(inStore(["/"])), NixociError);
    assert.throws(() => storePathsTar(inStore(["/abc-x"])), NixociError);
    assert.throws(() => storePathsTar(inStore(["/nix/store/abc-x/"])), NixociError);
    assert.throws(() => storePathsTar(inStore(["/nix/store/../etc"])), NixociError);
    assert.throws(() => storePathsTar(inStore([fx.hello, fx.hello])), /more than once/);
    assert.throws(() => storePathsTar(inStore([fx.hello, "/other/store/abc-x"])), /same store directory/);
  });

  test("an empty list is the store directory entries and the end blocks", async () => {
    const tar = await collect(storePathsTar([]));
    assert.equal(tar.length, 2 * 512 + 1024);
    assert.deepEqual(listing(tar), [
      "drwxr-xr-x 0/0 0 1970-01-01 00:00:01 nix/",
      "drwxr-xr-x 0/0 0 1970-01-01 00:00:01 nix/store/",
    ]);
  });
});

describe("treeTar", () => {
  const customisation: TreeEntry[] = [
    { path: "/usr/bin/env", type: "symlink", target: "/nix/store/abc-coreutils/bin/env" },
    { path: "/tmp", type: "directory", mode: 0o1777 },
    { path: "etc/passwd", type: "file", mode: 0o644, content: Buffer.from("root:x:0:0::/root:/bin/sh\n") },
    { path: "./etc", type: "directory", mode: 0o755 },
    { path: "bin", type: "symlink", target: "/nix/store/abc-busybox/bin" },
    { path: "/usr", type: "directory", mode: 0o755 },
    { path: "/usr/bin", type: "directory", mode: 0o755 },
    { path: "/entrypoint", type: "file", mode: 0o755, content: Buffer.alloc(700, "x") },
    { path: "/home/user", type: "directory", mode: 0o700, uid: 1000, gid: 100 },
    { path: "/home", type: "directory", mode: 0o755 },
  ];

  test("a customisation tree lists correctly (sorted, sticky /tmp, symlinks, files, owners)", async () => {
    const tar = await collect(treeTar(customisation));
    const T = "1970-01-01 00:00:01";
    assert.deepEqual(listing(tar), [
      `lrwxrwxrwx 0/0 0 ${T} bin -> /nix/store/abc-busybox/bin`,
      `-rwxr-xr-x 0/0 700 ${T} entrypoint`,
      `drwxr-xr-x 0/0 0 ${T} etc/`,
      `-rw-r--r-- 0/0 26 ${T} etc/passwd`,
      `drwxr-xr-x 0/0 0 ${T} home/`,
      `drwx------ 1000/100 0 ${T} home/user/`,
      `drwxrwxrwt 0/0 0 ${T} tmp/`,
      `drwxr-xr-x 0/0 0 ${T} usr/`,
      `drwxr-xr-x 0/0 0 ${T} usr/bin/`,
      `lrwxrwxrwx 0/0 0 ${T} usr/bin/env -> /nix/store/abc-coreutils/bin/env`,
    ]);
    // The sticky bit is in the header's mode field itself (with the directory's type bit in dockerd 20.10's).
    const tmpMode = (t: Buffer) => t.toString("latin1", t.indexOf("tmp/\0") + 100, t.indexOf("tmp/\0") + 107);
    assert.equal(tmpMode(tar), "0001777");
    assert.equal(
      tmpMode(await collect(treeTar(customisation, { format: TAR_FORMAT_LAYER_DOCKER20 }))),
      "0041777",
    );
    const out = run("tar", ["-xOf", "-", "etc/passwd"], { input: tar });
    assert.equal(out.toString(), "root:x:0:0::/root:/bin/sh\n");
    // Entry order is not input order.
    assert.ok(tar.equals(await collect(treeTar([...customisation].reverse()))));
  });

  test("PAX records only where ustar does not fit", async () => {
    const d100 = "d".repeat(100);
    const entries: TreeEntry[] = [
      { path: "f".repeat(100), type: "file", mode: 0o644, content: Buffer.from("a") }, // fits exactly
      { path: `${"p".repeat(150)}/${"n".repeat(100)}`, type: "file", mode: 0o644, content: Buffer.alloc(0) }, // prefix split
      { path: "q".repeat(101), type: "file", mode: 0o644, content: Buffer.alloc(0) }, // PAX path
      { path: "l100", type: "symlink", target: "t".repeat(100) }, // fits
      { path: "l101", type: "symlink", target: "t".repeat(101) }, // PAX linkpath
      { path: "üml", type: "file", mode: 0o644, content: Buffer.alloc(0) }, // PAX (non-ASCII)
      { path: `${"x".repeat(160)}/${d100}`, type: "directory", mode: 0o755 }, // PAX: 'd' * 100 + '/' > 100
    ];
    const tar = await collect(treeTar(entries));
    const raw = rawHeaders(tar);
    const paxBefore = (name: string) => {
      const i = raw.findIndex((h) => h.type !== "x" && h.name === name);
      return raw[i - 1]?.type === "x";
    };
    assert.equal(paxBefore("f".repeat(100)), false);
    assert.equal(paxBefore(`${"p".repeat(150)}/${"n".repeat(100)}`), false);
    assert.equal(paxBefore("l100"), false);
    assert.equal(raw.filter((h) => h.type === "x").length, 4);
    // Every name and target survives a round trip through GNU tar.
    const names = runText("tar", ["-tf", "-"], { input: tar }).split("\n");
    assert.deepEqual(names, [
      "f".repeat(100),
      "l100",
      "l101",
      `${"p".repeat(150)}/${"n".repeat(100)}`,
      "q".repeat(101),
      `${"x".repeat(160)}/${d100}/`,
      "üml",
    ]);
    const l = listing(tar);
    assert.ok(l.some((x) => x.endsWith(`l101 -> ${"t".repeat(101)}`)));
    // The PAX header carries no time records (only path/linkpath); its own header has mtime 0, as Go writes it.
    const text = tar.toString("latin1");
    assert.ok(!/\d+ (a|c|m)time=/.test(text));
    const pax = tar.indexOf("PaxHeaders.0");
    assert.equal(tar.toString("latin1", pax + 136, pax + 147), "00000000000");
  });

  test("bad trees are rejected", () => {
    const f = (path: string): TreeEntry => ({ path, type: "file", mode: 0o644, content: Buffer.alloc(0) });
    assert.throws(() => treeTar([f("a"), f("/a")]), /more than once/);
    assert.throws(() => treeTar([f("../etc")]), NixociError);
    assert.throws(() => treeTar([f("a//b")]), NixociError);
    assert.throws(() => treeTar([f("/")]), NixociError);
    assert.throws(() => treeTar([{ path: "d", type: "directory", mode: 0o10000 }]), /invalid mode/);
    assert.throws(() => treeTar([{ path: "l", type: "symlink", target: "" }]), /invalid symlink target/);
  });
});
