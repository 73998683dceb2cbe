#!/usr/bin/env bash
# Stops the control plane container; its SIGTERM handler runs the ordered
# drain. Extra arguments go to `clawker controlplane down` (e.g. --force:
# down refuses while agents run, as the drain lifts their enforcement).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec "$root/bin/clawker" controlplane down "$@"
