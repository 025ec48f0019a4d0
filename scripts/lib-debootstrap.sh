# Sourced by the installers that make Debian roots for the tests (install-nix-toolchains.sh: a trixie root with
# nix-bin; install-no-nix-root.sh: a bookworm root with no Nix): debootstrap from the mirror this machine's apt
# uses, packages installed by the root's own apt-get, commands run chrooted. Everything that runs inside a root
# runs in a private mount namespace (unshare --mount), so the /proc and /dev it needs cannot outlive it.
#
# The sourcing script defines `die MESSAGE` (prints and exits); everything here fails through it.
here_lib_debootstrap=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here_lib_debootstrap/lib-apt.sh"

debootstrap_keyring=/usr/share/keyrings/debian-archive-keyring.gpg

# Host apt settings a root's apt-get must share to read the same mirror: a snapshot mirror's Release files are past
# their Valid-Until, which this machine's apt may be told to ignore (debootstrap itself does not check it).
debootstrap_apt_opts=()
for debootstrap_key in Acquire::Check-Valid-Until Acquire::Check-Date; do
  debootstrap_value=$(apt-config dump --no-empty "$debootstrap_key" 2>/dev/null |
    sed -n "s|^$debootstrap_key \"\(.*\)\";\$|\1|p" | head -n1)
  if [ -n "$debootstrap_value" ]; then debootstrap_apt_opts+=(-o "$debootstrap_key=$debootstrap_value"); fi
done

# Runs COMMAND... chrooted into ROOT with /proc and /dev mounted in a mount namespace of its own (nix reads
# /proc/self/exe; apt's maintainer scripts, useradd and dpkg want /dev/null and /proc/self; nix's builders a pty).
in_root() {
  local root=$1
  shift
  unshare --mount --propagation private -- sh -c \
    'root=$1; shift; mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" && exec chroot "$root" "$@"' \
    sh "$root" "$@"
}

# Installs what debootstrap needs (once) and prints the mirror's URI; fails when apt has no bookworm mirror.
debootstrap_mirror() {
  # debootstrap verifies the release's signature with gpgv against the keyring.
  apt_ensure debootstrap gpgv debian-archive-keyring >&2
  debian_mirror || die "no Debian mirror for bookworm in /etc/apt/sources.list{,.d}"
}

# Makes a minbase root of RELEASE at ROOT from MIRROR, its log in WORK; the root's apt-get reaches the mirror by name.
debootstrap_root() {
  local release=$1 root=$2 mirror=$3 work=$4
  # In a mount namespace of its own too: the /proc and /sys debootstrap mounts in the root go with it, even when it
  # fails half-way (and rm -rf of the build directory must never walk into a mounted /proc).
  unshare --mount --propagation private -- debootstrap --variant=minbase --keyring="$debootstrap_keyring" \
    "$release" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    die "debootstrap $release from $mirror failed: $(tail -n3 "$work/debootstrap.log")"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
}

# Installs PACKAGES... into ROOT with its own apt-get (no recommends; the package cache emptied after), logs in WORK.
root_install() {
  local root=$1 work=$2
  shift 2
  in_root "$root" env DEBIAN_FRONTEND=noninteractive apt-get "${debootstrap_apt_opts[@]}" update -qq \
    >"$work/apt.log" 2>&1 || die "apt-get update in $root failed: $(tail -n3 "$work/apt.log")"
  in_root "$root" env DEBIAN_FRONTEND=noninteractive apt-get "${debootstrap_apt_opts[@]}" install -y -qq \
    --no-install-recommends "$@" >>"$work/apt.log" 2>&1 ||
    die "apt-get install $* in $root failed: $(tail -n3 "$work/apt.log")"
  in_root "$root" apt-get clean
}
