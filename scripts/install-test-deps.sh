#!/usr/bin/env bash
# Installs (idempotently, from Debian packages) the real components the tests run against, and configures
# Nix for a machine without network: no sandbox, no substituters. Safe to run again and again.
set -euo pipefail

# nix: the reference for Nix formats; busybox-static: runnable test closures; xz/zstd/bzip2: NAR compressions;
# containerd, runc, docker.io, docker-registry, skopeo, umoci: the runtimes, registry and clients images are
# checked with; pigz and python3: benchmark baselines and a static web server for HTTP caches;
# apache2-utils: htpasswd for registry authentication tests.
packages=(nix-bin busybox-static xz-utils zstd bzip2 containerd runc docker.io docker-registry skopeo umoci pigz python3 apache2-utils)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-test-deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Nix reads /etc/nix/nix.conf; the default substituter is unreachable here and retried slowly.
conf=/etc/nix/nix.conf
mkdir -p /etc/nix
touch "$conf"
set_option() {
  local key=$1 value=$2
  if grep -qE "^\s*${key}\s*=" "$conf"; then
    sed -i -E "s|^\s*${key}\s*=.*|${key} = ${value}|" "$conf"
  else
    printf '%s = %s\n' "$key" "$value" >>"$conf"
  fi
}
set_option sandbox false
set_option substituters ""
set_option require-sigs true
mkdir -p /nix/store /nix/var/nix/gcroots
