#!/usr/bin/env bash
# Installs (idempotently) the newer Nix the BuildKit frontend's Nix-file tests also build with, beside bookworm's
# nix-bin 2.8 (installed by install-runtime-deps.sh): Debian 13 "trixie"'s nix-bin 2.26, the Nix most users run.
# Nix is C++ and trixie's needs a newer libc and libstdc++ than bookworm has, so it cannot be unpacked beside
# bookworm's packages the way the Docker and containerd matrices are: it gets a Debian root of its own release,
#
#   $NIXOCI_NIX_CACHE/2.26/                 a trixie root (debootstrap --variant=minbase, then nix-bin installed
#                                           with the root's own apt-get); chroot into it to run its nix
#
# (default cache /var/cache/nixoci/nix), from which scripts/nix-toolchain-image.mjs --nix 2.26 takes nix and the
# libraries it loads. The mirror is the one this machine's apt uses for bookworm (lib-apt.sh), the release is checked
# by debootstrap against debian-archive-keyring (bookworm's holds trixie's key). Complete or nothing: the root is
# made in a temporary directory beside the cache's entry and renamed into place once its nix runs and says it is
# 2.26.x; a root that is there and runs is left alone (a second run costs one `nix --version`). Commands inside
# the root run in a private mount namespace (unshare --mount), so the /proc and /dev they need cannot outlive them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "install-nix-toolchains: $*" >&2 && exit 1; }
source "$here/lib-debootstrap.sh"

cache=${NIXOCI_NIX_CACHE:-/var/cache/nixoci/nix}
# series release: the release's nix-bin decides the series.
toolchains=("2.26 trixie")

# Whether DIR is a complete root whose nix runs and is of SERIES.
works() {
  local dir=$1 series=$2 v
  [ -f "$dir/.installed" ] || return 1
  v=$(in_root "$dir" /usr/bin/nix --version 2>/dev/null) || return 1
  [[ $v =~ ^nix\ \(Nix\)\ ${series//./\\.}\. ]]
}

install_series() {
  local series=$1 release=$2 mirror=$3 work root v
  work=$(mktemp -d "$cache/.build.XXXXXX")
  # shellcheck disable=SC2064 # expand now (runs in a subshell of its own: see below)
  trap "rm -rf '$work'" EXIT
  root=$work/root
  echo "install-nix-toolchains: debootstrap $release into $cache/$series (about a minute)" >&2
  debootstrap_root "$release" "$root" "$mirror" "$work"
  echo "install-nix-toolchains: nix-bin ($release) into $cache/$series" >&2
  root_install "$root" "$work" nix-bin
  v=$(in_root "$root" /usr/bin/nix --version 2>&1) || die "nix from $release does not run here: $v"
  [[ $v =~ ^nix\ \(Nix\)\ ${series//./\\.}\. ]] ||
    die "$release's nix-bin is '$v' now, not $series.x: change the toolchains in $0 (and nix-toolchain-image.mjs --nix)"
  in_root "$root" dpkg-query -W -f='${Package} ${Version}\n' nix-bin >"$root/.deb-versions"
  touch "$root/.installed"
  rm -rf "${cache:?}/$series" && mv "$root" "$cache/$series"
}

mkdir -p "$cache"
# One installer at a time (a second shell running the README's command waits, then finds the root in place).
exec 8>"$cache/.lock"
flock 8
# What an interrupted run left (killed before its EXIT trap ran): never a root in use, since we hold the lock, and
# never a mount point, since nothing was mounted outside a private mount namespace.
rm -rf "$cache"/.build.*
mirror=""
for entry in "${toolchains[@]}"; do
  read -r series release <<<"$entry"
  works "$cache/$series" "$series" && continue
  [ -n "$mirror" ] || mirror=$(debootstrap_mirror)
  # A subshell: its EXIT trap removes the build directory whatever happens.
  (install_series "$series" "$release" "$mirror")
done
