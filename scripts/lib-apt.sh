# Sourced by the install scripts: installs the Debian packages given that are not installed yet.
# On a new machine another apt run may hold apt's locks (unattended-upgrades, or the README's other command run
# from a second shell): our own installers take turns on one lock file, and a lock held by anyone else is waited
# for (dpkg's through DPkg::Lock::Timeout; the lists lock, which `apt-get update` does not wait for, by retrying).
apt_ensure() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  echo "installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  mkdir -p /run/lock
  (
    flock 9
    local tries=0
    until apt-get -o DPkg::Lock::Timeout=600 update -qq; do
      ((++tries < 60)) || return 1
      echo "apt-get update failed; retrying in 10 s (another apt run holding its lock?)" >&2
      sleep 10
    done
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  ) 9>/run/lock/nixoci-apt.lock
}

# The URI of the Debian mirror this machine's apt uses for bookworm (deb822 sources first, then one-line sources),
# with no trailing slash; fails when there is none. Other releases (trixie, sid) are fetched from the same mirror.
debian_mirror() {
  local m
  m=$(
    {
      awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ {print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true
      awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true
    } | head -n1
  )
  [ -n "$m" ] && echo "${m%/}"
}
