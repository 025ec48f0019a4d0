// NAR benchmark: our dumpPath/restoreNar against `nix-store --dump`/`--restore` on the same tree.
//
// A deterministic tree (a 290 MB NAR: 10-50 MB files, 4000 files of 1-64 KiB in nested directories,
// symlinks, executables, empty files and directories) is generated once and cached under
// os.tmpdir()/nixoci-bench-tree. Each measurement runs 3 times; the table shows medians and the ratio
// ours / nix-store (nix-store always runs as a process, output to /dev/null, input from the NAR file).
//   dump, in-proc.          dumpPathTo(tree, createWriteStream("/dev/null")) in this process
//   dump, in-proc., pipe()  pipeline(dumpPath(tree), createWriteStream("/dev/null")) in this process
//   dump, child             a fresh node process running dumpPathTo(tree, process.stdout) > /dev/null
//   restore, ...            restoreNar(createReadStream(nar), dest), in this process or in a fresh one,
//                           into os.tmpdir() and, if available, a tmpfs (/dev/shm)
// Child rows include Node's start-up (printed separately) and report the child's peak RSS. Before timing,
// the bench checks that our dump is byte-identical (same SHA-256) to nix-store's, and that our restore
// dumps back to it: speed bought with wrong output would be worthless.
import { execFileSync, spawnSync } from "node:child_process";
import { createCipheriv } from "node:crypto";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { dumpPath, dumpPathTo, narHashOfPath } from "../src/nix/nar-writer.js";
import { restoreNar } from "../src/nix/nar-restore.js";

const TREE_VERSION = "v1";
const RUNS = 3;

const writerUrl = new URL("../src/nix/nar-writer.js", import.meta.url).href;
const restoreUrl = new URL("../src/nix/nar-restore.js", import.meta.url).href;

/** Deterministic pseudo-random bytes: an AES-128-CTR keystream. */
class Bytes {
  private readonly cipher = createCipheriv("aes-128-ctr", Buffer.alloc(16, 7), Buffer.alloc(16, 0));
  private seed = 12345;
  take(n: number): Buffer {
    return this.cipher.update(Buffer.alloc(n));
  }
  /** A deterministic integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    this.seed = (Math.imul(this.seed, 1103515245) + 12345) >>> 0;
    return lo + (this.seed % (hi - lo + 1));
  }
}

function generateTree(dir: string): void {
  const rnd = new Bytes();
  fs.mkdirSync(dir, { recursive: true });
  // Large files.
  fs.mkdirSync(join(dir, "big"));
  for (const mb of [10, 20, 30, 40, 50]) {
    const fd = fs.openSync(join(dir, "big", `blob-${mb}M`), "wx");
    for (let i = 0; i < mb; i++) fs.writeSync(fd, rnd.take(1 << 20));
    fs.closeSync(fd);
  }
  // Thousands of small files in nested directories.
  let n = 0;
  for (let a = 0; a < 40; a++) {
    const da = join(dir, `pkg-${a.toString().padStart(2, "0")}`);
    fs.mkdirSync(join(da, "share", "empty"), { recursive: true });
    for (let b = 0; b < 5; b++) {
      const db = join(da, b % 2 ? `lib${b}` : `Bin${b}`, "nested", `level-${b}`);
      fs.mkdirSync(db, { recursive: true });
      for (let c = 0; c < 20; c++) {
        const name = join(db, `file-${c}${c % 3 ? ".so" : ".txt"}`);
        fs.writeFileSync(name, rnd.take(rnd.int(1024, 64 * 1024)), { mode: n % 7 === 0 ? 0o755 : 0o644 });
        n++;
      }
      fs.symlinkSync(`file-0.txt`, join(db, "link-rel"));
      fs.symlinkSync(`/nix/store/00000000000000000000000000000000-dep-${a}/lib`, join(db, "link-abs"));
      fs.symlinkSync(`../missing-${b}`, join(db, "link-dangling"));
    }
    fs.writeFileSync(join(da, "empty-file"), "");
  }
}

function ensureTree(): { tree: string; nar: string } {
  const base = join(tmpdir(), "nixoci-bench-tree");
  const tree = join(base, "tree");
  const nar = join(base, "tree.nar");
  const marker = join(base, `.complete-${TREE_VERSION}`);
  if (!fs.existsSync(marker)) {
    console.log(`generating the benchmark tree in ${tree} ...`);
    fs.rmSync(base, { recursive: true, force: true });
    generateTree(tree);
    execFileSync("sh", ["-c", 'nix-store --dump "$1" > "$2"', "sh", tree, nar]);
    fs.writeFileSync(marker, "");
  }
  return { tree, nar };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

async function time(f: () => unknown): Promise<number> {
  const t0 = performance.now();
  await f();
  return performance.now() - t0;
}

function spawnTimed(
  cmd: string,
  args: string[],
  stdin: number | "ignore",
  stdout: number | "ignore",
): number {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { stdio: [stdin, stdout, "pipe"] });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed: ${r.stderr}`);
  return ms;
}

/** Runs a node child process with `script` (an ES module body); returns its wall time and peak RSS (KiB). */
function nodeChild(
  script: string,
  args: string[],
  stdout: number | "ignore",
): { ms: number; rssKiB: number } {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, ["--input-type=module", "-e", script, ...args], {
    stdio: ["ignore", stdout, "pipe"],
  });
  const ms = performance.now() - t0;
  if (r.status !== 0) throw new Error(`node child failed: ${r.stderr}`);
  const m = /maxRSS=(\d+)/.exec(r.stderr.toString());
  return { ms, rssKiB: m ? Number(m[1]) : NaN };
}

