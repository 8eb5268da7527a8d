#!/usr/bin/env bash
# The test command: formatting, lints and every test of the workspace.
# Needs a Redis: uses $HOOKLINE_TEST_REDIS, else 127.0.0.1:6379 when it answers, else
# starts a throwaway redis-server on a free port (installing it with apt-get if absent).
set -euo pipefail
cd "$(dirname "$0")/.."

redis_answers() { # host port
  timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2 && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG" 2>/dev/null
}

started_redis=""
cleanup() { if [ -n "$started_redis" ]; then kill "$started_redis" 2>/dev/null || true; fi; }
trap cleanup EXIT

if [ -z "${HOOKLINE_TEST_REDIS:-}" ]; then
  if redis_answers 127.0.0.1 6379; then
    export HOOKLINE_TEST_REDIS=redis://127.0.0.1:6379
  else
    if ! command -v redis-server >/dev/null; then
      echo "test.sh: no redis-server; installing it" >&2
      (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 6390)
    dir=$(mktemp -d)
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
    started_redis=$!
    for _ in $(seq 1 50); do redis_answers 127.0.0.1 "$port" && break; sleep 0.1; done
    redis_answers 127.0.0.1 "$port" || { echo "test.sh: redis-server did not start" >&2; cat "$dir/redis.log" >&2; exit 1; }
    export HOOKLINE_TEST_REDIS="redis://127.0.0.1:$port"
  fi
fi
echo "test.sh: Redis at $HOOKLINE_TEST_REDIS"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The process tests run the real binary.
cargo build -p hookline --locked
cargo test --workspace --locked
# The dashboard in headless Chromium (installs chromium and playwright-core when absent).
scripts/browser-test.sh
# The API against its OpenAPI description (installs schemathesis from PyPI when absent).
scripts/api-test.sh
