#!/usr/bin/env bash
# Smoke-checks bin/ory/{hydra,kratos,oathkeeper} (scripts/build-ory.sh) on
# loopback, telemetry off, with the configs in scripts/ory/smoke/:
#
#   scripts/ory/smoke.sh                 # all three
#   scripts/ory/smoke.sh hydra kratos    # only the ones named
#
# Each server gets free loopback ports and its own rendered config in a temp
# dir; the check waits for /health/ready, then does one real request:
#   hydra       public (TLS) and admin /health/ready, then creates a client on
#               the admin API and gets a client_credentials token over TLS
#   kratos      public /health/ready and admin /admin/health/ready, then
#               creates an identity on the admin API
#   oathkeeper  api /health/ready (503 until a rule is loaded), then a request
#               through the proxy that a rule forwards to the api's /health/alive
# The servers run with HTTP(S)_PROXY pointed at a closed loopback port, so any
# attempt to reach the internet fails locally (Go never proxies loopback).
# Only the PIDs started here are stopped; the temp dir (rendered configs, logs)
# is removed on exit, unless ORY_SMOKE_KEEP=1.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="$root/bin/ory"
conf="$here/smoke"
ready_timeout=${ORY_SMOKE_TIMEOUT:-60}
now_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/ory-smoke.XXXXXX")"
pids=()

stop_pid() {
	local pid="$1" _
	kill -TERM "$pid" 2>/dev/null || return 0
	for _ in $(seq 1 50); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}
cleanup() {
	local pid
	for pid in ${pids[@]+"${pids[@]}"}; do stop_pid "$pid"; done
	if [ "${ORY_SMOKE_KEEP:-}" = 1 ]; then
		echo "ory-smoke: kept $tmp" >&2
	else
		rm -rf "$tmp"
	fi
}
trap cleanup EXIT

fail() {
	local name="$1" log="$2"
	shift 2
	echo "ory-smoke: $name FAILED: $*" >&2
	if [ -f "$log" ]; then
		echo "---- last lines of $name's log ----" >&2
		tail -n 30 "$log" >&2
	fi
	exit 1
}

# free_port VAR: set VAR to a loopback TCP port nobody listens on (and not
# handed out before in this run).
taken=" "
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		case "$taken" in *" $p "*) continue ;; esac
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			taken="$taken$p "
			printf -v "$1" '%s' "$p"
			return
		fi
	done
}

# render SRC DST VAR=VALUE...: copy SRC replacing each @VAR@ with VALUE.
render() {
	local src="$1" dst="$2" kv
	shift 2
	local args=()
	for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
	sed "${args[@]}" "$src" >"$dst"
	if grep -q '@[A-Z_]*@' "$dst"; then
		echo "ory-smoke: unfilled placeholder in $dst: $(grep -o '@[A-Z_]*@' "$dst" | sort -u | tr '\n' ' ')" >&2
		exit 1
	fi
}

