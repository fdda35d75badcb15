#!/usr/bin/env bash
# Installs what tidemark's build and tests need, if missing. Idempotent; safe to run on every CI run.
# - C toolchain for librdkafka (rdkafka builds it from source with make), zlib headers and OpenSSL headers
#   (librdkafka's TLS and SASL SCRAM link the system OpenSSL); the openssl command makes test certificates
# - PostgreSQL server binaries (tests start throwaway servers from them as the `postgres` user)
# - Chromium (the HTML-report test renders the report headless and screenshots it)
# - the tansu Kafka-protocol broker with in-memory storage (Kafka source tests start it on 127.0.0.1);
#   TIDEMARK_TANSU points the tests at another binary
# - moto's S3-compatible server (PyPI, in a venv under ~/.cache; S3 tests start it on 127.0.0.1);
#   TIDEMARK_MOTO points the tests at another moto_server
set -euo pipefail

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v make >/dev/null || need_apt+=(make)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
[ -e /usr/include/zlib.h ] || need_apt+=(zlib1g-dev)
[ -e /usr/include/openssl/ssl.h ] || need_apt+=(libssl-dev)
command -v openssl >/dev/null || need_apt+=(openssl)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
command -v chromium >/dev/null || need_apt+=(chromium)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root (or sudo) to install: ${need_apt[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # the Debian package starts a cluster; tests use their own throwaway servers
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters -h 2>/dev/null | while read -r ver name _; do pg_ctlcluster "$ver" "$name" stop || true; done
  fi
fi
# tansu: built from crates.io once per machine (~15-20 min on 2 cores), then cached under ~/.cargo.
# `--locked` uses the Cargo.lock shipped in the crate; `dynostore` provides the memory:// storage engine.
tansu_root="$HOME/.cargo/tansu-0.6.0"
tansu="${TIDEMARK_TANSU:-$tansu_root/bin/tansu}"
if [ ! -x "$tansu" ]; then
  if [ -n "${TIDEMARK_TANSU:-}" ]; then
    echo "setup: TIDEMARK_TANSU=$TIDEMARK_TANSU is not an executable" >&2
    exit 1
  fi
  echo "setup: installing tansu 0.6.0 (features dynostore) into $tansu_root; this takes 15-20 minutes"
  cargo install tansu --version 0.6.0 --locked --features dynostore --root "$tansu_root"
fi

# moto: an S3-compatible server for the s3:// tests, in its own venv (~30 s once per machine)
moto_venv="$HOME/.cache/tidemark/moto-5.2.1"
if [ -z "${TIDEMARK_MOTO:-}" ] && [ ! -x "$moto_venv/bin/moto_server" ]; then
  echo "setup: installing moto[server] 5.2.1 into $moto_venv"
  python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install -q --disable-pip-version-check "moto[server]==5.2.1"
fi

id postgres >/dev/null 2>&1 || { echo "setup: the postgres user is missing (install the postgresql package)" >&2; exit 1; }
echo "setup: ok (postgres $(ls -d /usr/lib/postgresql/*/bin | head -1), tansu $tansu, moto ${TIDEMARK_MOTO:-$moto_venv/bin/moto_server})"
