#!/bin/sh
# Run one test program against ONE private RabbitMQ node (started in a temp
# dir on free loopback ports, always stopped afterwards; never a system node).
#   run.sh RABBITMQ_SH TEST_PROGRAM [args...]
# The program finds the node in AIQ_TEST_AMQP_URL and can restart it with
# "$AIQ_TEST_RABBITMQ_SH restart $AIQ_TEST_RABBITMQ_DIR".
# The node runs with consumer_timeout = 5000 ms (and a 1 s channel tick, see
# scripts/services/rabbitmq.sh) so the long-task test finishes quickly.
set -eu
rabbitmq_sh=$1
shift
dir=$(mktemp -d "${TMPDIR:-/tmp}/aiq-amqp-test.XXXXXX")
cleanup() {
	"$rabbitmq_sh" stop "$dir" >/dev/null 2>&1 || true
	rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
"$rabbitmq_sh" start "$dir" 'consumer_timeout = 5000'
# The %2f spelling: test_amqp.c also reads it with librabbitmq-c's
# amqp_parse_url, which does not take kombu's "//" (the urls suite tests that).
AIQ_TEST_AMQP_URL="amqp://guest:guest@127.0.0.1:$(cat "$dir/port")/%2f"
export AIQ_TEST_AMQP_URL
export AIQ_TEST_RABBITMQ_DIR="$dir"
export AIQ_TEST_RABBITMQ_SH="$rabbitmq_sh"
status=0
"$@" || status=$?
exit $status
