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
source "$here/lib-debootstrap.sh"

root=${NIXOCI_NO_NIX_ROOT:-/var/cache/nixoci/no-nix-root}
parent=$(dirname "$root")
name=$(basename "$root")
# What nixoci runs besides Node.js (src/util/compression.ts): xz, zstd and bzip2 decompress a binary cache's NARs
# (xz is `nix copy`'s and `nixoci cache push`'s default; zstd NARs over 2 MiB and `--compression zstd` layers;
# bzip2 is what a narinfo without Compression means) and compress the NARs `nixoci serve` serves as a cache.
NEEDED=(xz-utils zstd bzip2)
user=builder uid=1500
# The marker's content: a root made for another list or user is made again.
spec="bookworm minbase; packages: ${NEEDED[*]}; user: $user $uid"

# Whether DIR is a complete root of this spec: marker, user, tools, and still no Nix.
works() {
  local dir=$1
  [ "$(cat "$dir/.installed" 2>/dev/null)" = "$spec" ] || return 1
  in_root "$dir" sh -ec "[ \"\$(id -u $user)\" = $uid ]; command -v xz zstd bzip2 >/dev/null
    [ ! -e /nix ]; ! command -v nix >/dev/null; ! command -v nix-store >/dev/null" 2>/dev/null
}

install_root() {
  local mirror=$1 work new
  work=$(mktemp -d "$parent/.$name.build.XXXXXX")
  # shellcheck disable=SC2064 # expand now (runs in a subshell of its own: see below)
  trap "rm -rf '$work'" EXIT
  new=$work/root
  echo "install-no-nix-root: debootstrap bookworm into $root (about a minute)" >&2
  debootstrap_root bookworm "$new" "$mirror" "$work"
  # With this machine's sources (security updates included).
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
    [ -f "$f" ] && cp "$f" "$new$f"
  done
  echo "install-no-nix-root: ${NEEDED[*]} and the user $user ($uid) into $root" >&2
  root_install "$new" "$work" "${NEEDED[@]}"
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
mirror=$(debootstrap_mirror)
# A subshell: its EXIT trap removes the build directory whatever happens.
(install_root "$mirror")
