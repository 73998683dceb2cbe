#!/usr/bin/env bash
# Stops the control plane that scripts/up.sh started: SIGTERM runs its ordered
# drain. Only the PID recorded by up.sh is signalled.
set -euo pipefail
state=${XDG_STATE_HOME:-$HOME/.local/state}/clawker
pidfile=$state/clawker-cp.pid
if [ ! -f "$pidfile" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "control plane not running"; exit 0
fi
pid=$(cat "$pidfile")
kill -TERM "$pid"
for _ in $(seq 1 600); do
  kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; echo "control plane stopped"; exit 0; }
  sleep 0.1
done
echo "clawker-cp ($pid) still running after 60s" >&2; exit 1
