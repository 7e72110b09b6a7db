#!/usr/bin/env bash
# Run the PostgreSQL store tests against one private cluster.
#   run.sh POSTGRES_SH TEST_PROGRAM
# The cluster lives in a fresh temp dir and is stopped and removed on every
# exit path. Besides the trusted superuser in its URL it has a role
# "aiq_pw" that must log in with the password "right-pw" (scram-sha-256),
# for the wrong-password test.
set -euo pipefail
pg=$1
prog=$2

dir=$(mktemp -d "${TMPDIR:-/tmp}/aiq-pg.XXXXXX")
child=
cleanup() {
	[ -z "$child" ] || kill "$child" 2>/dev/null || true
	"$pg" stop "$dir" >/dev/null 2>&1 || true
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$pg" start "$dir"
hba=$dir/data/pg_hba.conf
{
	echo 'host all aiq_pw 127.0.0.1/32 scram-sha-256'
	cat "$hba"
} >"$hba.new"
cat "$hba.new" >"$hba"
rm -f "$hba.new"
"$pg" psql "$dir" -q -v ON_ERROR_STOP=1 \
	-c "CREATE ROLE aiq_pw LOGIN SUPERUSER PASSWORD 'right-pw'" \
	-c 'SELECT pg_reload_conf()' >/dev/null

export AIQ_PG_DIR=$dir AIQ_PG_SH=$pg
AIQ_PG_PORT=$(cat "$dir/port")
export AIQ_PG_PORT
AIQ_PG_URL=$(cat "$dir/url")
export AIQ_PG_URL
# In the background, so a TERM from the test runner stops the cluster at once.
"$prog" &
child=$!
wait "$child"
