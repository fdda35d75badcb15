#!/usr/bin/env bash
# Installs what tidemark's build and tests need, if missing. Idempotent; safe to run on every CI run.
# - Rust >= 1.95 with rustfmt and clippy (.ci/run checks formatting and lints); installed with rustup, not here
# - C toolchain for librdkafka (rdkafka builds it from source with make), pkg-config, zlib headers and OpenSSL
#   headers (librdkafka's TLS and SASL SCRAM link the system OpenSSL); the openssl command makes test certificates
# - PostgreSQL 15 or newer, server binaries (tests start throwaway servers from them as the `postgres` user;
#   the serving store writes with MERGE, new in 15)
# - Chromium (the HTML-report test renders the report headless and screenshots it)
# - Prometheus with promtool (the dashboard and alert-rule test runs a real one against `tidemark stream`)
# - python3 with venv (moto's S3 server and the benchmark scripts live in venvs)
# - the tansu Kafka-protocol broker with in-memory storage (Kafka source tests start it on 127.0.0.1);
#   TIDEMARK_TANSU points the tests at another binary
# - moto's S3-compatible server (PyPI, in a venv under ~/.cache; S3 tests start it on 127.0.0.1);
#   TIDEMARK_MOTO points the tests at another moto_server
#
# System packages are installed with apt-get (Debian, Ubuntu) or dnf (Fedora) when run as root, or through
# `sudo -n` when that works without a password. Otherwise the script prints the exact install command for
# what is missing and exits 1. `scripts/setup.sh --check` only reports (exit 1 when something is missing).
set -euo pipefail

CHECK_ONLY=0
[ "${1:-}" = "--check" ] && CHECK_ONLY=1

# --- Rust: rustup is per user, so this part never needs root; problems are reported with the packages ---
rust_min="1.95"
rust_have=""
problems=()
if ! command -v cargo >/dev/null || ! command -v rustc >/dev/null; then
  problems+=("Rust >= $rust_min: install it with rustup (https://rustup.rs), with the rustfmt and clippy components")
else
  rust_have="$(rustc --version | awk '{print $2}')"
  if [ "$(printf '%s\n%s\n' "$rust_min" "$rust_have" | sort -V | head -1)" != "$rust_min" ]; then
    problems+=("rustc $rust_have is older than the $rust_min tidemark needs: run 'rustup update stable'")
  fi
  for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
      if [ "$CHECK_ONLY" -eq 0 ] && command -v rustup >/dev/null; then
        echo "setup: adding the rustup component $component"
        rustup component add "$component"
      else
        problems+=("the Rust component $component: run 'rustup component add $component'")
      fi
    fi
  done
fi

# --- system packages --------------------------------------------------------------------------------------
if command -v apt-get >/dev/null; then manager=apt
elif command -v dnf >/dev/null; then manager=dnf
else manager=other
fi
# the package that provides each missing tool, by package manager: "apt dnf generic"
missing=()
need() { # need <apt name> <dnf name> <what it is>
  case "$manager" in apt) missing+=("$1") ;; dnf) missing+=("$2") ;; *) missing+=("$3") ;; esac
}
command -v cc >/dev/null || need gcc gcc "a C compiler (cc)"
command -v make >/dev/null || need make make "make"
command -v pkg-config >/dev/null || need pkg-config pkgconf-pkg-config "pkg-config"
[ -e /usr/include/zlib.h ] || need zlib1g-dev zlib-devel "zlib headers"
[ -e /usr/include/openssl/ssl.h ] || need libssl-dev openssl-devel "OpenSSL headers"
command -v openssl >/dev/null || need openssl openssl "the openssl command"
command -v python3 >/dev/null || need python3 python3 "python3"
if command -v python3 >/dev/null && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need python3-venv python3 "python3's venv module (with ensurepip)"
fi

# Postgres: the newest major version installed under /usr/lib/postgresql (Debian's layout, which the test
# harness looks in) or on PATH (initdb); TIDEMARK_PG_BIN overrides both, as in the tests
pg_major() { "$1/postgres" --version 2>/dev/null | awk '{print $3}' | cut -d. -f1; }
pg_bin="${TIDEMARK_PG_BIN:-}"
if [ -z "$pg_bin" ]; then
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do pg_bin="$dir"; break; done
fi
if [ -z "$pg_bin" ] && command -v initdb >/dev/null; then pg_bin="$(dirname "$(command -v initdb)")"; fi
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then
  need postgresql postgresql-server "PostgreSQL 15 or newer (server binaries)"
else
  pg_v="$(pg_major "$pg_bin")"
  if [ -z "$pg_v" ] || [ "$pg_v" -lt 15 ]; then
    echo "setup: PostgreSQL ${pg_v:-of unknown version} at $pg_bin is too old: tidemark needs 15 or newer (MERGE)" >&2
    need postgresql-15 postgresql-server "PostgreSQL 15 or newer (server binaries)"
  fi
fi

