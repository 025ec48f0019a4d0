// `nixoci build` benchmark: a cold build of a generated closure to an OCI layout, and rebuilds with the layer
// cache, timed side by side with `tar | gzip -6` and `tar | pigz -6` of the same store paths.
//
// The closure (bench/fixtures/closure.nix: 131 store paths, about 290 MB of NAR, compressing to about half) is
// built with nix-build once; GC roots under os.tmpdir()/nixoci-bench-closure keep it between runs. Its
// `changed` argument alters one medium-sized package that two others use, which changes 5 store paths
// (the package, the packages that embed its path, and the top).
//
// Each run of the 3 (the table shows medians) times, one after the other on the same warm page cache:
//   tar | gzip -6      tar --sort=name --mtime=@1 --owner=0 --group=0 -cf - -C / PATHS | gzip -6 > /dev/null
//   tar | pigz -6      the same through pigz -6 (on every core)
//   cold build         nixoci build -q --json --cache-dir FRESH --entrypoint /bin/sh TOP -o oci:FRESH:bench
//   rebuild, no change the same TOP again with that cache, to a fresh layout: every layer reused
//   rebuild, 1 changed TOP of the changed closure with that cache, to a fresh layout
// nixoci runs as a child process (`node bin/nixoci.js`), so its times include Node's start-up (printed
// separately); its peak RSS comes from GNU time (%M), or from polling /proc/PID/status (VmHWM) without it.
// The goals from the issue are printed next to the measurements; nothing is asserted but correctness (the
// cold build's layers hold exactly the closure, the unchanged rebuild reuses every layer).
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

/** Goals from the issue. */
const GOAL_COLD_VS_GZIP = 0.7; // "0.5x of streamLayeredImage | pigz, about 0.7x of tar | gzip"
const GOAL_WARM_VS_COLD = 0.05;
const GOAL_RSS_MIB = 300;

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

/** tar of the paths (names relative to /, as in nixoci's layers) piped into `compressor`, output discarded. */
function tarPipe(paths: string[], compressor: string[]): Promise<number> {
  const relative = paths.map((p) => p.slice(1));
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

export async function benchBuild(): Promise<void> {
  const { base, changed } = ensureClosures();
  const before = new Set(base.paths);
  const differing = changed.paths.filter((p) => !before.has(p));
  console.log(
    `\nclosure: ${base.top}: ${base.paths.length} store paths, ${mb(base.narSize)} NAR; ` +
      `changed variant: ${differing.length} store paths differ (${mb(narSizeOf(differing))} NAR)`,
  );
  if (base.paths.length < 100 || base.narSize < 200e6) throw new Error("the bench closure is too small");

  const gnuTime = haveGnuTime();
  const work = fs.mkdtempSync(join(tmpdir(), "nixoci-bench-build-"));
  // Warm the page cache, so that every contender reads the closure from memory.
  await tarPipe(base.paths, ["cat"]);

  const startup: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const t0 = performance.now();
    execFileSync(process.execPath, [NIXOCI, "build", "--help"], { stdio: "ignore" });
    startup.push(performance.now() - t0);
  }

  const gzipMs: number[] = [];
  const pigzMs: number[] = [];
  const cold: NixociRun[] = [];
  const same: NixociRun[] = [];
  const warm: NixociRun[] = [];
  try {
    for (let run = 0; run < RUNS; run++) {
      gzipMs.push(await tarPipe(base.paths, ["gzip", "-6"]));
      pigzMs.push(await tarPipe(base.paths, ["pigz", "-6"]));

      const cache = join(work, `cache-${run}`);
      const c = await runNixoci(buildArgs(base.top, cache, join(work, `cold-${run}`)), gnuTime, work);
      checkCoverage(c.layers, base);
      if (c.layers.some((l) => l.status !== "built")) throw new Error("a cold build reused a layer");
      cold.push(c);

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
  const row = (runs: NixociRun[]) => ({
    ms: median(runs.map((r) => r.ms)),
    rssKiB: Math.max(...runs.map((r) => r.rssKiB)),
  });
  const coldRow = row(cold);
  const sameRow = row(same);
  const warmRow = row(warm);

  const layerNote = (runs: NixociRun[]) => {
    const layers = runs[0].layers;
    const built = layers.filter((l) => l.status === "built");
    return (
      `${built.length} of ${layers.length} layers built (${mb(built.reduce((n, l) => n + l.size, 0))}, ` +
      `${built.reduce((n, l) => n + l.paths.length, 0)} store paths)`
    );
  };
  const verdict = (ok: boolean) => (ok ? "ok" : "MISSED");

  console.log(
    `\nmedian of ${RUNS} runs; nixoci runs as a child process (Node start-up + \`build --help\`: ` +
      `${median(startup).toFixed(0)} ms); peak RSS: the most of ${RUNS} runs`,
  );
  console.log(
    "operation".padEnd(27) +
      "time".padStart(10) +
      "vs gzip -6".padStart(12) +
      "vs pigz -6".padStart(12) +
      "vs cold".padStart(9) +
      "peak RSS".padStart(10) +
      "  goal",
  );
  const line = (what: string, r: { ms: number; rssKiB?: number }, goal: string, vsCold?: number) =>
    console.log(
      what.padEnd(27) +
        sec(r.ms).padStart(10) +
        ratio(r.ms / gzip).padStart(12) +
        ratio(r.ms / pigz).padStart(12) +
        (vsCold === undefined ? "" : ratio(vsCold)).padStart(9) +
        (r.rssKiB === undefined ? "" : `${(r.rssKiB / 1024).toFixed(0)} MiB`).padStart(10) +
        (goal ? `  ${goal}` : ""),
    );
  const rssOk = (r: { rssKiB: number }) => r.rssKiB / 1024 < GOAL_RSS_MIB;
  line("tar | gzip -6", { ms: gzip }, "");
  line("tar | pigz -6", { ms: pigz }, "");
  line(
    "nixoci cold build",
    coldRow,
    `<= ${GOAL_COLD_VS_GZIP}x gzip: ${verdict(coldRow.ms / gzip <= GOAL_COLD_VS_GZIP)}; ` +
      `RSS < ${GOAL_RSS_MIB} MiB: ${verdict(rssOk(coldRow))}`,
    1,
  );
  line(
    "nixoci rebuild, 1 changed",
    warmRow,
    `<= ${GOAL_WARM_VS_COLD}x cold: ${verdict(warmRow.ms / coldRow.ms <= GOAL_WARM_VS_COLD)}; ` +
      `RSS: ${verdict(rssOk(warmRow))}`,
    warmRow.ms / coldRow.ms,
  );
  line(
    "nixoci rebuild, no change",
    sameRow,
    `no goal: the floor under any rebuild (${verdict(sameRow.ms / coldRow.ms <= GOAL_WARM_VS_COLD)} vs 5%)`,
    sameRow.ms / coldRow.ms,
  );
  console.log(
    `\ncold build: ${layerNote(cold)}, covering all ${base.paths.length} closure paths` +
      `\nrebuild, 1 changed: ${layerNote(warm)}` +
      `\nrebuild, no change: ${layerNote(same)}`,
  );
}
