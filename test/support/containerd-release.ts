// Which containerd the tests run against: NIXOCI_CONTAINERD=1.6 (the default: bookworm's package, containerd and
// ctr on PATH), 1.7 or 2.1 (Debian 13's and unstable's, unpacked by scripts/install-containerd-matrix.sh into
// $NIXOCI_CONTAINERD_CACHE/<series>, default /var/cache/nixoci/containerd). A version runs with its own ctr and
// its own runc shim: startContainerd puts the version's usr/bin first on containerd's PATH, where it looks for
// containerd-shim-runc-v2. The config schema follows the major version: 1.x reads `version = 2` with the CRI
// plugin as one table, 2.x `version = 3` with CRI split into io.containerd.cri.v1.images / .runtime.
import { existsSync } from "node:fs";
import { join } from "node:path";

export const CONTAINERD_SERIES = ["1.6", "1.7", "2.1"] as const;
export type ContainerdSeries = (typeof CONTAINERD_SERIES)[number];

export interface ContainerdRelease {
  series: ContainerdSeries;
  major: number;
  /** containerd's config schema version for this release. */
  configVersion: 2 | 3;
  /** The containerd binary (a path, or a name looked up on PATH). */
  containerd: string;
  /** The matching ctr. */
  ctr: string;
  /** The directory to put first on containerd's PATH (its shims), when not the system's. */
  binDir?: string;
}

const DEFAULT_CACHE = "/var/cache/nixoci/containerd";

/** The release NIXOCI_CONTAINERD names (see above); throws, naming the fix, when it is unknown or not installed. */
export function containerdRelease(env: NodeJS.ProcessEnv = process.env): ContainerdRelease {
  const series = env.NIXOCI_CONTAINERD || "1.6";
  if (!(CONTAINERD_SERIES as readonly string[]).includes(series))
    throw new Error(`NIXOCI_CONTAINERD=${series}: expected one of ${CONTAINERD_SERIES.join(", ")}`);
  const s = series as ContainerdSeries;
  const major = Number(s.split(".")[0]);
  const configVersion = major >= 2 ? 3 : 2;
  if (s === "1.6") return { series: s, major, configVersion, containerd: "containerd", ctr: "ctr" };
  const binDir = join(env.NIXOCI_CONTAINERD_CACHE || DEFAULT_CACHE, s, "usr", "bin");
  if (!existsSync(join(binDir, "containerd")))
    throw new Error(
      `NIXOCI_CONTAINERD=${s}: no containerd in ${binDir}; run bash scripts/install-test-deps.sh (or scripts/install-containerd-matrix.sh)`,
    );
  return {
    series: s,
    major,
    configVersion,
    containerd: join(binDir, "containerd"),
    ctr: join(binDir, "ctr"),
    binDir,
  };
}

/** The release under test, resolved once. */
let current: ContainerdRelease | undefined;
export function containerdUnderTest(): ContainerdRelease {
  return (current ??= containerdRelease());
}