const REPORT_RSS = `process.stderr.write("maxRSS=" + process.resourceUsage().maxRSS + "\\n");`;

function sha256File(path: string): string {
  return execFileSync("sh", ["-c", 'sha256sum < "$1"', "sh", path]).toString().slice(0, 64);
}

function nixDumpSha256(path: string): string {
  return execFileSync("sh", ["-c", 'nix-store --dump "$1" | sha256sum', "sh", path]).toString().slice(0, 64);
}

function rmTree(path: string): void {
  if (!fs.existsSync(path)) return;
  execFileSync("chmod", ["-R", "u+w", path]);
  fs.rmSync(path, { recursive: true, force: true });
}

interface Row {
  what: string;
  nixMs: number;
  oursMs: number;
  rssKiB?: number;
}

export async function benchNar(): Promise<void> {
  const { tree, nar } = ensureTree();
  const narSize = fs.statSync(nar).size;
  const files = Number(execFileSync("sh", ["-c", 'find "$1" -type f | wc -l', "sh", tree]).toString().trim());
  console.log(`tree: ${tree}: ${(narSize / 1e6).toFixed(0)} MB NAR, ${files} files`);

  // Correctness first: speed bought with wrong output is worthless.
  const expected = sha256File(nar);
  if (nixDumpSha256(tree) !== expected) throw new Error("the cached NAR is stale: remove the bench tree");
  const ours = await narHashOfPath(tree);
  if (ours.narHash.toString("hex") !== expected || ours.narSize !== narSize) {
    throw new Error("dumpPath output differs from nix-store --dump");
  }
  const work = fs.mkdtempSync(join(tmpdir(), "nixoci-bench-restore-"));
  const check = join(work, "check");
  await restoreNar(fs.createReadStream(nar), check, { input: nar });
  if (nixDumpSha256(check) !== expected) throw new Error("restoreNar output dumps differently");
  rmTree(check);
  console.log("dump and restore output verified against nix-store (sha256 " + expected + ")");

  const devNull = fs.openSync("/dev/null", "w");
  const rows: Row[] = [];
  const measure = async (
    what: string,
    nixRun: () => number,
    oursRun: () => Promise<number> | { ms: number; rssKiB: number },
    cleanup: () => void = () => undefined,
  ) => {
    const nixMs: number[] = [];
    const oursMs: number[] = [];
    const rss: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      nixMs.push(nixRun());
      cleanup();
      const r = await oursRun();
      if (typeof r === "number") oursMs.push(r);
      else {
        oursMs.push(r.ms);
        rss.push(r.rssKiB);
      }
      cleanup();
    }
    rows.push({
      what,
      nixMs: median(nixMs),
      oursMs: median(oursMs),
      rssKiB: rss.length ? Math.max(...rss) : undefined,
    });
  };

  // --- dump ---
  await measure(
    "dump, in-proc.",
    () => spawnTimed("nix-store", ["--dump", tree], "ignore", devNull),
    () => time(() => dumpPathTo(tree, fs.createWriteStream("/dev/null"))),
  );
  await measure(
    "dump, in-proc., pipe()",
    () => spawnTimed("nix-store", ["--dump", tree], "ignore", devNull),
    () => time(() => pipeline(dumpPath(tree), fs.createWriteStream("/dev/null"))),
  );
  await measure(
    "dump, child",
    () => spawnTimed("nix-store", ["--dump", tree], "ignore", devNull),
    () =>
      nodeChild(
        `import { dumpPathTo } from ${JSON.stringify(writerUrl)};
         await dumpPathTo(process.argv[1], process.stdout);
         ${REPORT_RSS}`,
        [tree],
        devNull,
      ),
  );

  // --- restore --- into os.tmpdir() (usually a disk, where writeback dominates) and, if there is one,
  // into a tmpfs (/dev/shm), where the CPU cost of the restore itself shows.
  const targets: [string, string][] = [["", work]];
  let shm: string | undefined;
  try {
    shm = fs.mkdtempSync("/dev/shm/nixoci-bench-restore-");
    targets.push([", tmpfs", shm]);
  } catch {
    // no tmpfs
  }
  for (const [label, dir] of targets) {
    const dest = join(dir, "out");
    const nixRestore = () => {
      const fd = fs.openSync(nar, "r");
      try {
        return spawnTimed("nix-store", ["--restore", dest], fd, "ignore");
      } finally {
        fs.closeSync(fd);
      }
    };
    await measure(
      `restore${label}, in-proc.`,
      nixRestore,
      () =>
        time(() => restoreNar(fs.createReadStream(nar, { highWaterMark: 1 << 20 }), dest, { input: nar })),
      () => rmTree(dest),
    );
    await measure(
      `restore${label}, child`,
      nixRestore,
      () =>
        nodeChild(
          `import { restoreNar } from ${JSON.stringify(restoreUrl)};
           import { createReadStream } from "node:fs";
           const source = createReadStream(process.argv[1], { highWaterMark: 1 << 20 });
           await restoreNar(source, process.argv[2], { input: "nar" });
           ${REPORT_RSS}`,
          [nar, dest],
          "ignore",
        ),
      () => rmTree(dest),
    );
  }
  if (shm) rmTree(shm);

  // What a child pays before doing any work: Node's start-up and loading our module.
  const startup: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    startup.push(nodeChild(`await import(${JSON.stringify(writerUrl)}); ${REPORT_RSS}`, [], "ignore").ms);
  }

  fs.closeSync(devNull);
  rmTree(work);

  console.log(
    `\nmedian of ${RUNS} runs; a child node process spends ${median(startup).toFixed(0)} ms starting up`,
  );
  console.log(
    "operation".padEnd(26) +
      "nix-store".padStart(11) +
      "nixoci".padStart(11) +
      "ratio".padStart(8) +
      "peak RSS".padStart(11),
  );
  for (const r of rows) {
    console.log(
      r.what.padEnd(26) +
        `${r.nixMs.toFixed(0)} ms`.padStart(11) +
        `${r.oursMs.toFixed(0)} ms`.padStart(11) +
        `${(r.oursMs / r.nixMs).toFixed(2)}x`.padStart(8) +
        (r.rssKiB === undefined ? "" : `${(r.rssKiB / 1024).toFixed(0)} MiB`.padStart(11)),
    );
  }
}
