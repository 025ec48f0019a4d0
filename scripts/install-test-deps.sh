#!/usr/bin/env bash
# Installs (idempotently, from Debian packages) the real components the tests run against, and configures
# Nix for a machine without network: no sandbox, no substituters, signatures required. Safe to run again.
set -euo pipefail
here=$(dirname "$0")
source "$here/lib-apt.sh"
bash "$here/install-runtime-deps.sh"
# containerd, runc, docker.io, docker-registry, skopeo, umoci: the runtimes, registry and clients images are
# checked with; pigz and python3: benchmark baselines and a static web server for HTTP caches;
# apache2-utils: htpasswd for registry authentication tests; git: --nix-file sources in git repositories;
# procps: pgrep, to find processes a test expects gone; e2fsprogs (mkfs.ext4 -d), sshfs and openssh-server: a
# Nix store on shared storage (a loop-attached filesystem image, and sshfs over loopback to a private sshd).
apt_ensure containerd runc docker.io docker-registry skopeo umoci pigz python3 apache2-utils git procps \
  e2fsprogs sshfs openssh-server
# containerd 1.7 (trixie) and 2.1 (sid) beside bookworm's 1.6, unpacked into a cache: the containerd matrix
# (NIXOCI_CONTAINERD selects one for the tests; see the script).
bash "$here/install-containerd-matrix.sh"
# Docker 28.5 (sid) and 26.1 (trixie) with their buildx beside bookworm's 20.10, unpacked into a cache: the Docker
# matrix of the BuildKit frontend's tests (NIXOCI_DOCKER selects one; see the script). After the containerd matrix:
# each newer dockerd runs its own release's containerd from there.
bash "$here/install-docker-matrix.sh"
# Debian 13's nix-bin 2.26 in a debootstrapped trixie root of its own, beside bookworm's 2.8: the toolchain image
# of the BuildKit frontend's Nix-file tests with the Nix most users run (scripts/nix-toolchain-image.mjs --nix 2.26).
bash "$here/install-nix-toolchains.sh"
# qemu-user-static registered for aarch64 binaries (binfmt_misc) and bookworm's arm64 busybox-static: arm64 images
# made from arm64 store paths (test/fixtures/arm64.nix) run on this amd64 machine.
bash "$here/install-arm64-emulation.sh"
# A pristine Debian 12 root without Nix, with a non-root user and only what nixoci needs besides Node.js: the machine
# test/cli/no-nix.test.ts builds and serves images on from binary caches (see the script).
bash "$here/install-no-nix-root.sh"

# The tests compare against Nix's own behaviour, so pin the options they depend on.
conf=/etc/nix/nix.conf
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

# Kernel features the runtimes under test use. overlayfs is usually loaded on demand; where the module is not
# loaded yet and cannot be (no kmod, as in a container), say so here rather than as a failure deep in a test.
if ! grep -qw overlay /proc/filesystems; then
  modprobe overlay 2>/dev/null || true
  grep -qw overlay /proc/filesystems || { echo "install-test-deps: the kernel has no overlayfs (modprobe overlay)" >&2 && exit 1; }
fi
