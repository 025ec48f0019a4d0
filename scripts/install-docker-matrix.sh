#!/usr/bin/env bash
# Installs (idempotently) the newer Docker releases the BuildKit frontend's tests also run against, beside
# bookworm's 20.10 (the `docker.io` package, installed by install-test-deps.sh; its BuildKit is v0.8 and its CLI
# has no buildx): 28.5 from Debian unstable "sid" and 26.1 from Debian 13 "trixie". Each series is its release's
# `docker.io` (dockerd), `docker-cli` (docker) and `docker-buildx` (the CLI plugin; trixie has 0.13, sid 0.29),
# fetched from the mirror apt already uses and checked down from the release's signature (lib-debian-release.sh:
# InRelease -> Packages.xz -> .deb, each by gpgv or SHA256), then unpacked with `dpkg-deb -x` — never installed
# over bookworm's — into
#
#   $NIXOCI_DOCKER_CACHE/<upstream version>/usr/sbin/dockerd
#   $NIXOCI_DOCKER_CACHE/<upstream version>/usr/bin/docker
#   $NIXOCI_DOCKER_CACHE/<upstream version>/usr/libexec/docker/cli-plugins/docker-buildx
#   $NIXOCI_DOCKER_CACHE/<series> -> <upstream version>        (what NIXOCI_DOCKER=<series> selects)
#
# (default cache /var/cache/nixoci/docker). The binaries are Go programs that need nothing newer than bookworm
# has (dockerd: libc >= 2.34, libsystemd, libcap, libgcrypt...; the CLI and buildx: libc only): they run here as
# they are, with no root of their own release. What docker.io Depends on comes from elsewhere: containerd from the
# containerd matrix (install-containerd-matrix.sh; test/support/docker-release.ts pairs each dockerd with its own
# release's containerd), runc, iptables and tini (docker-init) from bookworm. The series is pinned, not the exact
# version: a point release installs the new version and moves the link; a series gone from its release is an error
# that says so. Once a series is installed and its binaries run, nothing is fetched again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "install-docker-matrix: $*" >&2 && exit 1; }
source "$here/lib-debian-release.sh"

cache=${NIXOCI_DOCKER_CACHE:-/var/cache/nixoci/docker}
# series release packages...: docker.io's upstream version decides the series; the CLI must be the same version.
matrix=("28.5 sid docker.io docker-cli docker-buildx" "26.1 trixie docker.io docker-cli docker-buildx")

# Whether DIR holds a Docker of SERIES whose daemon, CLI and buildx plugin run here.
works() {
  local dir=$1 series=$2 re v
  [ -f "$dir/.installed" ] || return 1
  re="^Docker version ${series//./\\.}\."
  v=$("$dir/usr/sbin/dockerd" --version 2>/dev/null) && [[ $v =~ $re ]] || return 1
  v=$("$dir/usr/bin/docker" --version 2>/dev/null) && [[ $v =~ $re ]] || return 1
  "$dir/usr/libexec/docker/cli-plugins/docker-buildx" version >/dev/null 2>&1
}

install_series() {
  local series=$1 release=$2 mirror=$3 work stanza version upstream dir pkg
  shift 3
  work=$(mktemp -d "$cache/.fetch.XXXXXX")
  # shellcheck disable=SC2064 # expand now (runs in a subshell of its own: see below)
  trap "rm -rf '$work'" EXIT
  debian_release_index "$mirror" "$release" "$work"
  version=$(debian_release_field "$(debian_release_stanza "$work" docker.io)" Version)
  [ -n "$version" ] || die "$release has no docker.io package for $debian_release_arch"
  upstream=$(debian_upstream_version "$version")
  [[ $upstream == "$series".* ]] ||
    die "$release's docker.io is $version now, not $series.x: change the matrix in $0 (and the tests' NIXOCI_DOCKER values)"
  dir=$cache/$upstream
  mkdir "$work/root"
  for pkg in "$@"; do
    stanza=$(debian_release_stanza "$work" "$pkg")
    [ -n "$stanza" ] || die "$release has no $pkg package for $debian_release_arch"
    echo "install-docker-matrix: $pkg $(debian_release_field "$stanza" Version) ($release) into $dir" >&2
    debian_release_deb "$mirror" "$stanza" "$work/$pkg.deb"
    dpkg-deb -x "$work/$pkg.deb" "$work/root"
    echo "$pkg $(debian_release_field "$stanza" Version)" >>"$work/root/.deb-versions"
  done
  # docker.io's docker-init is a relative link to the release's tini-static, a package not unpacked here:
  # bookworm's tini has the same /usr/bin/tini-static (0.19), so the link points there instead of nowhere.
  [ -L "$work/root/usr/bin/docker-init" ] && ln -sfn /usr/bin/tini-static "$work/root/usr/bin/docker-init"
  touch "$work/root/.installed"
  works "$work/root" "$series" ||
    die "docker $version from $release does not run here: $("$work/root/usr/sbin/dockerd" --version 2>&1 | tail -n1)"
  rm -rf "$dir" && mv "$work/root" "$dir"
  ln -sfn "$upstream" "$cache/$series"
}

mkdir -p "$cache"
mirror=""
for entry in "${matrix[@]}"; do
  read -r series release packages <<<"$entry"
  works "$cache/$series" "$series" && continue
  [ -n "$mirror" ] || mirror=$(debian_release_mirror)
  # A subshell: its EXIT trap removes the download directory whatever happens.
  # shellcheck disable=SC2086 # the package list splits into words
  (install_series "$series" "$release" "$mirror" $packages)
done