# start NAME LOG [VAR=VALUE...] -- ARGS...: start bin/ory/NAME ARGS in the
# background with those environment variables, telemetry off; its PID goes to
# pids (stopped on exit) and last_pid.
dead_proxy=""
start() {
	local name="$1" log="$2"
	shift 2
	local envs=()
	while [ "$#" -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
	[ "$#" -gt 0 ] && shift
	[ -x "$bin/$name" ] || { echo "ory-smoke: $bin/$name missing: run scripts/build-ory.sh" >&2; exit 1; }
	if [ -z "$dead_proxy" ]; then
		free_port dead_proxy
		dead_proxy="http://127.0.0.1:$dead_proxy"
	fi
	env SQA_OPT_OUT=true HTTP_PROXY="$dead_proxy" HTTPS_PROXY="$dead_proxy" \
		http_proxy="$dead_proxy" https_proxy="$dead_proxy" NO_PROXY= no_proxy= \
		${envs[@]+"${envs[@]}"} "$bin/$name" "$@" --sqa-opt-out >"$log" 2>&1 </dev/null &
	last_pid=$!
	pids+=("$last_pid")
}

# wait_ready NAME LOG PID URL [CURL ARGS...]: poll URL until it answers 200.
wait_ready() {
	local name="$1" log="$2" pid="$3" url="$4" code=""
	shift 4
	local deadline=$((SECONDS + ready_timeout))
	while [ "$SECONDS" -lt "$deadline" ]; do
		kill -0 "$pid" 2>/dev/null || fail "$name" "$log" "exited before $url answered"
		code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" || true)"
		[ "$code" = 200 ] && return 0
		sleep 0.2
	done
	fail "$name" "$log" "$url not ready after ${ready_timeout}s (last status ${code:-none})"
}

# expect NAME LOG WANT_CODE CURL ARGS...: run curl, check the status, print the body.
expect() {
	local name="$1" log="$2" want="$3" out code
	shift 3
	out="$(curl -sS --max-time 10 -w '\n%{http_code}' "$@")" || fail "$name" "$log" "curl $* failed"
	code="${out##*$'\n'}"
	[ "$code" = "$want" ] || fail "$name" "$log" "curl $*: status $code, want $want: ${out%$'\n'*}"
	printf '%s' "${out%$'\n'*}"
}

smoke_hydra() {
	local d="$tmp/hydra" pub adm scheme=https ca=() secret log t0
	mkdir -p "$d"
	log="$d/hydra.log"
	free_port pub
	free_port adm
	secret="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
	render "$conf/hydra.yml" "$d/hydra.yml" DIR="$d" HYDRA_PUBLIC_PORT="$pub" \
		HYDRA_ADMIN_PORT="$adm" HYDRA_SYSTEM_SECRET="$secret"
	local envs=(DSN=memory) # DSN in the environment; it could be `dsn:` in the file
	if command -v openssl >/dev/null 2>&1; then
		openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
			-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
			-keyout "$d/tls.key" -out "$d/tls.crt" >/dev/null 2>&1 ||
			fail hydra "" "openssl could not make a test certificate"
		ca=(--cacert "$d/tls.crt")
	else
		echo "ory-smoke: no openssl for a test certificate: hydra's public port runs without TLS" >&2
		envs+=(SERVE_TLS_ENABLED=false) # the environment beats the config file
		scheme=http
	fi
	t0=$(now_ms)
	start hydra "$log" "${envs[@]}" -- serve all -c "$d/hydra.yml"
	local pid=$last_pid
	wait_ready hydra "$log" "$pid" "$scheme://127.0.0.1:$pub/health/ready" ${ca[@]+"${ca[@]}"}
	wait_ready hydra "$log" "$pid" "http://127.0.0.1:$adm/health/ready"
	echo "ory-smoke: hydra ready in $(($(now_ms) - t0)) ms: public $scheme://127.0.0.1:$pub, admin http://127.0.0.1:$adm"

	expect hydra "$log" 201 -X POST "http://127.0.0.1:$adm/admin/clients" \
		-H 'Content-Type: application/json' \
		-d '{"client_id":"smoke","client_secret":"smoke-secret-0123456789","grant_types":["client_credentials"],"token_endpoint_auth_method":"client_secret_basic"}' >/dev/null
	local tok
	tok="$(expect hydra "$log" 200 ${ca[@]+"${ca[@]}"} -u smoke:smoke-secret-0123456789 \
		-d grant_type=client_credentials "$scheme://127.0.0.1:$pub/oauth2/token")"
	grep -q '"access_token":"ory_at_' <<<"$tok" || fail hydra "$log" "no access token in: $tok"
	echo "ory-smoke: hydra OK (client_credentials token issued)"
}

smoke_kratos() {
	local d="$tmp/kratos" pub adm log t0
	mkdir -p "$d"
	log="$d/kratos.log"
	free_port pub
	free_port adm
	render "$conf/kratos.yml" "$d/kratos.yml" DIR="$d" KRATOS_PUBLIC_PORT="$pub" KRATOS_ADMIN_PORT="$adm"
	cp "$conf/identity.schema.json" "$d/identity.schema.json"
	t0=$(now_ms)
	start kratos "$log" DSN=memory -- serve -c "$d/kratos.yml"
	local pid=$last_pid
	wait_ready kratos "$log" "$pid" "http://127.0.0.1:$pub/health/ready"
	# The admin port answers /health/ready with a 307 to /admin/health/ready.
	wait_ready kratos "$log" "$pid" "http://127.0.0.1:$adm/admin/health/ready"
	echo "ory-smoke: kratos ready in $(($(now_ms) - t0)) ms: public http://127.0.0.1:$pub, admin http://127.0.0.1:$adm"

	local id
	id="$(expect kratos "$log" 201 -X POST "http://127.0.0.1:$adm/admin/identities" \
		-H 'Content-Type: application/json' \
		-d '{"schema_id":"default","traits":{"email":"smoke@clawker.invalid"}}')"
	grep -q '"schema_id":"default"' <<<"$id" || fail kratos "$log" "unexpected identity: $id"
	echo "ory-smoke: kratos OK (identity created)"
}

smoke_oathkeeper() {
	local d="$tmp/oathkeeper" proxy api metrics log t0
	mkdir -p "$d"
	log="$d/oathkeeper.log"
	free_port proxy
	free_port api
	free_port metrics
	local ports=(DIR="$d" OATHKEEPER_PROXY_PORT="$proxy" OATHKEEPER_API_PORT="$api" OATHKEEPER_METRICS_PORT="$metrics")
	render "$conf/oathkeeper.yml" "$d/oathkeeper.yml" "${ports[@]}"
	render "$conf/oathkeeper-rules.json" "$d/oathkeeper-rules.json" "${ports[@]}"
	t0=$(now_ms)
	start oathkeeper "$log" -- serve -c "$d/oathkeeper.yml"
	local pid=$last_pid
	wait_ready oathkeeper "$log" "$pid" "http://127.0.0.1:$api/health/ready"
	echo "ory-smoke: oathkeeper ready in $(($(now_ms) - t0)) ms: proxy http://127.0.0.1:$proxy, api http://127.0.0.1:$api"

	local body
	body="$(expect oathkeeper "$log" 200 "http://127.0.0.1:$proxy/smoke/health/alive")"
	grep -q '"status":"ok"' <<<"$body" || fail oathkeeper "$log" "unexpected proxied body: $body"
	expect oathkeeper "$log" 404 "http://127.0.0.1:$proxy/no-rule" >/dev/null
	echo "ory-smoke: oathkeeper OK (rule forwarded /smoke/health/alive; no rule, 404)"
}

names=("$@")
[ "${#names[@]}" -gt 0 ] || names=(hydra kratos oathkeeper)
for n in "${names[@]}"; do
	case "$n" in
	hydra | kratos | oathkeeper) ;;
	*) echo "ory-smoke: unknown server '$n' (want hydra, kratos or oathkeeper)" >&2; exit 2 ;;
	esac
done
for n in "${names[@]}"; do
	"smoke_$n"
done
echo "ory-smoke: all OK (${names[*]})"
