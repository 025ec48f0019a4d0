#!/usr/bin/env bash
# The main job: sets up nixoci on a fresh Debian 12 machine (Node.js >= 20 already installed) and starts
# `nixoci serve` with the example package set, so that e.g.
#   skopeo inspect --tls-verify=false docker://127.0.0.1:5000/shell/hello
#   docker pull 127.0.0.1:5000/shell/hello && docker run --rm 127.0.0.1:5000/shell/hello hello
# work right away. LISTEN (default 127.0.0.1:5000) and STATE (default ~/.local/state/nixoci) can be set;
# extra arguments go to `nixoci serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
listen=${LISTEN:-127.0.0.1:5000}
state=${STATE:-$HOME/.local/state/nixoci}
# Said first: installing and building take a while, and the answer to "where is it?" should not wait for them.
echo "serve-example: nixoci serve will listen on $listen (LISTEN); its state goes to $state (STATE)" >&2
bash scripts/install-runtime-deps.sh
[ -x node_modules/.bin/tsc ] || npm ci
npm run build --silent
mkdir -p "$state"
# The binary cache endpoint signs narinfos with this key; clients trust the public half.
if [ ! -f "$state/cache-key.sec" ]; then
  nix-store --generate-binary-cache-key "$(hostname)-nixoci-1" "$state/cache-key.sec" "$state/cache-key.pub"
fi
echo "serve-example: starting nixoci serve on $listen, storage $state/registry; binary cache public key: $(cat "$state/cache-key.pub")" >&2
exec node bin/nixoci.js serve --listen "$listen" --storage "$state/registry" \
  --nix-file examples/packages.nix --sign-key "$state/cache-key.sec" "$@"
