#!/usr/bin/env bash
# Stops the control plane container; its SIGTERM handler runs the ordered drain.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
exec "$root/bin/clawker" controlplane down
