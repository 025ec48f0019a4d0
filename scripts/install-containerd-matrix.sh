#!/usr/bin/env bash
# Installs (idempotently) the newer containerd releases the version-dependent tests also run against, beside
# bookworm's 1.6 (the `containerd` package, installed by install-test-deps.sh): 1.7 from Debian 13 "trixie" and
# 2.1 from Debian unstable "sid". Each is the release's `containerd` .deb from the mirror apt already uses, checked
# down from the release's signature (InRelease, by gpgv against debian-archive-keyring, whose bookworm version
# already holds trixie's keys) to Packages.xz (its SHA256 in InRelease) to the .deb (its SHA256 in Packages), then
# unpacked with `dpkg-deb -x` — never installed over bookworm's — into
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
source "$here/lib-apt.sh"

cache=${NIXOCI_CONTAINERD_CACHE:-/var/cache/nixoci/containerd}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
arch=$(dpkg --print-architecture)
# series release: the containerd each Debian release packages.
matrix=("1.7 trixie" "2.1 sid")

die() { echo "install-containerd-matrix: $*" >&2 && exit 1; }

# Whether DIR holds a containerd of SERIES whose three binaries run here.
works() {
  local dir=$1 series=$2 v
  [ -f "$dir/.installed" ] || return 1
  v=$("$dir/usr/bin/containerd" --version 2>/dev/null) || return 1
  [[ $v =~ [[:space:]]v?${series//./\\.}\. ]] || return 1
  "$dir/usr/bin/ctr" --version >/dev/null 2>&1 && "$dir/usr/bin/containerd-shim-runc-v2" -v >/dev/null 2>&1
}

# Downloads URL to FILE through apt's own transport (its proxy and auth configuration), checking SHA256 if given.
fetch() {
  local url=$1 file=$2 sha=${3:-}
  /usr/lib/apt/apt-helper -o APT::Sandbox::User=root download-file "$url" "$file" ${sha:+"SHA256:$sha"} >/dev/null ||
    die "could not download $url${sha:+ with SHA256 $sha} (is the release on this machine's Debian mirror?)"
}

# The SHA256 a signed InRelease gives for PATH (e.g. main/binary-amd64/Packages.xz).
release_sha256() {
  awk -v p="$2" '/^SHA256:/ {s = 1; next} /^[^ ]/ {s = 0} s && $3 == p {print $1; exit}' "$1"
}

install_series() {
  local series=$1 release=$2 mirror=$3 work stanza version filename sha upstream dir
  work=$(mktemp -d "$cache/.fetch.XXXXXX")
  # shellcheck disable=SC2064 # expand now (runs in a subshell of its own: see below)
  trap "rm -rf '$work'" EXIT
  fetch "$mirror/dists/$release/InRelease" "$work/InRelease"
  # Only what the signature covers (gpgv's --output) is read from here on.
  gpgv --quiet --keyring "$keyring" --output "$work/Release" "$work/InRelease" 2>"$work/gpgv.err" ||
    die "$mirror/dists/$release/InRelease: bad signature ($(tail -n1 "$work/gpgv.err")); update debian-archive-keyring"
  sha=$(release_sha256 "$work/Release" "main/binary-$arch/Packages.xz")
  [ -n "$sha" ] || die "$release's Release lists no main/binary-$arch/Packages.xz"
  fetch "$mirror/dists/$release/main/binary-$arch/Packages.xz" "$work/Packages.xz" "$sha"
  stanza=$(xz -dc "$work/Packages.xz" | awk -v RS= '!found && /(^|\n)Package: containerd\n/ {print; found = 1}')
  version=$(sed -n 's/^Version: //p' <<<"$stanza")
  filename=$(sed -n 's/^Filename: //p' <<<"$stanza")
  sha=$(sed -n 's/^SHA256: //p' <<<"$stanza")
  [ -n "$version" ] && [ -n "$filename" ] && [ -n "$sha" ] || die "$release has no containerd package for $arch"
  upstream=${version#*:}
  upstream=${upstream%%[~+-]*}
  [[ $upstream == "$series".* ]] ||
    die "$release's containerd is $version now, not $series.x: change the matrix in $0 (and the tests' NIXOCI_CONTAINERD values)"
  dir=$cache/$upstream
  echo "install-containerd-matrix: containerd $version ($release) into $dir" >&2
  fetch "$mirror/$filename" "$work/containerd.deb" "$sha"
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
  if [ -z "$mirror" ]; then
    apt_ensure xz-utils gpgv debian-archive-keyring
    mirror=$(debian_mirror) || die "no Debian mirror for bookworm in /etc/apt/sources.list{,.d}"
  fi
  # A subshell: its EXIT trap removes the download directory whatever happens.
  (install_series "$series" "$release" "$mirror")
done
