#!/usr/bin/env bash
# Installs what tidemark's build and tests need, if missing. Idempotent; safe to run on every CI run.
# - C toolchain for librdkafka (rdkafka builds it from source with make) and zlib headers
# - PostgreSQL server binaries (tests start throwaway servers from them as the `postgres` user)
set -euo pipefail

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v make >/dev/null || need_apt+=(make)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
[ -e /usr/include/zlib.h ] || need_apt+=(zlib1g-dev)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)

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
id postgres >/dev/null 2>&1 || { echo "setup: the postgres user is missing (install the postgresql package)" >&2; exit 1; }
echo "setup: ok (postgres $(ls -d /usr/lib/postgresql/*/bin | head -1))"
