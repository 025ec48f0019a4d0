#!/usr/bin/env bash
# Installs (idempotently) the newer containerd releases the version-dependent tests also run against, beside
# bookworm's 1.6 (the `containerd` package, installed by install-test-deps.sh): 1.7 from Debian 13 "trixie" and
# 2.1 from Debian unstable "sid". Each is the release's `containerd` .deb from the mirror apt already uses, checked
# down from the release's signature (lib-debian-release.sh: InRelease -> Packages.xz -> .deb, each by gpgv or
# SHA256), then unpacked with `dpkg-deb -x` — never installed over bookworm's — into
#
#   $NIXOCI_CONTAINERD_CACHE/<upstream version>/usr/bin/{containerd,ctr,containerd-shim-runc-v2}
#   $NIXOCI_CONTAINERD_CACHE/<series> -> <upstream version>      (what NIXOCI_CONTAINERD=<series> selects)
#
# (default cache /var/cache/nixoci/containerd). The binaries are Go programs linked against libc only (Debian asks
# for libc6 >= 2.34; bookworm has 2.36): they run here as they are, with no root of their own release. runc stays
# bookworm's. The series is pinned, not the exact version: a point release of trixie, or sid moving within 2.1,
# installs the new version and moves the link; a series gone from its release is an error that says so.
# Once a series is installed and its binaries run, nothing is fetched again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "install-containerd-matrix: $*" >&2 && exit 1; }
source "$here/lib-debian-release.sh"

cache=${NIXOCI_CONTAINERD_CACHE:-/var/cache/nixoci/containerd}
# series release: the containerd each Debian release packages.
matrix=("1.7 trixie" "2.1 sid")

# Whether DIR holds a containerd of SERIES whose three binaries run here.
works() {
  local dir=$1 series=$2 v
  [ -f "$dir/.installed" ] || return 1
  v=$("$dir/usr/bin/containerd" --version 2>/dev/null) || return 1
  [[ $v =~ [[:space:]]v?${series//./\\.}\. ]] || return 1
  "$dir/usr/bin/ctr" --version >/dev/null 2>&1 && "$dir/usr/bin/containerd-shim-runc-v2" -v >/dev/null 2>&1
}

install_series() {
  local series=$1 release=$2 mirror=$3 work stanza version upstream dir
  work=$(mktemp -d "$cache/.fetch.XXXXXX")
  # shellcheck disable=SC2064 # expand now (runs in a subshell of its own: see below)
  trap "rm -rf '$work'" EXIT
  debian_release_index "$mirror" "$release" "$work"
  stanza=$(debian_release_stanza "$work" containerd)
  version=$(debian_release_field "$stanza" Version)
  [ -n "$version" ] || die "$release has no containerd package for $debian_release_arch"
  upstream=$(debian_upstream_version "$version")
  [[ $upstream == "$series".* ]] ||
    die "$release's containerd is $version now, not $series.x: change the matrix in $0 (and the tests' NIXOCI_CONTAINERD values)"
  dir=$cache/$upstream
  echo "install-containerd-matrix: containerd $version ($release) into $dir" >&2
  debian_release_deb "$mirror" "$stanza" "$work/containerd.deb"
  mkdir "$work/root"
  dpkg-deb -x "$work/containerd.deb" "$work/root"
  echo "$version" >"$work/root/.deb-version"
  touch "$work/root/.installed"
  works "$work/root" "$series" ||
    die "containerd $version from $release does not run here: $("$work/root/usr/bin/containerd" --version 2>&1 | tail -n1)"
  rm -rf "$dir" && mv "$work/root" "$dir"
  ln -sfn "$upstream" "$cache/$series"
}

mkdir -p "$cache"
mirror=""
for entry in "${matrix[@]}"; do
  read -r series release <<<"$entry"
  works "$cache/$series" "$series" && continue
  [ -n "$mirror" ] || mirror=$(debian_release_mirror)
  # A subshell: its EXIT trap removes the download directory whatever happens.
  (install_series "$series" "$release" "$mirror")
done
