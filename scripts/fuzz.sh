#!/usr/bin/env bash
# Fuzzes Hookline's parsers with cargo-fuzz (libFuzzer, nightly Rust): every target of
# fuzz/ (condition, webhook_def, ndjson, url_template), or only those named as arguments,
# each for FUZZ_SECONDS (default 600) seconds, one process at a time, growing
# fuzz/corpus/<target>/. Installs cargo-fuzz when it is absent. Fails when any target
# leaves a new crash, timeout or out-of-memory artifact in fuzz/artifacts/<target>/
# (reproduce one with `cargo +nightly fuzz run -s none -a <target> <artifact>`).
# FUZZ_SANITIZER (default none: the code is safe Rust, and panics are what the targets
# report) may be set to `address`; debug assertions (overflow checks) are always on.
#   scripts/fuzz.sh                      # all targets, 10 minutes each
#   FUZZ_SECONDS=60 scripts/fuzz.sh ndjson condition
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-600}"
flags=(--sanitizer "${FUZZ_SANITIZER:-none}" --debug-assertions)

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz.sh: cargo-fuzz needs a nightly toolchain (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: no cargo-fuzz; installing it" >&2
  cargo +nightly install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

# Build once, with the same flags as the runs below (other flags would rebuild).
cargo +nightly fuzz build "${flags[@]}"

artifacts() {
  [ -d artifacts ] || return 0
  find artifacts -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | sort
}
before="$(artifacts)"
failed=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  if [ -f "dict/$t.dict" ]; then
    args+=(-dict="dict/$t.dict")
  fi
  echo "fuzz.sh: $t for ${seconds}s" >&2
  if ! cargo +nightly fuzz run "${flags[@]}" "$t" "corpus/$t" -- "${args[@]}"; then
    failed+=("$t")
  fi
done

new="$(comm -13 <(printf '%s\n' "$before") <(artifacts) | sed '/^$/d')"
if [ -n "$new" ] || [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz.sh: FAILED: ${failed[*]:-}" >&2
  [ -n "$new" ] && printf 'fuzz.sh: new artifact %s\n' $new >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} target(s), ${seconds}s each, no crash" >&2
