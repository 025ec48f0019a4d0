// Which Docker the BuildKit tests run against: NIXOCI_DOCKER=20.10 (the default: bookworm's docker.io, dockerd on
// PATH and /usr/bin/docker; BuildKit v0.8, no buildx), 26.1 (Debian 13's, buildx 0.13) or 28.5 (unstable's, buildx
// 0.29), the latter two unpacked by scripts/install-docker-matrix.sh into $NIXOCI_DOCKER_CACHE/<series> (default
// /var/cache/nixoci/docker). A newer dockerd starts its own managed containerd, looked up on its PATH: each runs
// with its own Debian release's containerd from the containerd matrix (26.1 with trixie's 1.7, 28.5 with sid's
// 2.1), the pairing Debian ships and tests, and bookworm's runc. 20.10 keeps bookworm's containerd 1.6.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { containerdRelease, type ContainerdRelease } from "./containerd-release.js";

export const DOCKER_SERIES = ["20.10", "26.1", "28.5"] as const;
export type DockerSeries = (typeof DOCKER_SERIES)[number];

export interface DockerRelease {
  series: DockerSeries;
  /** The dockerd binary (a path, or a name looked up on PATH). */
  dockerd: string;
  /** The matching docker CLI. */
  docker: string;
  /** The directory holding the release's `docker-buildx` CLI plugin (20.10 has none). */
  buildxPluginDir?: string;
  /** Directories to put first on dockerd's PATH: its containerd, shim and docker-init, when not the system's. */
  path?: string[];
  /** The containerd dockerd runs as its managed child (20.10: bookworm's, found on PATH). */
  containerd?: ContainerdRelease;
  /** Whether the daemon can use the containerd image store (daemon.json features.containerd-snapshotter). */
  containerdStore: boolean;
}

const DEFAULT_CACHE = "/var/cache/nixoci/docker";

/** The containerd series each newer Docker runs with: its own Debian release's. */
const CONTAINERD_OF = { "26.1": "1.7", "28.5": "2.1" } as const;

/** The release NIXOCI_DOCKER names (see above); throws, naming the fix, when it is unknown or not installed. */
export function dockerRelease(env: NodeJS.ProcessEnv = process.env): DockerRelease {
  const series = env.NIXOCI_DOCKER || "20.10";
  if (!(DOCKER_SERIES as readonly string[]).includes(series))
    throw new Error(`NIXOCI_DOCKER=${series}: expected one of ${DOCKER_SERIES.join(", ")}`);
  const s = series as DockerSeries;
  if (s === "20.10")
    return {
      series: s,
      dockerd: "dockerd",
      // Debian's CLI by its full path: the machine may have a newer docker earlier on PATH, which refuses
      // BuildKit builds without buildx.
      docker: existsSync("/usr/bin/docker") ? "/usr/bin/docker" : "docker",
      containerdStore: false,
    };
  const root = join(env.NIXOCI_DOCKER_CACHE || DEFAULT_CACHE, s);
  const dockerd = join(root, "usr", "sbin", "dockerd");
  const buildxPluginDir = join(root, "usr", "libexec", "docker", "cli-plugins");
  for (const f of [dockerd, join(root, "usr", "bin", "docker"), join(buildxPluginDir, "docker-buildx")])
    if (!existsSync(f))
      throw new Error(
        `NIXOCI_DOCKER=${s}: no ${f}; run bash scripts/install-test-deps.sh (or scripts/install-docker-matrix.sh)`,
      );
  const containerd = containerdRelease({ ...env, NIXOCI_CONTAINERD: CONTAINERD_OF[s] });
  return {
    series: s,
    dockerd,
    docker: join(root, "usr", "bin", "docker"),
    buildxPluginDir,
    // containerd and its shim first, then the release's own docker-init and docker-proxy.
    path: [containerd.binDir!, join(root, "usr", "bin"), join(root, "usr", "sbin")],
    containerd,
    containerdStore: true,
  };
}

/** The release under test, resolved once. */
let current: DockerRelease | undefined;
export function dockerUnderTest(): DockerRelease {
  return (current ??= dockerRelease());
}
