#!/usr/bin/env bash
# Delivery benchmarks against a local sink (numbers, not pass/fail). Needs a Redis for the
# redis runs (HOOKLINE_TEST_REDIS or 127.0.0.1:6379). Extra arguments go to every run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p hookline
export HOOKLINE_BIN="${CARGO_TARGET_DIR:-$PWD/target}/release/hookline"
bench() { cargo bench -p hookline-tests --bench deliveries -- "$@"; }
bench --store redis --nodes 1,2,3 --records 5000 --concurrency 64 --sink-ms 20 "$@"
bench --store embedded --nodes 1 --records 5000 --concurrency 64 --sink-ms 0 "$@"
# Bulk calls: batch sizes under real-time triggers, then one scheduled tick sending them all.
bench --store redis --nodes 1 --records 5000 --concurrency 8 --sink-ms 20 --batch 1,10,100 "$@"
bench --store redis --nodes 1 --records 5000 --concurrency 8 --sink-ms 20 --batch 1,10,100 --trigger schedule "$@"
# Bulk ingestion: `hookline import` of an NDJSON file, without and with a webhook firing.
bench --store redis --ingest --records 20000 --concurrency 8 --sink-ms 20 --batch 100 "$@"
