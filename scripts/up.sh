#!/usr/bin/env bash
# Brings the control plane up as a process on this host and prints its status.
# (The container bootstrap, `clawker controlplane up`, will take this over.)
# Idempotent: a control plane that already answers is left alone.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/bin
state=${XDG_STATE_HOME:-$HOME/.local/state}/clawker
mkdir -p -m 0700 "$state"
pidfile=$state/clawker-cp.pid
errlog=$state/clawker-cp.stderr

healthy() { "$bin/clawker" controlplane status --format json 2>/dev/null | grep -q '"ok": true'; }
running() { "$bin/clawker" controlplane status --format json 2>/dev/null | grep -q '"container": "running"'; }

config=${XDG_CONFIG_HOME:-$HOME/.config}/clawker
if [ ! -f "$config/settings.yaml" ]; then
  # The firewall stack is not built yet and a CP asked to enforce it refuses
  # to start; a fresh machine gets settings that say so (README, "What runs today").
  mkdir -p -m 0700 "$config"
  printf '%s\n' '# Written by scripts/up.sh: the firewall stack is not built yet.' 'firewall:' '  enable: false' >"$config/settings.yaml"
  echo "wrote $config/settings.yaml (firewall.enable: false: no egress enforcement yet)"
fi
# Auth material: created when missing, never silently renewed.
"$bin/clawker" auth rotate >/dev/null

if ! running; then
  nohup "$bin/clawker-cp" >>"$errlog" 2>&1 </dev/null &
  echo $! >"$pidfile"
  for _ in $(seq 1 150); do
    healthy && break
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "clawker-cp exited during start-up; its last lines ($errlog):" >&2
      tail -n 20 "$errlog" >&2
      exit 1
    fi
    sleep 0.2
  done
fi
"$bin/clawker" controlplane status
healthy
