#!/usr/bin/env bash
# The fresh-machine drill: proves the README's two commands on a brand-new Debian 12, not on this (long prepared)
# machine. It makes a minimal Debian 12 root (`debootstrap --variant=minbase bookworm`, from the mirror apt is
# configured with), copies in this machine's Node.js as the "already installed" Node, puts a clean clone of the
# project's HEAD in /root/nixoci and, inside the root:
#   1. the main job: `bash scripts/serve-example.sh`, until `skopeo` (installed as the README says a user would)
#      inspects and copies shell/hello from it;
#   2. the test command: `npm test` (its `npm ci` half runs from this machine in the root's copy of the project:
#      the npm registry is reachable from here, not from inside the root).
# Exits with the test command's status. CI runs this (.ci/run), so its verdict is a new machine's verdict.
#
#   bash scripts/fresh-root.sh [--main-job-only | --tests-only] [--keep] [--shell] [-- TEST-FILTER...]
#
# The pristine base is cached in $FRESH_ROOT_CACHE (default /var/cache/nixoci/fresh-root) and copied per run, so
# only the first run pays for debootstrap (~70 s). Each run gets its own mount and PID namespaces: the root's binds
# of /proc, /sys and /dev and every mount the tests make vanish with it, and every process started inside (servers,
# daemons the tests leaked) is killed when the run ends. The copy is deleted unless --keep.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
project=$(cd "$here/.." && pwd)
source "$here/lib-apt.sh"

main_job=1 tests=1 keep=0 shell=0 filters=()
while (($#)); do
  case $1 in
  --main-job-only) tests=0 ;;
  --tests-only) main_job=0 ;;
  --keep) keep=1 ;;
  --shell) shell=1 ;;
  --) shift && filters=("$@") && break ;;
  *) echo "fresh-root: unknown argument '$1' (see the header of $0)" >&2 && exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "fresh-root: must run as root (debootstrap, chroot, mounts)" >&2 && exit 2; }

# The Debian mirror this machine's apt uses.
mirror=$(debian_mirror) || { echo "fresh-root: no bookworm mirror in /etc/apt/sources.list{,.d}" >&2 && exit 1; }

apt_ensure debootstrap git
cache=${FRESH_ROOT_CACHE:-/var/cache/nixoci/fresh-root}
base=$cache/bookworm-minbase
mkdir -p "$cache"
if [ ! -f "$base/.mirror" ] || [ "$(cat "$base/.mirror")" != "$mirror" ]; then
  echo "fresh-root: debootstrap --variant=minbase bookworm from $mirror into $base (once)" >&2
  tmp=$(mktemp -d "$cache/.debootstrap.XXXXXX")
  if ! debootstrap --variant=minbase bookworm "$tmp" "$mirror" >"$tmp.log" 2>&1; then
    tail -n 20 "$tmp.log" >&2
    rm -rf "$tmp" "$tmp.log"
    echo "fresh-root: debootstrap failed (log above)" >&2
    exit 1
  fi
  rm -f "$tmp.log"
  echo "$mirror" >"$tmp/.mirror"
  rm -rf "$base" && mv "$tmp" "$base"
fi
# A root's / is 0755, as on any machine; mktemp made this one 0700, and then Nix's build users cannot reach
# /bin/sh ("executing '/bin/sh': Permission denied"). Also mends a base cached before this line existed.
chmod 755 "$base"

