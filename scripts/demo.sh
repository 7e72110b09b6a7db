#!/usr/bin/env bash
# The main job: aiqueue-server with in-process workers, the sample lyrics
# posted to it over HTTP, the analyses printed.
#
#   scripts/demo.sh              on the embedded default (memory://): no services
#   scripts/demo.sh --services   on private RabbitMQ (broker) + Redis (results) +
#                                PostgreSQL (archive), started here on free
#                                loopback ports and stopped afterwards
set -euo pipefail
cd "$(dirname "$0")/.."

services=0
case "${1:-}" in
--services) services=1 ;;
"") ;;
*) echo "usage: $0 [--services]" >&2; exit 2 ;;
esac

if [ $services -eq 1 ]; then
	scripts/install-deps.sh all
else
	scripts/install-deps.sh demo
fi
# The features this run needs are 'enabled' in build-demo, so a build
# configured by an earlier run without them (before their packages were
# installed) is reconfigured instead of serving "scheme not built in".
features=(server)
if [ $services -eq 1 ]; then
	features+=(amqp redis postgres)
fi
/usr/bin/python3 scripts/ensure_build.py build-demo "${features[@]}" -- \
	--buildtype=release -Dtests=false
ninja -C build-demo >/dev/null

tmp=$(mktemp -d)
chmod 755 "$tmp" # the postgres user must reach its data dir below
server_pid=
cleanup() {
	[ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
	if [ $services -eq 1 ]; then
		bash scripts/services/rabbitmq.sh stop "$tmp/rabbitmq" >/dev/null 2>&1 || true
		bash scripts/services/redis.sh stop "$tmp/redis" >/dev/null 2>&1 || true
		bash scripts/services/postgres.sh stop "$tmp/postgres" >/dev/null 2>&1 || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT

args=(--listen 127.0.0.1:0 --workers 2 --log-level warning)
if [ $services -eq 1 ]; then
	mkdir -p "$tmp/rabbitmq" "$tmp/redis" "$tmp/postgres"
	echo "starting private RabbitMQ, Redis and PostgreSQL..."
	bash scripts/services/rabbitmq.sh start "$tmp/rabbitmq" >/dev/null
	bash scripts/services/redis.sh start "$tmp/redis" >/dev/null
	bash scripts/services/postgres.sh start "$tmp/postgres" >/dev/null
	args+=(--broker "amqp://guest:guest@127.0.0.1:$(cat "$tmp/rabbitmq/port")/%2f"
	       --backend "redis://127.0.0.1:$(cat "$tmp/redis/port")/0")
	export AIQUEUE_ARCHIVE_URL
	AIQUEUE_ARCHIVE_URL=$(cat "$tmp/postgres/url")
fi

build-demo/examples/aiqueue-server "${args[@]}" >"$tmp/server.out" 2>"$tmp/server.err" &
server_pid=$!
port=
for _ in $(seq 1 100); do
	port=$(grep -oE '[0-9]+$' "$tmp/server.out" 2>/dev/null | head -1 || true)
	[ -n "$port" ] && break
	sleep 0.1
done
if [ -z "$port" ]; then
	echo "aiqueue-server did not start:" >&2
	cat "$tmp/server.err" >&2
	exit 1
fi
echo "aiqueue-server on http://127.0.0.1:$port ($( [ $services -eq 1 ] && echo 'RabbitMQ + Redis + PostgreSQL' || echo 'memory://, in-process workers'))"
if ! /usr/bin/python3 examples/demo/post_lyrics.py "http://127.0.0.1:$port" examples/lyrics/*.txt; then
	if [ -s "$tmp/server.err" ]; then
		echo "aiqueue-server said:" >&2
		tail -n 20 "$tmp/server.err" | sed 's/^/   /' >&2
	fi
	exit 1
fi

if [ $services -eq 1 ]; then
	echo "analyses archived in PostgreSQL:"
	bash scripts/services/postgres.sh psql "$tmp/postgres" -Atc \
		"select format('%s: %s analyses, average rhyme density %s', analyzer, count(*),
		               round(avg((result->'rhyme'->>'rhyme_density')::numeric), 2))
		   from aiq_analyses group by analyzer" | sed 's/^/   /'
fi
