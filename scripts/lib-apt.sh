# Sourced by the install scripts: installs the Debian packages given that are not installed yet. Waits (up to
# 10 minutes) for another apt/dpkg run to let go of its lock rather than failing, as on a new machine where
# unattended-upgrades or a second install may be running.
apt_ensure() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  echo "installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  local wait=(-o DPkg::Lock::Timeout=600)
  apt-get "${wait[@]}" update -qq
  apt-get "${wait[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