# Runs killed before their cleanup leave their copies: remove those whose run (the pid in the name) is gone.
for old in /var/tmp/nixoci-fresh-root.*; do
  [ -d "$old" ] || continue
  pid=${old#/var/tmp/nixoci-fresh-root.}
  pid=${pid%%.*}
  [[ $pid =~ ^[0-9]+$ ]] && ! kill -0 "$pid" 2>/dev/null || continue
  findmnt -rn -o TARGET | grep -q "^$old/" || rm -rf "$old"
done
work=$(mktemp -d "/var/tmp/nixoci-fresh-root.$$.XXXXXX")
root=$work/root
cleanup() {
  status=$?
  # Nothing is mounted here from this namespace (binds live in the run's own namespace); refuse to delete if
  # something is, rather than deleting through a bind into the host's /dev.
  if findmnt -rn -o TARGET | grep -q "^$work/"; then
    echo "fresh-root: mounts remain under $work; not deleting it" >&2
  elif ((keep)); then
    echo "fresh-root: kept $root" >&2
  else
    rm -rf "$work"
  fi
  exit $status
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
echo "fresh-root: copying the pristine base to $root" >&2
cp -a "$base" "$root"
rm -f "$root/.mirror"

# What a new machine of this network has configured: name resolution and apt's sources and options.
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
rm -f "$root/etc/apt/sources.list"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources /etc/apt/apt.conf.d/*; do
  [ -f "$f" ] && cp "$f" "$root$f"
done
cp -a /etc/apt/auth.conf.d/. "$root/etc/apt/auth.conf.d/" 2>/dev/null || true

# The "already installed" Node, as this machine has it: the nodejs package's files (node, headers) and the global
# npm/corepack as they are now (npm upgrades itself in place, beyond the package's file list).
if dpkg-query -W nodejs >/dev/null 2>&1; then
  dpkg -L nodejs | while read -r f; do
    [ -e "$f" ] || [ -L "$f" ] || continue
    if [ -d "$f" ] && [ ! -L "$f" ]; then mkdir -p "$root$f"; else cp -a "$f" "$root$f"; fi
  done
else
  cp "$(command -v node)" "$root/usr/bin/node"
fi
npm_cli=$(readlink -f "$(command -v npm)") # .../lib/node_modules/npm/bin/npm-cli.js
node_prefix=${npm_cli%/npm/bin/npm-cli.js}
for d in "$node_prefix"/*; do
  rm -rf "$root$d" && mkdir -p "$root$(dirname "$d")" && cp -a "$d" "$root$d"
done
for b in npm npx corepack; do
  [ -L "/usr/bin/$b" ] && cp -a "/usr/bin/$b" "$root/usr/bin/$b"
done
[ -f /usr/etc/npmrc ] && mkdir -p "$root/usr/etc" && cp /usr/etc/npmrc "$root/usr/etc/npmrc"

# A clean clone of the project (HEAD: commit what you want tested), its npm packages installed from here.
git clone --quiet --no-hardlinks "$project" "$root/root/nixoci"
echo "fresh-root: testing $(git -C "$root/root/nixoci" log -1 --format='%h %s')" >&2
(cd "$root/root/nixoci" && npm ci --no-audit --no-fund --loglevel=error)

# Inside the root. The README's commands, run as a user would, from the project directory.
cat >"$root/root/drill.sh" <<'DRILL'
set -euo pipefail
cd /root/nixoci
if [ "$MAIN_JOB" = 1 ]; then
  echo "fresh-root: main job: bash scripts/serve-example.sh" >&2
  # The README's LISTEN default, unless this machine's port 5000 is taken.
  listen=127.0.0.1:5000
  if node -e 'const s=require("net").createServer().once("error",()=>process.exit(1)).listen(5000,"127.0.0.1",()=>s.close())'; then :; else
    listen=127.0.0.1:$(node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})')
  fi
  LISTEN=$listen bash scripts/serve-example.sh >/root/serve.log 2>&1 &
  serve=$!
  # "then, from another shell": a user installs the client the README uses.
  source scripts/lib-apt.sh
  apt_ensure skopeo
  deadline=$((SECONDS + 900))
  until skopeo inspect --tls-verify=false "docker://$listen/shell/hello" >/root/inspect.json 2>/root/inspect.err; do
    if ! kill -0 "$serve" 2>/dev/null; then
      echo "fresh-root: the main job exited before serving shell/hello; its output:" >&2
      tail -n 40 /root/serve.log >&2
      exit 1
    fi
    if ((SECONDS > deadline)); then
      echo "fresh-root: shell/hello not served within 900 s; last skopeo error: $(tail -n1 /root/inspect.err)" >&2
      tail -n 40 /root/serve.log >&2
      exit 1
    fi
    sleep 2
  done
  skopeo copy --quiet --src-tls-verify=false "docker://$listen/shell/hello" oci:/root/hello-oci:latest
  echo "fresh-root: main job OK: skopeo pulled shell/hello ($(grep -c '"sha256:' /root/inspect.json) digests in inspect)" >&2
  # The README's client lines that need no daemon (skopeo, nix), as written: only the port may differ.
  awk '/<!-- readme-check:/ {f = 1; next} f && /^```sh/ {g = 1; next} g && /^```/ {exit} g {print}' README.md |
    sed -e ':a' -e '/\\$/N; s/\\\n//; ta' | grep -E '^(skopeo|nix) ' | sed "s/127\.0\.0\.1:5000/$listen/g" >/root/readme-lines.sh
  if [ "$(wc -l </root/readme-lines.sh)" -lt 2 ]; then
    echo "fresh-root: the README's skopeo and nix lines were not found after its readme-check marker" >&2
    exit 1
  fi
  while IFS= read -r line; do
    echo "fresh-root: README: $line" >&2
    if ! bash -ec "$line" >/root/readme.out 2>&1; then
      echo "fresh-root: the README's line failed:" >&2
      tail -n 20 /root/readme.out >&2
      exit 1
    fi
  done </root/readme-lines.sh
  ls copy-store/nix/store | grep -q -- '-hello$' || { echo "fresh-root: nix copy left no hello in ./copy-store" >&2; exit 1; }
  echo "fresh-root: the README's skopeo and nix copy lines work as written" >&2
  kill "$serve"
  wait "$serve" || true
fi
if [ "$TESTS" = 1 ]; then
  echo "fresh-root: test command: npm test (npm ci ran from the host)" >&2
  npm test -- "$@"
fi
DRILL

# Own mount and PID namespaces: binds and test mounts are private to the run, and when its first process exits
# the kernel kills every other process of the run. The root becomes the namespace's real root (pivot_root, not just
# chroot), as / is on a machine: dockerd and runc remount / as a recursive slave (EINVAL unless it is a mount
# point), and nix returns to its original mount namespace to run git for fetchGit — which, from a mere chroot,
# would land in the host's /.
run_inside() {
  unshare --mount --pid --fork --propagation private -- bash -c '
    set -e
    root=$1; shift
    mount --bind "$root" "$root"
    mount -t proc proc "$root/proc"
    mount --rbind /sys "$root/sys"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=755 tmpfs "$root/run"
    old=$(mktemp -d "$root/.host-root.XXXXXX")
    old=${old#"$root"}
    cd "$root"
    pivot_root . ".$old"
    # The containerd and Docker matrix settings (scripts/run-tests.mjs), when set, reach the test command as they are.
    pass=()
    for v in NIXOCI_CONTAINERD NIXOCI_CONTAINERD_MATRIX NIXOCI_DOCKER NIXOCI_DOCKER_MATRIX; do
      if [ -n "${!v+set}" ]; then pass+=("$v=${!v}"); fi
    done
    exec chroot . /bin/bash -c "umount -l \"\$1\" && rmdir \"\$1\" && shift && exec \"\$@\"" - "$old" \
      /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" CI="${CI:-}" "${pass[@]}" \
      PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin MAIN_JOB="$MAIN_JOB" TESTS="$TESTS" "$@"
  ' fresh-root "$root" "$@"
}
export MAIN_JOB=$main_job TESTS=$tests
if ((shell)); then
  run_inside bash -l
else
  run_inside bash /root/drill.sh "${filters[@]}"
fi
