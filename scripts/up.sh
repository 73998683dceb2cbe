#!/usr/bin/env bash
# Brings the control plane up (`clawker controlplane up`: image built from the
# binaries embedded in bin/clawker, container clawker-controlplane at .202 of
# clawker-net, /healthz polled until green) and prints its status.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/bin

config=${XDG_CONFIG_HOME:-$HOME/.config}/clawker
if [ ! -f "$config/settings.yaml" ]; then
  # The firewall stack is not built yet and a CP asked to enforce it refuses
  # to start; a fresh machine gets settings that say so (README, "What runs today").
  mkdir -p -m 0700 "$config"
  printf '%s\n' \
    '# Written by scripts/up.sh: the firewall stack is not built yet.' \
    'firewall:' \
    '  enable: false' \
    'control_plane:' \
    '  watcher:' \
    '    # With no agent running, drain-to-zero would stop the CP about a' \
    '    # minute after `up`. Remove for the product behaviour (exit once no' \
    '    # agent container is left).' \
    '    enable: false' >"$config/settings.yaml"
  echo "wrote $config/settings.yaml (firewall.enable: false: no egress enforcement yet; control_plane.watcher.enable: false: no drain-to-zero)"
fi
exec "$bin/clawker" controlplane up
