#!/usr/bin/env bash
# Brings the control plane up (`clawker controlplane up`: image built from the
# binaries embedded in bin/clawker, container clawker-controlplane at .202 of
# clawker-net, the firewall stack clawker-dns at .201 and clawker-proxy at
# .200, /healthz polled until green) and prints its status and the egress
# rules (with a hint for the first one when there are none).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/bin

config=${XDG_CONFIG_HOME:-$HOME/.config}/clawker
settings=$config/settings.yaml
# An earlier up.sh wrote firewall.enable: false (there was no stack to
# enforce through); that file is ours to replace, a user's is left alone.
if [ -f "$settings" ] && head -n1 "$settings" | grep -q '^# Written by scripts/up.sh: the firewall stack (Envoy, CoreDNS) is not built yet'; then
  rm -f "$settings"
  echo "replacing $settings written by an earlier up.sh (it turned the firewall off)"
fi
if [ ! -f "$settings" ]; then
  mkdir -p -m 0700 "$config"
  printf '%s\n' \
    '# Written by scripts/up.sh. The firewall is on (the default): agents reach' \
    '# only what `clawker firewall add` allows.' \
    'control_plane:' \
    '  watcher:' \
    '    # With no agent running, drain-to-zero would stop the CP about a' \
    '    # minute after `up`. Remove for the product behaviour (exit once no' \
    '    # agent container is left).' \
    '    enable: false' >"$settings"
  echo "wrote $settings (control_plane.watcher.enable: false: no drain-to-zero)"
fi
"$bin/clawker" controlplane up
"$bin/clawker" firewall list
