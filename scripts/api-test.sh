#!/usr/bin/env bash
# The API against its description: a node (target/debug/hookline, embedded store) with a
# little data, then schemathesis (from PyPI, installed into target/schemathesis when absent)
# runs property-based cases from /openapi.json: no 5xx, every status, content type and body
# as described. One worker: schemathesis's generation in two threads once hit a CPython
# `ast` error ("AST constructor recursion depth mismatch") that fails the run with no case failed.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
bin="${HOOKLINE_BIN:-$target/debug/hookline}"
venv="$target/schemathesis"
if [ ! -x "$venv/bin/st" ]; then
  echo "api-test.sh: installing schemathesis" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q schemathesis >/dev/null
fi
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" --data-dir "$dir/data" --allow-target 127.0.0.0/8 \
  --node-id api-test >"$dir/node.log" 2>&1 &
node=$!
trap 'kill $node 2>/dev/null || true; rm -rf "$dir"' EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 1 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done
call() { curl -sf -X "$1" "$base$2" -H 'content-type: application/json' ${3:+-d "$3"} >/dev/null; }
# The examples in the description name these.
call POST /v1/objects '{"name": "survey", "id_field": "a_surveyid", "fields": [{"key": "a_surveyid", "type": "string"}, {"key": "status", "label": "Status", "type": "string"}, {"key": "score", "label": "Score", "type": "number"}]}'
call POST /v1/webhooks '{"id": "tickets", "object": "survey", "trigger": {"on_create": true, "on_update": true, "fields": ["Status"], "condition": "Status = Completed and Score < 5"}, "request": {"method": "POST", "url": "http://127.0.0.1:9/tickets", "body_template": "{}"}, "settings": {"retries": 0}}'
call POST /v1/objects/survey/records '{"id": "S1", "fields": {"a_surveyid": "S1", "status": "Completed", "score": 2}}'
(cd "$dir" && "$venv/bin/st" run "$base/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  --max-examples "${API_TEST_EXAMPLES:-40}" --workers 1 --seed "${API_TEST_SEED:-1}" --warnings off) || {
  echo "api-test.sh: failed; the node's log:" >&2
  tail -50 "$dir/node.log" >&2
  exit 1
}
if grep -q "panicked" "$dir/node.log"; then
  echo "api-test.sh: the node panicked" >&2
  grep -B2 -A8 panicked "$dir/node.log" >&2
  exit 1
fi
