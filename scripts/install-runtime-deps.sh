#!/usr/bin/env bash
# Installs (idempotently, from Debian packages) what nixoci itself uses at run time on a fresh Debian 12
# machine: the NAR compressors, ISA-L's igzip (isal: fast gzip for large layers; without it nixoci uses zlib),
# nix + busybox-static for the example package set, and attr (setfattr) for the snapshotter's metacopy nix
# layers; then makes Nix able to build as root. Safe to run again.
set -euo pipefail
here=$(dirname "$0")
source "$here/lib-apt.sh"
apt_ensure nix-bin busybox-static xz-utils zstd bzip2 attr isal

mkdir -p /etc/nix /nix/store /nix/var/nix/gcroots /nix/var/nix/profiles /nix/var/nix/temproots
touch /etc/nix/nix.conf
# No network here: no sandbox (it needs its own /bin/sh closure) and no default substituter (unreachable, retried
# slowly). Kept if the machine's nix.conf already chose.
grep -qE '^\s*sandbox\s*=' /etc/nix/nix.conf || echo 'sandbox = false' >>/etc/nix/nix.conf
grep -qE '^\s*substituters\s*=' /etc/nix/nix.conf || echo 'substituters =' >>/etc/nix/nix.conf

# Building as root. Debian's nix-bin (2.8) defaults `build-users-group = nixbld` for root, and nothing creates that
# group, so every nix-build on a new machine fails with "the group 'nixbld' ... does not exist". We create the group
# and its build users as Nix's own multi-user installer does (gid 30000, users nixbld1..32 with uids 30001..30032,
# no login, home /var/empty) rather than emptying build-users-group: builders then run unprivileged, as on any
# multi-user Nix machine, so a build cannot write outside its output or read root's files, and a machine that
# later starts nix-daemon needs no change. An explicit build-users-group in nix.conf (another group, or empty) is
# the admin's choice and is left alone.
configured_group=$(sed -nE 's/^\s*build-users-group\s*=\s*(\S*)\s*$/\1/p' /etc/nix/nix.conf | tail -n1)
if ! grep -qE '^\s*build-users-group\s*=' /etc/nix/nix.conf || [ "$configured_group" = nixbld ]; then
  getent group nixbld >/dev/null || groupadd --system --gid 30000 nixbld 2>/dev/null || groupadd --system nixbld
  for i in $(seq 1 32); do
    getent passwd "nixbld$i" >/dev/null && continue
    uid=$((30000 + i))
    getent passwd "$uid" >/dev/null && uid_opt=() || uid_opt=(--uid "$uid")
    useradd "${uid_opt[@]}" --gid nixbld --groups nixbld --home-dir /var/empty --no-create-home \
      --shell /usr/sbin/nologin --comment "Nix build user $i" "nixbld$i"
  done
fi
