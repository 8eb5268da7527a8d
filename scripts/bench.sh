#!/usr/bin/env bash
# The benchmark suite (numbers, not pass/fail): every case against a fast local sink, one
# table at the end (see tests/benches/suite.rs for the cases). Needs a Redis
# (HOOKLINE_TEST_REDIS or 127.0.0.1:6379) and wrk (installed from Debian's packages when
# absent); the scale-out case needs a writable cgroup v1 cpu controller
# (/sys/fs/cgroup/cpu). Extra arguments go to the suite, e.g. `--cases drain,latency`,
# `--jobs 50000`, `--quick`, `--perf /tmp/drain.perf`.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
  echo "bench.sh: no wrk; installing it" >&2
  (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null || echo "bench.sh: could not install wrk; no raw rate" >&2
fi
if [[ " $* " == *" --callgrind "* ]] && ! command -v valgrind >/dev/null; then
  echo "bench.sh: no valgrind; installing it" >&2
  (apt-get update -qq && apt-get install -y -qq valgrind) >/dev/null
fi
cargo build --release -p hookline --locked
export HOOKLINE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/hookline"
export TEST_NODE_LOG="${TEST_NODE_LOG:-warn}"
cargo bench -p hookline-tests --bench suite --locked -- "$@"
