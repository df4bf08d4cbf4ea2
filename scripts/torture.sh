#!/usr/bin/env bash
# make torture: the reliability suite at full size against PostgreSQL and Redis, then the load
# run, then a summary (var/torture/<UTC time>/summary.md, also printed). Exit 0 only if all held.
#
# The CI subset of the same tests runs at a small size in every `make test`; here VAULT_TORTURE=1
# makes the fuzzers, schemathesis and the fault tests run long. No real-component test may skip.
set -uo pipefail
cd "$(dirname "$0")/.."

export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
export VAULT_TORTURE=1 VAULT_TEST_STRICT=1 VAULT_TEST_ALLOW_SKIP=
out="var/torture/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
export VAULT_TORTURE_SUMMARY_DIR="$PWD/$out"
LOAD_CLIENTS=${LOAD_CLIENTS:-32}
LOAD_SECONDS=${LOAD_SECONDS:-60}

bash scripts/test-env.sh || exit 1
make --no-print-directory dev-install || exit 1

status=0
started=$(date +%s)
echo "== torture 1/2: fault injection, fuzzing, isolation matrix, schemathesis, secrets scan"
.venv/bin/python -m pytest -p no:cacheprovider -q \
  tests/reliability tests/fuzz tests/api/test_isolation.py tests/console/test_console_isolation.py \
  tests/client/test_marker.py tests/objects/test_objects_verify.py --hypothesis-show-statistics \
  --junitxml "$out/pytest.xml" 2>&1 | tee "$out/pytest.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== torture 2/2: load: $LOAD_CLIENTS clients for $LOAD_SECONDS s against gunicorn" \
     "with PostgreSQL and Redis"
.venv/bin/python bench/load.py --clients "$LOAD_CLIENTS" --seconds "$LOAD_SECONDS" \
  --redis-url "${REDIS_URL%/*}/5" --json "$out/load.json" 2>&1 | tee "$out/load.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

.venv/bin/python scripts/torture_summary.py "$out" --status "$status" \
  --seconds "$(( $(date +%s) - started ))" || status=1
exit "$status"
