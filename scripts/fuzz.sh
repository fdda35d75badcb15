#!/usr/bin/env bash
# Long tier: fuzzes the event decoder and the spec parser with cargo-fuzz (libFuzzer, nightly toolchain,
# AddressSanitizer) for FUZZ_SECONDS each (default 600). Seeds: the malformed-event corpus
# (tests/corpus/malformed/cases.toml) and the example spec. Exits non-zero on the first crash; libFuzzer
# then prints the input and saves it under fuzz/artifacts/<target>/ (replay: cargo +nightly fuzz run <target> <file>).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
secs="${FUZZ_SECONDS:-600}"
work="${FUZZ_WORK:-$(mktemp -d)}"
target_dir="${FUZZ_TARGET_DIR:-$HOME/.cargo/target-fuzz}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal

mkdir -p "$work/decode" "$work/spec"
python3 - "$root/tests/corpus/malformed/cases.toml" "$work/decode" <<'PY'
import sys, tomllib, os
cases = tomllib.load(open(sys.argv[1], "rb"))["case"]
for i, c in enumerate(cases):
    data = bytes.fromhex(c["hex"]) if "hex" in c else c["text"].encode()
    open(os.path.join(sys.argv[2], f"case{i:03}"), "wb").write(data)
good = b'{"id":"g1","ts":"2026-11-23T06:00:00Z","page":"/a","country":"de","ms":12,"kb":0.5,"extra":[1,{"x":null}]}'
open(os.path.join(sys.argv[2], "good"), "wb").write(good)
PY
cp "$root"/fuzz/seeds/spec/* "$work/spec/"

cd "$root/fuzz"
for t in decode spec; do
  echo "fuzz: $t for ${secs}s (corpus $work/$t)"
  cargo +nightly fuzz run --target-dir "$target_dir" -O --debug-assertions "$t" "$work/$t" -- \
    -max_total_time="$secs" -max_len=8192 -print_final_stats=1 2>&1 | tee "$work/$t.log" | grep -E '^(#[0-9]+ +DONE|stat::|==[0-9]+==ERROR|Done)' || true
  if grep -qE '==[0-9]+==ERROR|panicked|deadly signal' "$work/$t.log"; then
    echo "fuzz: $t CRASHED; see $work/$t.log and $root/fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
echo "fuzz: no crashes"
