# Sourced by the installers of newer releases of the test components (install-containerd-matrix.sh,
# install-docker-matrix.sh): fetching packages of another Debian release (trixie, sid) from the mirror this
# machine's apt already uses, checked down from the release's signature. The chain of trust:
#
#   dists/<release>/InRelease   signed; gpgv against debian-archive-keyring (bookworm's already holds trixie's
#                               and sid's keys); only what the signature covers is read from here on
#   .../main/binary-<arch>/Packages.xz   its SHA256 as InRelease lists it
#   pool/.../<package>.deb      its SHA256 as the Packages stanza lists it
#
# Downloads go through apt's own transport (apt-helper: apt's proxy and auth configuration). The packages are
# never installed: the caller unpacks them with `dpkg-deb -x` into a cache of its own, beside bookworm's.
#
# The sourcing script defines `die MESSAGE` (prints and exits); everything here fails through it.
here_lib_debian_release=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here_lib_debian_release/lib-apt.sh"

debian_release_keyring=/usr/share/keyrings/debian-archive-keyring.gpg
debian_release_arch=$(dpkg --print-architecture)

# Installs what the chain above needs (once) and prints the mirror's URI; fails when apt has no bookworm mirror.
debian_release_mirror() {
  apt_ensure xz-utils gpgv debian-archive-keyring >&2
  debian_mirror || die "no Debian mirror for bookworm in /etc/apt/sources.list{,.d}"
}

# Downloads URL to FILE through apt's transport, checking SHA256 when given.
debian_release_fetch() {
  local url=$1 file=$2 sha=${3:-}
  /usr/lib/apt/apt-helper -o APT::Sandbox::User=root download-file "$url" "$file" ${sha:+"SHA256:$sha"} >/dev/null ||
    die "could not download $url${sha:+ with SHA256 $sha} (is the release on this machine's Debian mirror?)"
}

# Fetches MIRROR's signed index of RELEASE into WORK: WORK/Packages (decompressed, read by debian_release_stanza).
debian_release_index() {
  local mirror=$1 release=$2 work=$3 sha
  debian_release_fetch "$mirror/dists/$release/InRelease" "$work/InRelease"
  gpgv --quiet --keyring "$debian_release_keyring" --output "$work/Release" "$work/InRelease" 2>"$work/gpgv.err" ||
    die "$mirror/dists/$release/InRelease: bad signature ($(tail -n1 "$work/gpgv.err")); update debian-archive-keyring"
  sha=$(awk -v p="main/binary-$debian_release_arch/Packages.xz" \
    '/^SHA256:/ {s = 1; next} /^[^ ]/ {s = 0} s && $3 == p {print $1; exit}' "$work/Release")
  [ -n "$sha" ] || die "$release's Release lists no main/binary-$debian_release_arch/Packages.xz"
  debian_release_fetch "$mirror/dists/$release/main/binary-$debian_release_arch/Packages.xz" "$work/Packages.xz" "$sha"
  xz -dc "$work/Packages.xz" >"$work/Packages"
}

# The stanza of PACKAGE in WORK/Packages (empty when the release has none).
debian_release_stanza() {
  awk -v RS= -v p="$2" '!found && index($0 "\n", "Package: " p "\n") == 1 {print; found = 1}' "$1/Packages"
}

# FIELD's value in STANZA (single-line fields: Version, Filename, SHA256, Depends).
debian_release_field() {
  sed -n "s/^$2: //p" <<<"$1"
}

# The upstream part of a Debian version: 2:28.5.2+dfsg4-5 -> 28.5.2, 1.7.24~ds1-6 -> 1.7.24.
debian_upstream_version() {
  local v=${1#*:}
  echo "${v%%[~+-]*}"
}

# Downloads the .deb STANZA names from MIRROR to FILE, checked against the stanza's SHA256.
debian_release_deb() {
  local mirror=$1 stanza=$2 file=$3 filename sha
  filename=$(debian_release_field "$stanza" Filename)
  sha=$(debian_release_field "$stanza" SHA256)
  [ -n "$filename" ] && [ -n "$sha" ] || die "a Packages stanza without Filename or SHA256: $(head -n1 <<<"$stanza")"
  debian_release_fetch "$mirror/$filename" "$file" "$sha"
}
