#!/usr/bin/env bash
# Services and system packages of the review app's tests (idempotent; needs root to install/start):
# Debian's chromium + chromium-driver (Selenium), poppler-utils (pdftoppm/pdftotext for the
# certificate test) and postgresql (the review tests run against SQLite and PostgreSQL).
# Prints nothing but warnings when everything is already there. Writes the test database URL to
# .ci/pg_url when PostgreSQL is ready (tests read TILPHENO_TEST_PG_URL, else that file).
set -uo pipefail
cd "$(dirname "$0")/.."
PKGS="chromium chromium-driver poppler-utils postgresql"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null) \
      || echo "warning: could not install$missing; the tests that need them will be skipped, saying why"
  else
    echo "warning: not root, cannot install$missing; the tests that need them will be skipped, saying why"
  fi
fi
# PostgreSQL: start the Debian cluster, make a role and a database for the tests (on 127.0.0.1 only).
if command -v pg_lsclusters >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  cluster=$(pg_lsclusters --no-header 2>/dev/null | head -1)
  if [ -z "$cluster" ]; then
    ver=$(ls /usr/lib/postgresql | sort -V | tail -1)
    pg_createcluster "$ver" main >/dev/null
    cluster=$(pg_lsclusters --no-header | head -1)
  fi
  ver=$(echo "$cluster" | awk '{print $1}'); name=$(echo "$cluster" | awk '{print $2}'); port=$(echo "$cluster" | awk '{print $3}')
  echo "$cluster" | grep -q online || pg_ctlcluster "$ver" "$name" start || echo "warning: could not start PostgreSQL $ver/$name"
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p "$port" && break; sleep 0.5; done
  if pg_isready -q -h 127.0.0.1 -p "$port"; then
    su postgres -c "psql -q -p $port -tAc \"SELECT 1 FROM pg_roles WHERE rolname='tilpheno'\"" | grep -q 1 \
      || su postgres -c "psql -q -p $port -c \"CREATE ROLE tilpheno LOGIN PASSWORD 'tilpheno-test'\""
    su postgres -c "psql -q -p $port -tAc \"SELECT 1 FROM pg_database WHERE datname='tilpheno_test'\"" | grep -q 1 \
      || su postgres -c "createdb -p $port -O tilpheno tilpheno_test"
    echo "postgresql://tilpheno:tilpheno-test@127.0.0.1:$port/tilpheno_test" > .ci/pg_url
  else
    echo "warning: PostgreSQL is not accepting connections; its review tests will be skipped"
  fi
fi
exit 0
