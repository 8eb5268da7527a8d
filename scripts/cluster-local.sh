#!/usr/bin/env bash
# A local Hookline cluster of plain processes on 127.0.0.1 — no Docker.
#
#   scripts/cluster-local.sh [N] [--check]
#
# Starts a throwaway redis-server (append-only, in a temp dir, on a free port) unless
# HOOKLINE_REDIS is set, then N `hookline serve` nodes sharing it, a random namespace and a
# generated secret key: node 1 runs every role on port $PORT (default 8080), nodes 2..N run
# `--roles dispatcher`. Every node may call targets on 127.0.0.0/8. Logs go to a temp dir.
# Ctrl-C (or SIGTERM) stops everything: the nodes drain, then Redis stops.
#
# --check: start the cluster (node 1 on a free port unless PORT is set), wait for /readyz,
# define an object, a webhook and a record against a small local sink, wait until the sink
# got the delivery, print OK and stop everything. Exit status 0 on success; non-zero with
# a message (and the end of every log) on any failure.
#
# The binary: $HOOKLINE_BIN, else target/release/hookline, else target/debug/hookline,
# else `cargo build -p hookline` (target/ is $CARGO_TARGET_DIR when set).
# shellcheck disable=SC2317  # stop_all and on_exit run from traps
set -uo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
prog="cluster-local.sh"

usage() {
  echo "usage: $prog [N] [--check]   (N >= 1 nodes, default 3)" >&2
  exit 2
}

nodes=3
check=0
for arg in "$@"; do
  case "$arg" in
    --check) check=1 ;;
    -h | --help) usage ;;
    '' | *[!0-9]*) echo "$prog: unknown argument '$arg'" >&2; usage ;;
    *) nodes="$arg" ;;
  esac
done
[ "$nodes" -ge 1 ] 2>/dev/null || usage

for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "$prog: $tool is needed" >&2; exit 1; }
done

