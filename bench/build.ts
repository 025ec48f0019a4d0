// `nixoci build` benchmark (issue 17): cold builds of a generated closure to an OCI layout with each encoder,
// and rebuilds with the layer cache, timed side by side with tar | gzip -6 and tar | pigz -p2 -6 of the same store
// paths.
//
// The closure (bench/fixtures/closure.nix: 131 store paths, about 330 MB of NAR, compressing to about half) is
// built with nix-build once; GC roots under os.tmpdir()/nixoci-bench-closure keep it between runs. Its
// `changed` argument alters one 45 MB package (as the git) that two others use, which changes 5 store
// paths (the package, the packages that embed its path, and the top).
//
// Each run of the 3 (the table shows medians) times, one after the other on the same warm page cache, each after
// a sync (no contender pays for writing back another's files):
//   tar | gzip -6         tar --sort=name --mtime=@1 --owner=0 --group=0 -cf - -C / PATHS | gzip -6 > /dev/null
//   tar | pigz -p2 -6     the same through pigz on two threads: the anchor of the goals
//   tar | gzip -6 of the changed package: the anchor of the one-change rebuild
//   cold build, ENCODER   nixoci build -q --json --cache-dir FRESH --entrypoint /bin/sh TOP -o oci:FRESH:bench, with
//                         the default gzip encoder (ISA-L's igzip for large layers where installed), with
//                         --gzip-encoder zlib, and with --compression zstd
//   rebuild, no change    the same TOP again with the default's cache, to a fresh layout: every layer reused
//   rebuild, 1 changed    TOP of the changed closure with that cache, to a fresh layout
// Sizes are the layers' bytes against tar | gzip -6's output. nixoci runs as a child process (`node
// bin/nixoci.js`), so its times include Node's start-up (printed separately); its peak RSS comes from GNU time
// (%M), or from polling /proc/PID/status (VmHWM) without it. The goals from the issue are printed next to the
// measurements; nothing is asserted but correctness (the cold builds' layers hold exactly the closure, the
// unchanged rebuild reuses every layer).
import { execFileSync, spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { median, nixBuild } from "./common.js";

const RUNS = 3;
const FIXTURE = fileURLToPath(new URL("../../bench/fixtures/closure.nix", import.meta.url));
const NIXOCI = fileURLToPath(new URL("../../bin/nixoci.js", import.meta.url));
const GNU_TIME = "/usr/bin/time";

/** Goals from issue 17. */
const GOAL_COLD_VS_PIGZ = 0.5; // gzip (the default encoder) against tar | pigz -p2 -6 of the closure
const GOAL_SIZE_VS_GZIP = 1.1; // its layers against tar | gzip -6's output
const GOAL_ZSTD_COLD_VS_PIGZ = 0.2;
const GOAL_WARM_VS_CHANGED_GZIP = 0.3; // one package changed, against tar | gzip -6 of what changed
const GOAL_NO_CHANGE_MS = 300;
const GOAL_RSS_MIB = 300;

/** The cold builds: the default (ISA-L for large layers where installed), zlib only, zstd. */
const ENCODERS = ["auto", "zlib", "zstd"] as const;
type Encoder = (typeof ENCODERS)[number];
const ENCODER_ARGS: Record<Encoder, string[]> = {
  auto: [],
  zlib: ["--gzip-encoder", "zlib"],
  zstd: ["--compression", "zstd"],
};
const ENCODER_LABELS: Record<Encoder, string> = {
  auto: "gzip (default: ISA-L)",
  zlib: "gzip (zlib -6)",
  zstd: "zstd -3",
};

interface Closure {
  top: string;
  paths: string[];
  narSize: number;
}

interface LayerJson {
  digest: string;
  size: number;
  paths: string[];
  status: "built" | "reused";
}

interface NixociRun {
  ms: number;
  rssKiB: number;
  layers: LayerJson[];
}

const nixBuildTop = (outLink: string, extra: string[]): string => nixBuild(FIXTURE, "top", outLink, extra);

function closureOf(top: string): Closure {
  const paths = execFileSync("nix-store", ["--query", "--requisites", top])
    .toString()
    .split("\n")
    .filter(Boolean)
    .sort();
  return { top, paths, narSize: narSizeOf(paths) };
}

function narSizeOf(paths: string[]): number {
  if (!paths.length) return 0;
  return execFileSync("nix-store", ["--query", "--size", ...paths])
    .toString()
    .split("\n")
    .filter(Boolean)
    .reduce((n, size) => n + Number(size), 0);
}

/** Builds both variants of the bench closure (a no-op once built); the out-links are GC roots. */
function ensureClosures(): { base: Closure; changed: Closure } {
  const dir = join(tmpdir(), "nixoci-bench-closure");
  fs.mkdirSync(dir, { recursive: true });
  const t0 = performance.now();
  const base = nixBuildTop(join(dir, "top"), []);
  const changed = nixBuildTop(join(dir, "top-changed"), ["--argstr", "changed", "1"]);
  const s = (performance.now() - t0) / 1000;
  if (s > 2) console.log(`built the bench closures with nix-build in ${s.toFixed(1)} s`);
  return { base: closureOf(base), changed: closureOf(changed) };
}

/** Makes sure GNU time is there (Debian's `time`), installing it if missing; false: poll /proc instead. */
function haveGnuTime(): boolean {
  if (fs.existsSync(GNU_TIME)) return true;
  if (process.getuid?.() === 0) {
    console.log("installing GNU time (Debian package `time`) to measure peak RSS ...");
    const r = spawnSync("apt-get", ["install", "-y", "-q", "time"], {
      stdio: ["ignore", "ignore", "inherit"],
      env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" },
    });
    if (r.status === 0 && fs.existsSync(GNU_TIME)) return true;
  }
  console.log("GNU time is not available: peak RSS is polled from /proc/PID/status (VmHWM)");
  return false;
}

/**
 * Writes back what earlier runs left dirty (a cold build's blobs), so that no contender's time includes the kernel
 * writing out another's files.
 */
function settle(): void {
  spawnSync("sync", { stdio: "ignore" });
}

/** tar of the paths (names relative to /, as in nixoci's layers) piped into `compressor`, output discarded. */
function tarPipe(paths: string[], compressor: string[]): Promise<number> {
  const relative = paths.map((p) => p.slice(1));
  settle();
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const devNull = fs.openSync("/dev/null", "w");
    const tar = spawn(
      "tar",
      ["--sort=name", "--mtime=@1", "--owner=0", "--group=0", "-cf", "-", "-C", "/", ...relative],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    const zip = spawn(compressor[0], compressor.slice(1), { stdio: [tar.stdout, devNull, "pipe"] });
    fs.closeSync(devNull);
    tar.stdout.destroy(); // the compressor has its own copy of the pipe's read end
    let errors = "";
    tar.stderr.on("data", (d: Buffer) => (errors += d.toString()));
    zip.stderr?.on("data", (d: Buffer) => (errors += d.toString()));
    let pending = 2;
    const failed: string[] = [];
    const exited = (name: string) => (code: number | null) => {
      if (code !== 0) failed.push(`${name} exited with ${code}`);
      if (--pending > 0) return;
      const ms = performance.now() - t0;
      if (failed.length) reject(new Error(`${failed.join(", ")}: ${errors}`));
      else resolve(ms);
    };
    tar.on("error", reject).on("close", exited("tar"));
    zip.on("error", reject).on("close", exited(compressor[0]));
  });
}

