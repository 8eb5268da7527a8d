#!/usr/bin/env bash
# Runs one Hookline node with every role. Uses $HOOKLINE_REDIS, else a Redis on
# 127.0.0.1:6379, starting one there if none answers. Extra arguments go to `hookline serve`.
set -euo pipefail
cd "$(dirname "$0")/.."

redis_answers() {
  timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG" 2>/dev/null
}

if [ -z "${HOOKLINE_REDIS:-}" ]; then
  if ! redis_answers 6379; then
    command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
    echo "run.sh: starting redis-server on 127.0.0.1:6379 (data in ./hookline-data/redis)"
    mkdir -p hookline-data/redis
    redis-server --daemonize yes --port 6379 --bind 127.0.0.1 --dir "$PWD/hookline-data/redis" --appendonly yes
    for _ in $(seq 1 50); do redis_answers 6379 && break; sleep 0.1; done
  fi
  export HOOKLINE_REDIS=redis://127.0.0.1:6379
fi
cargo build --release -p hookline
exec target/release/hookline serve "$@"
