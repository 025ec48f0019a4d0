// Small helpers every benchmark uses: medians, and building a fixture closure with nix-build under an out-link
// (a GC root kept between runs, so the store caches the closure).
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** `nix-build FILE -A ATTR --out-link OUTLINK EXTRA...`; its output path. */
export function nixBuild(file: string, attr: string, outLink: string, extra: string[] = []): string {
  return execFileSync("nix-build", ["--max-jobs", "2", file, "-A", attr, "--out-link", outLink, ...extra], {
    stdio: ["ignore", "pipe", "inherit"],
  })
    .toString()
    .trim();
}

/** CPU time (user + system, ms; 10 ms resolution) a live process has used so far, from /proc/PID/stat; 0 if gone. */
export function cpuMs(pid: number | undefined): number {
  if (pid === undefined) return 0;
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  } catch {
    return 0;
  }
  // Fields after the command name (which may hold spaces, hence the last ")"): utime and stime are the 12th and
  // 13th, in clock ticks (100 a second on Linux).
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) * 10;
}