/** Runs `node bin/nixoci.js ARGS`; wall time, peak RSS of the nixoci process, and its --json layers. */
function runNixoci(args: string[], gnuTime: boolean, work: string): Promise<NixociRun> {
  const rssFile = join(work, "rss");
  const cmd = gnuTime ? GNU_TIME : process.execPath;
  const argv = gnuTime ? ["-f", "%M", "-o", rssFile, process.execPath, NIXOCI, ...args] : [NIXOCI, ...args];
  settle();
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(cmd, argv, { stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    let err = "";
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    let hwm = 0;
    const poll = gnuTime
      ? undefined
      : setInterval(() => {
          try {
            const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${child.pid}/status`, "utf8"));
            if (m) hwm = Math.max(hwm, Number(m[1]));
          } catch {
            // exited
          }
        }, 10);
    child.on("error", reject);
    child.on("close", (code) => {
      const ms = performance.now() - t0;
      if (poll) clearInterval(poll);
      if (code !== 0) {
        reject(new Error(`nixoci ${args.join(" ")} exited with ${code}: ${err}`));
        return;
      }
      const rssKiB = gnuTime ? Number(fs.readFileSync(rssFile, "utf8").trim().split("\n").pop()) : hwm;
      const summary = JSON.parse(Buffer.concat(out).toString()) as { layers: LayerJson[] };
      resolve({ ms, rssKiB, layers: summary.layers });
    });
  });
}

function buildArgs(top: string, cacheDir: string, layoutDir: string): string[] {
  return [
    "build",
    "-q",
    "--json",
    "--cache-dir",
    cacheDir,
    "--entrypoint",
    "/bin/sh",
    top,
    "-o",
    `oci:${layoutDir}:bench`,
  ];
}

/** The cold build's layers must hold every closure path exactly once (and the customisation layer none). */
function checkCoverage(layers: LayerJson[], closure: Closure): void {
  const seen = new Set<string>();
  for (const l of layers) {
    for (const p of l.paths) {
      if (seen.has(p)) throw new Error(`store path ${p} is in more than one layer`);
      seen.add(p);
    }
  }
  const missing = closure.paths.filter((p) => !seen.has(p));
  if (missing.length || seen.size !== closure.paths.length) {
    throw new Error(
      `the layers hold ${seen.size} store paths, the closure has ${closure.paths.length}` +
        (missing.length ? ` (missing ${missing[0]}...)` : ""),
    );
  }
}

function rmTree(path: string): void {
  fs.rmSync(path, { recursive: true, force: true });
}

const mb = (bytes: number) => `${(bytes / 1e6).toFixed(1)} MB`;
const sec = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
const ratio = (x: number) => `${x.toFixed(2)}x`;

/** Bytes of `tar PATHS | gzip -6` (its output's size; not timed). Paths are arguments, never script text. */
function gzipOutputSize(paths: string[]): number {
  const script = 'tar --sort=name --mtime=@1 --owner=0 --group=0 -cf - -C / "$@" | gzip -6 | wc -c';
  const out = execFileSync("sh", ["-c", script, "sh", ...paths.map((p) => p.slice(1))]);
  return Number(out.toString().trim());
}

export async function benchBuild(): Promise<void> {
  const { base, changed } = ensureClosures();
  const before = new Set(base.paths);
  const differing = changed.paths.filter((p) => !before.has(p));
  const changedPackage = differing.filter((p) => /-pkg\d+-app$/.test(p));
  if (changedPackage.length !== 1)
    throw new Error("the changed closure must differ in exactly one app package");
  console.log(
    `\nclosure: ${base.top}: ${base.paths.length} store paths, ${mb(base.narSize)} NAR; ` +
      `changed variant: ${differing.length} store paths differ (${mb(narSizeOf(differing))} NAR), ` +
      `among them the changed package (${mb(narSizeOf(changedPackage))} NAR)`,
  );
  if (base.paths.length < 100 || base.narSize < 200e6) throw new Error("the bench closure is too small");

  const gnuTime = haveGnuTime();
  const work = fs.mkdtempSync(join(tmpdir(), "nixoci-bench-build-"));
  // Warm the page cache, so that every contender reads the closures from memory.
  await tarPipe([...base.paths, ...differing], ["cat"]);

  const startup: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const t0 = performance.now();
    execFileSync(process.execPath, [NIXOCI, "build", "--help"], { stdio: "ignore" });
    startup.push(performance.now() - t0);
  }

  const gzipMs: number[] = [];
  const pigzMs: number[] = [];
  const changedGzipMs: number[] = [];
  const cold: Record<Encoder, NixociRun[]> = { auto: [], zlib: [], zstd: [] };
  const same: NixociRun[] = [];
  const warm: NixociRun[] = [];
  try {
    for (let run = 0; run < RUNS; run++) {
      gzipMs.push(await tarPipe(base.paths, ["gzip", "-6"]));
      pigzMs.push(await tarPipe(base.paths, ["pigz", "-p2", "-6"]));
      changedGzipMs.push(await tarPipe(changedPackage, ["gzip", "-6"]));

      for (const encoder of ENCODERS) {
        const cache = join(work, `cache-${encoder}-${run}`);
        const c = await runNixoci(
          [...buildArgs(base.top, cache, join(work, `cold-${encoder}-${run}`)), ...ENCODER_ARGS[encoder]],
          gnuTime,
          work,
        );
        checkCoverage(c.layers, base);
        if (c.layers.some((l) => l.status !== "built")) throw new Error("a cold build reused a layer");
        cold[encoder].push(c);
      }

      const cache = join(work, `cache-auto-${run}`);
      const s = await runNixoci(buildArgs(base.top, cache, join(work, `same-${run}`)), gnuTime, work);
      if (s.layers.some((l) => l.status !== "reused")) throw new Error("an unchanged rebuild built a layer");
      same.push(s);

      const w = await runNixoci(buildArgs(changed.top, cache, join(work, `warm-${run}`)), gnuTime, work);
      checkCoverage(w.layers, changed);
      warm.push(w);

      for (const name of fs.readdirSync(work)) rmTree(join(work, name));
    }
  } finally {
    rmTree(work);
  }

  const gzip = median(gzipMs);
  const pigz = median(pigzMs);
  const changedGzip = median(changedGzipMs);
  const gzipSize = gzipOutputSize(base.paths);
  const row = (runs: NixociRun[]) => ({
    ms: median(runs.map((r) => r.ms)),
    rssKiB: Math.max(...runs.map((r) => r.rssKiB)),
    bytes: runs[0].layers.reduce((n, l) => n + l.size, 0),
  });
  const sameRow = row(same);
  const warmRow = row(warm);
  const verdict = (ok: boolean) => (ok ? "ok" : "MISSED");
  const rssOk = (r: { rssKiB: number }) => r.rssKiB / 1024 < GOAL_RSS_MIB;

  console.log(
    `\nmedian of ${RUNS} runs; nixoci runs as a child process (Node start-up + \`build --help\`: ` +
      `${median(startup).toFixed(0)} ms); peak RSS: the most of ${RUNS} runs; sizes: the layers' bytes`,
  );
  console.log(
    "operation".padEnd(32) +
      "time".padStart(9) +
      "vs pigz -p2".padStart(13) +
      "vs gzip -6".padStart(12) +
      "size".padStart(11) +
      "vs gzip -6".padStart(12) +
      "peak RSS".padStart(10) +
      "  goal",
  );
  const line = (
    what: string,
    r: { ms: number; rssKiB?: number; bytes?: number },
    vs: { pigz?: number; gzip: number },
    goal: string,
  ) =>
    console.log(
      what.padEnd(32) +
        sec(r.ms).padStart(9) +
        (vs.pigz === undefined ? "" : ratio(r.ms / vs.pigz)).padStart(13) +
        ratio(r.ms / vs.gzip).padStart(12) +
        (r.bytes === undefined ? "" : mb(r.bytes)).padStart(11) +
        (r.bytes === undefined ? "" : ratio(r.bytes / gzipSize)).padStart(12) +
        (r.rssKiB === undefined ? "" : `${(r.rssKiB / 1024).toFixed(0)} MiB`).padStart(10) +
        (goal ? `  ${goal}` : ""),
    );
  const closureVs = { pigz, gzip };
  line("tar | gzip -6", { ms: gzip, bytes: gzipSize }, closureVs, "");
  line(
    "tar | pigz -p2 -6",
    { ms: pigz },
    closureVs,
    "the anchor (the best streamLayeredImage | pigz reaches)",
  );
  for (const encoder of ENCODERS) {
    const r = row(cold[encoder]);
    const goal =
      encoder === "zstd"
        ? `<= ${GOAL_ZSTD_COLD_VS_PIGZ}x pigz: ${verdict(r.ms / pigz <= GOAL_ZSTD_COLD_VS_PIGZ)}`
        : encoder === "auto"
          ? `<= ${GOAL_COLD_VS_PIGZ}x pigz: ${verdict(r.ms / pigz <= GOAL_COLD_VS_PIGZ)}; ` +
            `size <= ${GOAL_SIZE_VS_GZIP}x: ${verdict(r.bytes / gzipSize <= GOAL_SIZE_VS_GZIP)}`
          : "the zlib -6 bytes (--gzip-encoder zlib)";
    line(`nixoci cold, ${ENCODER_LABELS[encoder]}`, r, closureVs, `${goal}; RSS: ${verdict(rssOk(r))}`);
  }
  line("tar | gzip -6 of the changed package", { ms: changedGzip }, { gzip: changedGzip }, "");
  line(
    "nixoci rebuild, 1 changed",
    { ms: warmRow.ms, rssKiB: warmRow.rssKiB },
    { gzip: changedGzip },
    `<= ${GOAL_WARM_VS_CHANGED_GZIP}x its gzip -6: ${verdict(warmRow.ms / changedGzip <= GOAL_WARM_VS_CHANGED_GZIP)}`,
  );
  line(
    "nixoci rebuild, no change",
    { ms: sameRow.ms, rssKiB: sameRow.rssKiB },
    closureVs,
    `<= ${GOAL_NO_CHANGE_MS / 1000} s: ${verdict(sameRow.ms <= GOAL_NO_CHANGE_MS)}`,
  );
  const layerNote = (runs: NixociRun[]) => {
    const layers = runs[0].layers;
    const built = layers.filter((l) => l.status === "built");
    return (
      `${built.length} of ${layers.length} layers built (${mb(built.reduce((n, l) => n + l.size, 0))}, ` +
      `${built.reduce((n, l) => n + l.paths.length, 0)} store paths)`
    );
  };
  console.log(
    `\ncold build: ${layerNote(cold.auto)}, covering all ${base.paths.length} closure paths` +
      `\nrebuild, 1 changed: ${layerNote(warm)}` +
      `\nrebuild, no change: ${layerNote(same)}`,
  );
}
