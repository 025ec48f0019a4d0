#!/usr/bin/env bash
# Installs (idempotently) what the tests need to make and run arm64 (aarch64-linux) images on this amd64 machine:
#
#   qemu-user-static             Debian's user-mode emulator, registered with the kernel's binfmt_misc for aarch64
#                                ELF binaries with the F flag (the kernel opens the emulator once, at registration,
#                                so it also runs binaries inside containers, whose root has no emulator)
#   $NIXOCI_ARM64_CACHE/busybox  bookworm's busybox-static for arm64 (default cache /var/cache/nixoci/arm64): the
#                                arm64 "package" of the test fixtures (test/fixtures/arm64.nix), made into store
#                                paths the way the amd64 fixtures are made from the host's busybox
#
# The .deb comes from the mirror this machine's apt uses, checked down from bookworm's signed InRelease
# (lib-debian-release.sh), and is never installed: its binary is unpacked into the cache, complete or nothing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "install-arm64-emulation: $*" >&2 && exit 1; }
source "$here/lib-debian-release.sh"

apt_ensure qemu-user-static

# binfmt_misc: mounted by systemd on most machines; not in a fresh root or a container.
binfmt=/proc/sys/fs/binfmt_misc
[ -e "$binfmt/register" ] || mount -t binfmt_misc binfmt_misc "$binfmt" ||
  die "cannot mount binfmt_misc at $binfmt (a kernel without CONFIG_BINFMT_MISC, or not root)"
# The magic and mask Debian's package declares for aarch64 (the same Debian's binfmt-support would register).
spec=/usr/share/binfmts/qemu-aarch64
if [ ! -e "$binfmt/qemu-aarch64" ]; then
  [ -f "$spec" ] || die "$spec missing: is qemu-user-static installed?"
  field() { sed -n "s/^$1 //p" "$spec"; }
  interpreter=$(field interpreter)
  [ -x "$interpreter" ] || die "$spec names interpreter $interpreter, which is not there"
  flags=F
  [ "$(field preserve)" = yes ] && flags=${flags}P
  printf ':qemu-aarch64:M:%s:%s:%s:%s:%s' "$(field offset)" "$(field magic)" "$(field mask)" "$interpreter" "$flags" \
    >"$binfmt/register" || die "the kernel refused the aarch64 binfmt registration"
fi
grep -qx enabled "$binfmt/qemu-aarch64" || die "$binfmt/qemu-aarch64 is not enabled"

cache=${NIXOCI_ARM64_CACHE:-/var/cache/nixoci/arm64}
busybox=$cache/busybox
# A complete download answers --help as an arm64 binary run through the emulator.
if ! "$busybox" true 2>/dev/null; then
  mkdir -p "$cache"
  (
    work=$(mktemp -d "$cache/.download.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    mirror=$(debian_release_mirror)
    debian_release_arch=arm64
    debian_release_index "$mirror" bookworm "$work"
    stanza=$(debian_release_stanza "$work" busybox-static)
    [ -n "$stanza" ] || die "bookworm has no busybox-static for arm64"
    debian_release_deb "$mirror" "$stanza" "$work/busybox-static.deb"
    dpkg-deb -x "$work/busybox-static.deb" "$work/root"
    file=$work/root/bin/busybox
    [ -x "$file" ] || die "busybox-static's .deb has no bin/busybox"
    "$file" true || die "the arm64 busybox does not run through the emulator"
    mv "$file" "$busybox.tmp" && mv "$busybox.tmp" "$busybox"
  )
fi
echo "install-arm64-emulation: aarch64 binaries run through $(sed -n 's/^interpreter //p' "$binfmt/qemu-aarch64")" >&2
