// A machine without Nix for tests: the pristine Debian 12 root scripts/install-no-nix-root.sh caches (no nix-bin,
// no /nix, a user builder, xz/zstd/bzip2), run as that user with this machine's Node.js and this checkout's nixoci.
//
// The cached root is never changed: each command runs in a mount namespace of its own (unshare --mount) where the
// root is the read-only lower layer of an overlay whose upper layer is this test's (so the user's home, store and
// layer cache carry over from one command to the next, which therefore must not overlap). Into it go, read-only:
// this machine's `node` and any library it loads that the root lacks (a user's installed Node.js), and the project's
// bin/, dist/, node_modules/, proto/ and package.json at /opt/nixoci (`nixoci` on PATH); a directory of the test
// is /exchange, the user's, for what the host side reads and writes. /proc and /dev are mounted for Node. Every
// mount belongs to the namespace, which ends with the command: nothing can be left mounted. The network namespace
// is the host's, so servers the test runs on loopback are reachable from inside, and the reverse.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { chownSync, existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./cli.js";
import { run } from "./run.js";

export const NO_NIX_ROOT = process.env.NIXOCI_NO_NIX_ROOT ?? "/var/cache/nixoci/no-nix-root";
export const BUILDER = { name: "builder", uid: 1500, home: "/home/builder" };

/** The root a command sees: the cached root under the test's overlay, with the mounts above. */
const SETUP = String.raw`
set -eu
r=$NN_MERGED
mount -t overlay overlay -o "lowerdir=$NN_LOWER,upperdir=$NN_UPPER,workdir=$NN_WORK" "$r"
mount -t proc proc "$r/proc"
mount --rbind /dev "$r/dev"
# A bind mount needs a mount point of the source's kind.
bind_ro() {
  if [ -d "$1" ]; then mkdir -p "$2"; else mkdir -p "$(dirname "$2")" && touch "$2"; fi
  mount --bind -o ro "$1" "$2"
}
for x in bin dist node_modules proto package.json; do bind_ro "$NN_PROJECT/$x" "$r/opt/nixoci/$x"; done
bind_ro "$NN_NODE" "$r/usr/local/bin/node"
ln -sfn /opt/nixoci/bin/nixoci.js "$r/usr/local/bin/nixoci"
for lib in $NN_LIBS; do [ -e "$r$lib" ] || bind_ro "$lib" "$r$lib"; done
mkdir -p "$r/exchange"
mount --bind "$NN_EXCHANGE" "$r/exchange"
exec chroot "$r" setpriv --reuid="$NN_USER" --regid="$NN_USER" --init-groups \
  env -i HOME="$NN_HOME" USER="$NN_USER" LANG=C.UTF-8 PATH=/usr/local/bin:/usr/bin:/bin \
  sh -ec "$NN_SCRIPT" sh "$@"
`;

export interface NoNixRoot {
  /** The host's side of /exchange (owned by the user). */
  exchange: string;
  /** The overlay's upper layer: everything commands in the root wrote (a /nix there would be one they made). */
  upper: string;
  /** Runs a shell script in the root as the user (`$1`... = args); its stdout, or an Error with its stderr. */
  sh(script: string, args?: string[], opts?: { timeoutMs?: number }): string;
  /** Starts a shell script in the root as the user; the child's pid is the script's (exec a daemon to stop it). */
  spawn(script: string, args?: string[]): ChildProcess;
}

/**
 * The cached root, opened for this test under `work` (a fresh directory of the test). Fails, naming the install
 * step, when the root is not installed.
 */
export function openNoNixRoot(work: string): NoNixRoot {
  const marker = join(NO_NIX_ROOT, ".installed");
  if (!existsSync(marker))
    throw new Error(
      `no Nix-less Debian root at ${NO_NIX_ROOT} (${marker} missing): run scripts/install-no-nix-root.sh ` +
        "(scripts/install-test-deps.sh, which the test command runs, calls it)",
    );
  const dirs = Object.fromEntries(
    ["upper", "overlay-work", "merged", "exchange"].map((d) => [d, join(work, d)]),
  ) as Record<"upper" | "overlay-work" | "merged" | "exchange", string>;
  for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
  chownSync(dirs.exchange, BUILDER.uid, BUILDER.uid);
  const env = (script: string): NodeJS.ProcessEnv => ({
    PATH: process.env.PATH,
    NN_LOWER: NO_NIX_ROOT,
    NN_UPPER: dirs.upper,
    NN_WORK: dirs["overlay-work"],
    NN_MERGED: dirs.merged,
    NN_EXCHANGE: dirs.exchange,
    NN_PROJECT: ROOT,
    NN_NODE: process.execPath,
    NN_LIBS: nodeLibraries().join(" "),
    NN_USER: BUILDER.name,
    NN_HOME: BUILDER.home,
    NN_SCRIPT: script,
  });
  const argv = (args: string[]): string[] => [
    "--mount",
    "--propagation",
    "private",
    "--",
    "sh",
    "-c",
    SETUP,
    "sh",
    ...args,
  ];
  return {
    exchange: dirs.exchange,
    upper: dirs.upper,
    sh(script, args = [], opts = {}) {
      const r = spawnSync("unshare", argv(args), {
        env: env(script),
        maxBuffer: 1 << 30,
        timeout: opts.timeoutMs ?? 300_000,
      });
      if (r.error || r.status !== 0)
        throw new Error(
          `in the Nix-less root: ${script.trim().split("\n")[0]}: ${r.error?.message ?? (r.signal ? `killed by ${r.signal}` : `exited ${r.status}`)}\n${r.stderr.toString().trim()}`,
        );
      return r.stdout.toString();
    },
    spawn(script, args = []) {
      return spawn("unshare", argv(args), { env: env(script), stdio: ["ignore", "pipe", "pipe"] });
    },
  };
}

let libs: string[] | undefined;

/** The absolute paths of the shared libraries this machine's node loads (the loader included). */
function nodeLibraries(): string[] {
  libs ??= run("ldd", [process.execPath])
    .toString()
    .split("\n")
    .map((l) => /(\/\S+) \(0x/.exec(l)?.[1])
    .filter((p): p is string => p !== undefined);
  return libs;
}
