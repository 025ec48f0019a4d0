#!/usr/bin/env bash
# Installs (idempotently, from Debian packages) what nixoci itself uses at run time on a fresh Debian 12
# machine: the NAR compressors, nix + busybox-static for the example package set, and attr (setfattr) for the
# snapshotter's metacopy nix layers. Configures Nix for a machine without network (no sandbox, no
# substituters) unless nix.conf already sets them.
set -euo pipefail
source "$(dirname "$0")/lib-apt.sh"
apt_ensure nix-bin busybox-static xz-utils zstd bzip2 attr
mkdir -p /etc/nix /nix/store /nix/var/nix/gcroots
touch /etc/nix/nix.conf
grep -qE '^\s*sandbox\s*=' /etc/nix/nix.conf || echo 'sandbox = false' >>/etc/nix/nix.conf
grep -qE '^\s*substituters\s*=' /etc/nix/nix.conf || echo 'substituters =' >>/etc/nix/nix.conf
