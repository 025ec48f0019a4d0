#!/usr/bin/env bash
# Installs (idempotently) the machine test/cli/no-nix.test.ts proves nixoci on: a pristine Debian 12 root with no
# Nix at all (no nix-bin, no /nix, no nixbld users), a non-root user and only what a user of a Nix-less machine
# installs for nixoci besides Node.js (see NEEDED below and the README's "Without Nix"):
#
#   $NIXOCI_NO_NIX_ROOT        a bookworm root (debootstrap --variant=minbase) + NEEDED + the user builder (uid 1500)
#
# (default /var/cache/nixoci/no-nix-root). The test never changes it: each run mounts it as the read-only lower
# layer of an overlay of its own. The mirror is the one this machine's apt uses (lib-apt.sh); debootstrap checks the
# release against debian-archive-keyring. Complete or nothing: the root is made in a temporary directory beside it
# and renamed into place once it checks out; a root that is there and checks out is left alone (a second run costs
# one chroot). Commands inside the root run in a private mount namespace (unshare --mount), so the /proc and /dev
# they need cannot outlive them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "install-no-nix-root: $*" >&2 && exit 1; }
source "$here/lib-apt.sh"

root=${NIXOCI_NO_NIX_ROOT:-/var/cache/nixoci/no-nix-root}
parent=$(dirname "$root")
name=$(basename "$root")
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
# What nixoci runs besides Node.js (src/util/compression.ts): xz, zstd and bzip2 decompress a binary cache's NARs
# (xz is `nix copy`'s and `nixoci cache push`'s default; zstd NARs over 2 MiB and `--compression zstd` layers;
# bzip2 is what a narinfo without Compression means) and compress the NARs `nixoci serve` serves as a cache.
NEEDED=(xz-utils zstd bzip2)
user=builder uid=1500
# The marker's content: a root made for another list or user is made again.
spec="bookworm minbase; packages: ${NEEDED[*]}; user: $user $uid"

# Runs COMMAND... chrooted into ROOT with /proc and /dev mounted in a mount namespace of its own (apt's maintainer
# scripts want /dev/null; useradd and dpkg read /proc/self).
in_root() {
  local dir=$1
  shift
  unshare --mount --propagation private -- sh -c \
    'dir=$1; shift; mount -t proc proc "$dir/proc" && mount --rbind /dev "$dir/dev" && exec chroot "$dir" "$@"' \
    sh "$dir" "$@"
}

# Whether DIR is a complete root of this spec: marker, user, tools, and still no Nix.
works() {
  local dir=$1
  [ "$(cat "$dir/.installed" 2>/dev/null)" = "$spec" ] || return 1
  in_root "$dir" sh -ec "[ \"\$(id -u $user)\" = $uid ]; command -v xz zstd bzip2 >/dev/null
    [ ! -e /nix ]; ! command -v nix >/dev/null; ! command -v nix-store >/dev/null" 2>/dev/null
}

# Host apt settings the root's apt-get must share to read the same mirror: a snapshot mirror's Release files are
# past their Valid-Until, which this machine's apt may be told to ignore (debootstrap itself does not check it).
apt_opts=()
for key in Acquire::Check-Valid-Until Acquire::Check-Date; do
  value=$(apt-config dump --no-empty "$key" 2>/dev/null | sed -n "s|^$key \"\(.*\)\";\$|\1|p" | head -n1)
  if [ -n "$value" ]; then apt_opts+=(-o "$key=$value"); fi
done

install_root() {
  local mirror=$1 work new
  work=$(mktemp -d "$parent/.$name.build.XXXXXX")
  # shellcheck disable=SC2064 # expand now (runs in a subshell of its own: see below)
  trap "rm -rf '$work'" EXIT
  new=$work/root
  echo "install-no-nix-root: debootstrap bookworm into $root (about a minute)" >&2
  # In a mount namespace of its own too: the /proc and /sys debootstrap mounts in the root go with it, even when it
  # fails half-way (and rm -rf of the build directory must never walk into a mounted /proc).
  unshare --mount --propagation private -- debootstrap --variant=minbase --keyring="$keyring" bookworm "$new" \
    "$mirror" >"$work/debootstrap.log" 2>&1 ||
    die "debootstrap bookworm from $mirror failed: $(tail -n3 "$work/debootstrap.log")"
  # The root's apt-get reaches the mirror by name, with this machine's sources (security updates included).
  cp -L /etc/resolv.conf "$new/etc/resolv.conf"
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
    [ -f "$f" ] && cp "$f" "$new$f"
  done
  echo "install-no-nix-root: ${NEEDED[*]} and the user $user ($uid) into $root" >&2
  in_root "$new" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update -qq >"$work/apt.log" 2>&1 ||
    die "apt-get update in the root failed: $(tail -n3 "$work/apt.log")"
  in_root "$new" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends \
    "${NEEDED[@]}" >>"$work/apt.log" 2>&1 || die "apt-get install ${NEEDED[*]} in the root failed: $(tail -n3 "$work/apt.log")"
  in_root "$new" apt-get clean
  in_root "$new" useradd --uid "$uid" --user-group --create-home --shell /bin/bash "$user" ||
    die "useradd $user in the root failed"
  echo "$spec" >"$new/.installed"
  works "$new" || die "the new root does not check out (user $user, ${NEEDED[*]}, no nix)"
  rm -rf "$root" && mv "$new" "$root"
}

mkdir -p "$parent"
# One installer at a time (a second shell running the README's command waits, then finds the root in place).
exec 8>"$parent/.$name.lock"
flock 8
# What an interrupted run left (killed before its EXIT trap ran): never a root in use, since we hold the lock, and
# never a mount point, since nothing was mounted outside a private mount namespace.
rm -rf "$parent/.$name.build."*
works "$root" && exit 0
# debootstrap verifies the release's signature with gpgv against the keyring.
apt_ensure debootstrap gpgv debian-archive-keyring >&2
mirror=$(debian_mirror) || die "no Debian mirror for bookworm in /etc/apt/sources.list{,.d}"
# A subshell: its EXIT trap removes the build directory whatever happens.
(install_root "$mirror")
