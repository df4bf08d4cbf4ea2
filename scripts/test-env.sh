#!/usr/bin/env bash
# Prepares this machine for the test suite: installs the Debian packages it needs (as root), and
# starts the local PostgreSQL and Redis named by DATABASE_URL and REDIS_URL when they are down.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
while read -r pkg; do
  pkg=${pkg%%#*}; pkg=${pkg//[[:space:]]/}
  [ -n "$pkg" ] || continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done < requirements/debian-test.txt

is_local() { case "$1" in *@127.0.0.1*|*@localhost*|*://127.0.0.1*|*://localhost*) return 0;; esac; return 1; }

# A pass with a local Redis needs the server binary too (tests start their own to stop it).
if [ -n "${REDIS_URL:-}" ] && is_local "$REDIS_URL" && ! command -v redis-server >/dev/null; then
  missing+=(redis-server)
fi

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test-env: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "test-env: WARNING: missing Debian packages (${missing[*]}); run 'make test' as root to" \
         "install them, or expect loud skips." >&2
  fi
fi

wait_for() {  # wait_for SECONDS COMMAND...
  local limit=$1; shift
  for _ in $(seq 1 "$limit"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  return 1
}

if [ -n "${DATABASE_URL:-}" ] && is_local "$DATABASE_URL"; then
  fresh_pg=0
  if ! command -v pg_ctlcluster >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test-env: installing PostgreSQL"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql postgresql-client >/dev/null
    fresh_pg=1
  fi
  if [ "$fresh_pg" = 1 ]; then
    # A cluster this script just installed: let local TCP connections in without a password,
    # as on the CI machines (never done to a PostgreSQL this script did not install).
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' \
      "/etc/postgresql/$version/main/pg_hba.conf"
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload 2>/dev/null || true
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
      version=$(ls /etc/postgresql | sort -V | tail -n 1)
      echo "test-env: starting PostgreSQL"
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
      wait_for 30 pg_isready -q -h 127.0.0.1 -p 5432 || { echo "test-env: PostgreSQL did not start" >&2; exit 1; }
    else
      echo "test-env: DATABASE_URL names a local PostgreSQL, but none is installed here" >&2; exit 1
    fi
  fi
  if [ "$fresh_pg" = 1 ]; then
    db=${DATABASE_URL##*/}; db=${db%%\?*}
    runuser -u postgres -- psql -qtAc "SELECT 1 FROM pg_database WHERE datname='$db'" | grep -q 1 \
      || runuser -u postgres -- createdb "$db"
  fi
fi

if [ -n "${REDIS_URL:-}" ] && is_local "$REDIS_URL"; then
  if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    if command -v redis-server >/dev/null; then
      echo "test-env: starting Redis"
      mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
      redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
      wait_for 30 sh -c 'redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG' \
        || { echo "test-env: Redis did not start" >&2; exit 1; }
    else
      echo "test-env: REDIS_URL names a local Redis, but redis-server is not installed here" >&2; exit 1
    fi
  fi
fi