# Chromium under the names distributions use; TIDEMARK_CHROMIUM overrides (the report test reads it too)
chromium=""
for name in "${TIDEMARK_CHROMIUM:-}" chromium chromium-browser google-chrome-stable google-chrome; do
  [ -n "$name" ] && command -v "$name" >/dev/null && { chromium="$(command -v "$name")"; break; }
done
[ -n "$chromium" ] || need chromium chromium "Chromium or Google Chrome"
# Prometheus and promtool (TIDEMARK_PROMETHEUS_BIN: the folder holding both, as in the test)
prom_dir="${TIDEMARK_PROMETHEUS_BIN:-}"
if [ -n "$prom_dir" ]; then
  [ -x "$prom_dir/prometheus" ] && [ -x "$prom_dir/promtool" ] || need prometheus golang-github-prometheus "Prometheus and promtool"
else
  command -v prometheus >/dev/null && command -v promtool >/dev/null \
    || need prometheus golang-github-prometheus "Prometheus and promtool"
fi

for p in "${problems[@]}"; do echo "setup: missing: $p" >&2; done
if [ ${#missing[@]} -gt 0 ] && [ -n "${TIDEMARK_SETUP_AGAIN:-}" ]; then
  echo "setup: still missing after installing: ${missing[*]}" >&2
  exit 1
fi
if [ ${#missing[@]} -gt 0 ]; then
  case "$manager" in
    apt) install=(apt-get install -y -qq --no-install-recommends "${missing[@]}") ;;
    dnf) install=(dnf install -y -q "${missing[@]}") ;;
    *) install=() ;;
  esac
  sudo=()
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo=(sudo -n); fi
  if [ "$CHECK_ONLY" -eq 1 ] || [ ${#install[@]} -eq 0 ] || { [ "$(id -u)" -ne 0 ] && [ ${#sudo[@]} -eq 0 ]; }; then
    (IFS=','; echo "setup: missing: ${missing[*]}" | sed 's/,/, /g' >&2)
    if [ ${#install[@]} -gt 0 ]; then
      [ "$manager" = apt ] && echo "setup: install them as root with:  apt-get update && ${install[*]}" >&2
      [ "$manager" = dnf ] && echo "setup: install them as root with:  ${install[*]}" >&2
    else
      echo "setup: no apt-get or dnf here: install them with your system's package manager" >&2
    fi
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  [ "$manager" = apt ] && "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" "${install[@]}" >/dev/null
  # the Debian packages start a Postgres cluster and a Prometheus where an init system runs; tests use their
  # own throwaway servers
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters -h 2>/dev/null | while read -r ver name _; do "${sudo[@]}" pg_ctlcluster "$ver" "$name" stop || true; done
  fi
  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    "${sudo[@]}" systemctl disable --now prometheus || true
  fi
  TIDEMARK_SETUP_AGAIN=1 exec "$0" "$@" # check again: every tool must now be found
fi
[ ${#problems[@]} -eq 0 ] || exit 1
[ "$CHECK_ONLY" -eq 1 ] && { echo "setup: system packages ok"; }

# tansu: built from crates.io once per machine (~15-20 min on 2 cores), then cached under ~/.cargo.
# `--locked` uses the Cargo.lock shipped in the crate; `dynostore` provides the memory:// storage engine.
tansu_root="$HOME/.cargo/tansu-0.6.0"
tansu="${TIDEMARK_TANSU:-$tansu_root/bin/tansu}"
if [ ! -x "$tansu" ]; then
  if [ -n "${TIDEMARK_TANSU:-}" ]; then
    echo "setup: TIDEMARK_TANSU=$TIDEMARK_TANSU is not an executable" >&2
    exit 1
  fi
  [ "$CHECK_ONLY" -eq 1 ] && { echo "setup: missing: tansu 0.6.0 (the next run without --check builds it, 15-20 min)" >&2; exit 1; }
  echo "setup: installing tansu 0.6.0 (features dynostore) into $tansu_root; this takes 15-20 minutes"
  cargo install tansu --version 0.6.0 --locked --features dynostore --root "$tansu_root"
fi

# moto: an S3-compatible server for the s3:// tests, in its own venv (~30 s once per machine)
moto_venv="$HOME/.cache/tidemark/moto-5.2.1"
if [ -z "${TIDEMARK_MOTO:-}" ] && [ ! -x "$moto_venv/bin/moto_server" ]; then
  [ "$CHECK_ONLY" -eq 1 ] && { echo "setup: missing: moto 5.2.1 (the next run without --check installs it)" >&2; exit 1; }
  echo "setup: installing moto[server] 5.2.1 into $moto_venv"
  python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install -q --disable-pip-version-check "moto[server]==5.2.1"
fi

# as root the tests run the server as the postgres user (initdb refuses root); otherwise as the caller
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  echo "setup: the postgres user is missing (the postgresql package creates it)" >&2
  exit 1
fi
echo "setup: ok (rustc $rust_have, postgres $pg_bin, chromium $chromium, prometheus ${prom_dir:-$(command -v prometheus)}, tansu $tansu, moto ${TIDEMARK_MOTO:-$moto_venv/bin/moto_server})"
