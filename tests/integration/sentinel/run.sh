#!/bin/sh
# Run one test program against a private Sentinel-managed Redis (master,
# replica, three sentinels; scripts/services/redis_sentinel.sh), started in a
# temp dir on free loopback ports and always stopped afterwards.
#   run.sh REDIS_SENTINEL_SH TEST_PROGRAM [args...]
set -eu
sh_=$1
shift
dir=$(mktemp -d "${TMPDIR:-/tmp}/aiq-sentinel-test.XXXXXX")
cleanup() {
	"$sh_" stop "$dir" || true
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
"$sh_" start "$dir" >/dev/null
. "$dir/env"
export AIQ_TEST_SENTINEL_URL="$AIQ_SENTINEL_URL"
export AIQ_TEST_SENTINEL_MASTER="$AIQ_SENTINEL_MASTER"
export AIQ_TEST_SENTINEL_DATA_PORTS="$AIQ_SENTINEL_DATA_PORTS"
export AIQ_TEST_SENTINEL_DIR="$dir"
export AIQ_TEST_SENTINEL_SH="$sh_"
status=0
"$@" || status=$?
exit $status
