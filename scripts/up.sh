#!/usr/bin/env bash
# Brings the control plane up (`clawker controlplane up`: image built from the
# binaries embedded in bin/clawker, container clawker-controlplane at .202 of
# clawker-net, /healthz polled until green) and prints its status.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/bin

config=${XDG_CONFIG_HOME:-$HOME/.config}/clawker
if [ ! -f "$config/settings.yaml" ]; then
  # The firewall stack (Envoy, CoreDNS) is not built yet, and a CP asked to
  # enforce refuses to start unless something answers at .200/.201 of
  # clawker-net; a fresh machine gets settings that say so (README, "What
  # runs today").
  mkdir -p -m 0700 "$config"
  printf '%s\n' \
    '# Written by scripts/up.sh: the firewall stack (Envoy, CoreDNS) is not built yet,' \
    '# so egress enforcement is off; enable it once a stack answers at .200/.201.' \
    'firewall:' \
    '  enable: false' \
    'control_plane:' \
    '  watcher:' \
    '    # With no agent running, drain-to-zero would stop the CP about a' \
    '    # minute after `up`. Remove for the product behaviour (exit once no' \
    '    # agent container is left).' \
    '    enable: false' >"$config/settings.yaml"
  echo "wrote $config/settings.yaml (firewall.enable: false: no firewall stack to enforce through yet; control_plane.watcher.enable: false: no drain-to-zero)"
fi
exec "$bin/clawker" controlplane up
