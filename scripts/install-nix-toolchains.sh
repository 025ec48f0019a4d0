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
source "$here/lib-apt.sh"

cache=${NIXOCI_NIX_CACHE:-/var/cache/nixoci/nix}
# series release: the release's nix-bin decides the series.
toolchains=("2.26 trixie")
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

# Runs COMMAND... chrooted into ROOT with /proc and /dev mounted in a mount namespace of its own (nix reads
# /proc/self/exe, apt's maintainer scripts and nix's builders want /dev/null and a pty).
in_root() {
  local root=$1
  shift
  unshare --mount --propagation private -- sh -c \
    'root=$1; shift; mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" && exec chroot "$root" "$@"' \
    sh "$root" "$@"
}

# Whether DIR is a complete root whose nix runs and is of SERIES.
works() {
  local dir=$1 series=$2 v
  [ -f "$dir/.installed" ] || return 1
  v=$(in_root "$dir" /usr/bin/nix --version 2>/dev/null) || return 1
  [[ $v =~ ^nix\ \(Nix\)\ ${series//./\\.}\. ]]
}

# Host apt settings the root's apt-get must share to read the same mirror: a snapshot mirror's Release files are
# past their Valid-Until, which this machine's apt may be told to ignore (debootstrap itself does not check it).
apt_opts=()
for key in Acquire::Check-Valid-Until Acquire::Check-Date; do
  value=$(apt-config dump --no-empty "$key" 2>/dev/null | sed -n "s|^$key \"\(.*\)\";\$|\1|p" | head -n1)
  if [ -n "$value" ]; then apt_opts+=(-o "$key=$value"); fi
done

install_series() {
  local series=$1 release=$2 mirror=$3 work root v
  work=$(mktemp -d "$cache/.build.XXXXXX")
  # shellcheck disable=SC2064 # expand now (runs in a subshell of its own: see below)
  trap "rm -rf '$work'" EXIT
  root=$work/root
  echo "install-nix-toolchains: debootstrap $release into $cache/$series (about a minute)" >&2
  # In a mount namespace of its own too: the /proc and /sys debootstrap mounts in the root go with it, even when it
  # fails half-way (and rm -rf of the build directory must never walk into a mounted /proc).
  unshare --mount --propagation private -- debootstrap --variant=minbase --keyring="$keyring" "$release" "$root" \
    "$mirror" >"$work/debootstrap.log" 2>&1 ||
    die "debootstrap $release from $mirror failed: $(tail -n3 "$work/debootstrap.log")"
  # The root's apt-get reaches the mirror by name.
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  echo "install-nix-toolchains: nix-bin ($release) into $cache/$series" >&2
  in_root "$root" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update -qq >"$work/apt.log" 2>&1 ||
    die "apt-get update in the $release root failed: $(tail -n3 "$work/apt.log")"
  in_root "$root" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends \
    nix-bin >>"$work/apt.log" 2>&1 || die "apt-get install nix-bin in the $release root failed: $(tail -n3 "$work/apt.log")"
  in_root "$root" apt-get clean
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
  if [ -z "$mirror" ]; then
    # debootstrap verifies the release's signature with gpgv against the keyring.
    apt_ensure debootstrap gpgv debian-archive-keyring >&2
    mirror=$(debian_mirror) || die "no Debian mirror for bookworm in /etc/apt/sources.list{,.d}"
  fi
  # A subshell: its EXIT trap removes the build directory whatever happens.
  (install_series "$series" "$release" "$mirror")
done
