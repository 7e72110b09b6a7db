#!/usr/bin/env bash
# The 'cluster' suite: failover against real clusters, started ONCE for the
# whole suite in a temp dir on free loopback ports (never a system server),
# and always stopped.
#   run.sh SRCDIR AMQP_PROGRAM PG_PROGRAM
#  - a 3-node RabbitMQ cluster (scripts/services/rabbitmq_cluster.sh) for
#    AMQP_PROGRAM (AIQ_TEST_AMQP_URLS: the ';'-separated node URLs);
#  - two PostgreSQL primaries with a streaming standby each
#    (scripts/services/postgres_standby.sh) for PG_PROGRAM: AIQ_TEST_PG_DIR
#    asynchronous, AIQ_TEST_PG_DIR2 synchronous.
# Each program prints its figures on lines starting with "cluster:"; the
# suite's wall time is printed at the end.
set -euo pipefail
src=$1
amqp_prog=$2
pg_prog=$3
start=$SECONDS
export AIQ_TEST_CLUSTER_SH=$src/scripts/services/rabbitmq_cluster.sh
export AIQ_TEST_PG_STANDBY_SH=$src/scripts/services/postgres_standby.sh
export AIQ_TEST_CELERY_PY=$(cd "$(dirname "$0")" && pwd)/celery_quorum.py
rdir=$(mktemp -d "${TMPDIR:-/tmp}/aiq-cluster.XXXXXX")
pdir=$(mktemp -d "${TMPDIR:-/tmp}/aiq-pgha.XXXXXX")
pdir2=$(mktemp -d "${TMPDIR:-/tmp}/aiq-pgsync.XXXXXX")
child=
cleanup() {
	[ -z "$child" ] || kill "$child" 2>/dev/null || true
	"$AIQ_TEST_CLUSTER_SH" stop "$rdir" >/dev/null 2>&1 || true
	"$AIQ_TEST_PG_STANDBY_SH" stop "$pdir" >/dev/null 2>&1 || true
	"$AIQ_TEST_PG_STANDBY_SH" stop "$pdir2" >/dev/null 2>&1 || true
	rm -rf "$rdir" "$pdir" "$pdir2"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

status=0
# The PostgreSQL pairs boot in the background while RabbitMQ forms: one
# with an asynchronous standby, one with a synchronous standby (for the
# crash of the primary).
{
	"$AIQ_TEST_PG_STANDBY_SH" start "$pdir" &&
		"$AIQ_TEST_PG_STANDBY_SH" start "$pdir2" sync
} >"$pdir.log" 2>&1 &
pg_boot=$!
"$AIQ_TEST_CLUSTER_SH" start "$rdir" 3
echo "cluster: 3 RabbitMQ nodes ready after $((SECONDS - start)) s"
export AIQ_TEST_CLUSTER_DIR=$rdir
AIQ_TEST_AMQP_URLS=$(cat "$rdir/urls")
export AIQ_TEST_AMQP_URLS
"$amqp_prog" &
child=$!
wait "$child" || status=1
child=
"$AIQ_TEST_CLUSTER_SH" stop "$rdir" >/dev/null 2>&1 || true

if wait "$pg_boot"; then
	export AIQ_TEST_PG_DIR=$pdir AIQ_TEST_PG_DIR2=$pdir2
	"$pg_prog" &
	child=$!
	wait "$child" || status=1
	child=
else
	cat "$pdir.log" >&2
	status=1
fi
rm -f "$pdir.log"
echo "cluster: suite wall time $((SECONDS - start)) s"
exit $status
