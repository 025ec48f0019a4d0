// Small helpers every benchmark uses: medians, and building a fixture closure with nix-build under an out-link
// (a GC root kept between runs, so the store caches the closure).
import { execFileSync } from "node:child_process";

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
