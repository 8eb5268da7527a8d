#!/usr/bin/env bash
# The dashboard in headless Chromium (tests/browser/dashboard.mjs): installs Debian's
# chromium and playwright-core (from the npm registry, into target/browser) when absent,
# then drives a node built at target/debug/hookline. Screenshots: target/screenshots.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
export HOOKLINE_BIN="${HOOKLINE_BIN:-$target/debug/hookline}"
export SCREENSHOTS="${SCREENSHOTS:-$target/screenshots}"
if ! command -v chromium >/dev/null; then
  echo "browser-test.sh: installing chromium" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null
fi
pw="$target/browser"
if [ ! -d "$pw/node_modules/playwright-core" ]; then
  echo "browser-test.sh: installing playwright-core" >&2
  mkdir -p "$pw"
  (cd "$pw" && npm install --silent --no-audit --no-fund --no-save playwright-core@1.57 >/dev/null)
fi
# The test imports playwright-core from the installed copy.
cp tests/browser/dashboard.mjs "$pw/dashboard.mjs"
CHROMIUM="$(command -v chromium)" node "$pw/dashboard.mjs"