# ---------------------------------------------------------------- state and stopping
work="$(mktemp -d "${TMPDIR:-/tmp}/hookline-cluster.XXXXXX")"
node_pids=()
redis_pid=""
sink_pid=""
stopping=0

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Waits up to $2 seconds for process $1 to exit.
wait_gone() {
  local pid="$1" i
  for ((i = 0; i < $2 * 10; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  return 1
}

stop_all() {
  [ "$stopping" = 1 ] && return
  stopping=1
  trap '' INT TERM
  local pid
  # The nodes first: on SIGTERM they stop taking work and drain (up to 30 s).
  for pid in "${node_pids[@]}"; do alive "$pid" && kill -TERM "$pid" 2>/dev/null; done
  for pid in "${node_pids[@]}"; do
    if ! wait_gone "$pid" 40; then
      echo "$prog: node pid $pid did not stop in 40 s; killing it" >&2
      kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
  done
  if alive "$sink_pid"; then kill -TERM "$sink_pid" 2>/dev/null; wait "$sink_pid" 2>/dev/null; fi
  # Redis last (SIGTERM: it finishes its append-only file).
  if alive "$redis_pid"; then
    kill -TERM "$redis_pid" 2>/dev/null
    wait_gone "$redis_pid" 10 || kill -KILL "$redis_pid" 2>/dev/null
    wait "$redis_pid" 2>/dev/null
  fi
}

on_exit() {
  local status=$?
  stop_all
  if { [ "$check" = 1 ] && [ "$status" = 0 ]; } || ! compgen -G "$work/*.log" >/dev/null; then
    rm -rf "$work"
  else
    echo "$prog: stopped; logs kept in $work" >&2
  fi
  exit "$status"
}
trap on_exit EXIT
trap 'echo; echo "$prog: stopping" >&2; exit 130' INT
trap 'echo "$prog: stopping" >&2; exit 143' TERM

fail() {
  echo "$prog: FAILED: $*" >&2
  local f
  for f in "$work"/*.log; do
    [ -e "$f" ] || continue
    echo "----- last lines of $f" >&2
    tail -n 20 "$f" >&2
  done
  exit 1
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------- the binary
target="${CARGO_TARGET_DIR:-$root/target}"
if [ -n "${HOOKLINE_BIN:-}" ]; then
  bin="$HOOKLINE_BIN"
elif [ -x "$target/release/hookline" ]; then
  bin="$target/release/hookline"
elif [ -x "$target/debug/hookline" ]; then
  bin="$target/debug/hookline"
else
  echo "$prog: no hookline binary; building it (cargo build -p hookline)" >&2
  (cd "$root" && cargo build -p hookline) || fail "cargo build -p hookline failed"
  bin="$target/debug/hookline"
fi
[ -x "$bin" ] || fail "$bin is not an executable"

# ---------------------------------------------------------------- Redis
redis_answers() { # port
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG" 2>/dev/null
}

if [ -n "${HOOKLINE_REDIS:-}" ]; then
  redis_url="$HOOKLINE_REDIS"
else
  command -v redis-server >/dev/null || fail "redis-server is not installed (or set HOOKLINE_REDIS=redis://host:port)"
  redis_port="$(free_port)"
  mkdir -p "$work/redis"
  # In a session of its own, so a Ctrl-C in the terminal reaches the nodes (which drain on
  # SIGINT) but not Redis: it stops last, from stop_all, once the nodes are done with it.
  detach=()
  command -v setsid >/dev/null && detach=(setsid)
  "${detach[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly yes \
    --dir "$work/redis" >"$work/redis.log" 2>&1 &
  redis_pid=$!
  for _ in $(seq 1 100); do redis_answers "$redis_port" && break; alive "$redis_pid" || break; sleep 0.1; done
  redis_answers "$redis_port" || fail "redis-server did not start on port $redis_port"
  redis_url="redis://127.0.0.1:$redis_port"
fi

# ---------------------------------------------------------------- the nodes
namespace="local-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
secret_key="$(head -c 32 /dev/urandom | base64)"
if [ -n "${PORT:-}" ]; then
  api_port="$PORT"
elif [ "$check" = 1 ]; then
  api_port="$(free_port)" # a check must not depend on 8080 being free
else
  api_port=8080
fi
api_url="http://127.0.0.1:$api_port"

start_node() { # index roles listen
  local i="$1" roles="$2" listen="$3"
  mkdir -p "$work/node$i"
  RUST_LOG="${RUST_LOG:-info}" "$bin" serve \
    --listen "$listen" \
    --roles "$roles" \
    --redis "$redis_url" \
    --namespace "$namespace" \
    --secret-key "$secret_key" \
    --node-id "node$i" \
    --data-dir "$work/node$i" \
    --allow-target 127.0.0.0/8 \
    >"$work/node$i.log" 2>&1 &
  node_pids+=($!)
}

start_node 1 api,coordinator,trigger,dispatcher,writeback "127.0.0.1:$api_port"
for ((i = 2; i <= nodes; i++)); do
  start_node "$i" dispatcher 127.0.0.1:0
done

# Every node prints "hookline listening on ..." once its roles are running.
for ((i = 1; i <= nodes; i++)); do
  pid="${node_pids[$((i - 1))]}"
  for _ in $(seq 1 300); do
    grep -q "^hookline listening on" "$work/node$i.log" 2>/dev/null && break
    alive "$pid" || fail "node$i exited at start (see $work/node$i.log)"
    sleep 0.1
  done
  grep -q "^hookline listening on" "$work/node$i.log" || fail "node$i did not start in 30 s"
done
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "$api_url/readyz" 2>/dev/null && break
  sleep 0.1
done
curl -fsS -o /dev/null "$api_url/readyz" || fail "$api_url/readyz did not answer 200"

echo "hookline cluster: $nodes node(s), namespace $namespace, Redis $redis_url"
if [ "$nodes" -gt 1 ]; then
  echo "  API:  $api_url   (node1, every role; node2..node$nodes: --roles dispatcher)"
else
  echo "  API:  $api_url   (node1, every role)"
fi
echo "  logs: $work"
echo "  binary: $bin"

# ---------------------------------------------------------------- serve until stopped
if [ "$check" = 0 ]; then
  echo "  stop: Ctrl-C (or kill -TERM $$)"
  while true; do
    for ((i = 1; i <= nodes; i++)); do
      alive "${node_pids[$((i - 1))]}" || fail "node$i exited (see $work/node$i.log)"
    done
    sleep 1 &
    wait $! 2>/dev/null
  done
fi

# ---------------------------------------------------------------- --check
# A sink that records every POST: "<webhook-id> <body on one line>".
cat >"$work/sink.py" <<'PY'
import http.server, sys

port_file, hits_file = sys.argv[1], sys.argv[2]

class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with open(hits_file, "ab") as f:
            f.write(self.headers.get("webhook-id", "-").encode() + b" " + body.replace(b"\n", b" ") + b"\n")
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os
os.rename(port_file + ".tmp", port_file)
server.serve_forever()
PY
: >"$work/sink.hits"
python3 "$work/sink.py" "$work/sink.port" "$work/sink.hits" >"$work/sink.log" 2>&1 &
sink_pid=$!
for _ in $(seq 1 100); do [ -s "$work/sink.port" ] && break; alive "$sink_pid" || break; sleep 0.1; done
[ -s "$work/sink.port" ] || fail "the sink did not start"
sink_url="http://127.0.0.1:$(cat "$work/sink.port")"

api() { # method path [json]
  local out status
  out="$(curl -sS -X "$1" "$api_url$2" -H 'content-type: application/json' ${3:+-d "$3"} -w '\n%{http_code}')" ||
    fail "$1 $2: no answer"
  status="${out##*$'\n'}"
  case "$status" in
    2??) printf '%s' "${out%$'\n'*}" ;;
    *) fail "$1 $2 answered $status: ${out%$'\n'*}" ;;
  esac
}

api POST /v1/objects '{"name": "item", "fields": [{"key": "n", "type": "number"}]}' >/dev/null
api POST /v1/webhooks "{\"id\": \"local-check\", \"object\": \"item\", \"trigger\": {\"on_create\": true},
  \"request\": {\"url\": \"$sink_url/in\"},
  \"settings\": {\"timeout\": \"5s\", \"retries\": 5, \"retry_wait\": \"500ms\"}}" >/dev/null
# Let every node's coordinator hear of the new webhook before the record arrives.
sleep 2
api POST /v1/objects/item/records '{"id": "check-1", "fields": {"n": 1}}' >/dev/null

for _ in $(seq 1 300); do
  grep -q '"check-1"' "$work/sink.hits" && break
  sleep 0.1
done
grep -q '"check-1"' "$work/sink.hits" || fail "the sink got no delivery for record check-1 in 30 s"
webhook_id="$(grep '"check-1"' "$work/sink.hits" | head -n 1 | cut -d' ' -f1)"
# The attempt is recorded once the response is in: poll for it.
by=""
for _ in $(seq 1 100); do
  attempts="$(api GET '/v1/webhooks/local-check/attempts?record_id=check-1')"
  by="$(printf '%s' "$attempts" | python3 -c '
import json, sys
ok = [a for a in json.load(sys.stdin) if a.get("outcome") == "success"]
print(ok[0].get("node_id") or "?" if ok else "")
' 2>/dev/null)"
  [ -n "$by" ] && break
  sleep 0.1
done
[ -n "$by" ] || fail "no successful attempt recorded for check-1: $attempts"
echo "delivered record check-1 to the sink (webhook-id $webhook_id, by $by)"
echo "OK"
exit 0
