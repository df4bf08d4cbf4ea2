#!/usr/bin/env bash
# Runs the suite. In CI (CI=true) a skipped real-component test fails the run, except those the
# current pass cannot have: PostgreSQL tests without DATABASE_URL, Redis tests without REDIS_URL.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${CI:-}" = "true" ] || [ "${VAULT_TEST_STRICT:-}" = "1" ]; then
  export VAULT_TEST_STRICT=1
  allow=()
  [ -n "${DATABASE_URL:-}" ] || allow+=(postgres)
  [ -n "${REDIS_URL:-}" ] || allow+=(redis)
  VAULT_TEST_ALLOW_SKIP=$(IFS=,; echo "${allow[*]:-}")
  export VAULT_TEST_ALLOW_SKIP
fi
echo "pytest: database=$([ -n "${DATABASE_URL:-}" ] && echo PostgreSQL || echo SQLite)" \
  "redis=$([ -n "${REDIS_URL:-}" ] && echo yes || echo no) strict=${VAULT_TEST_STRICT:-0}"
exec .venv/bin/python -m pytest "$@"
