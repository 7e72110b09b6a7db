#!/usr/bin/env bash
# The deployment test: the manifests under deploy/ are validated, the
# container image is built and run for real, and the compose file brings the
# programs up the same way. Run once, not under a sanitizer:
#
#   scripts/deploy_test.sh            # ends with "deploy test: PASS" (exit 0) or FAIL (exit 1)
#
# What it does, all on loopback:
#   1. deploy/validate_manifests.py: every YAML parses, the kustomization of
#      each overlay renders (`kubectl kustomize` when kubectl is there), the
#      objects have the fields their kinds require, selectors match labels,
#      probes and ports match the server, the worker's command line is
#      accepted by `aiqueue-worker --help`, the HPA/KEDA/PDB targets exist,
#      the ArgoCD Application's path exists.
#   2. A Debian 12 base image made with `debootstrap --variant=minbase`
#      (nothing can be pulled here), cached as a tarball between runs.
#   3. A private dockerd (own data root, exec root, pid file and socket; no
#      bridge, no iptables) that is stopped by its pid at the end.
#   4. `docker build --network host` of deploy/Dockerfile.
#   5. Private RabbitMQ (a user of its own, no guest), Redis (password) and
#      PostgreSQL (password) from scripts/services/*.sh on free loopback
#      ports; the migration command of the Kubernetes Job, then a server and
#      a worker container (--network host): the sample lyrics are posted and
#      every analysis comes back; non-root, HEALTHCHECK, no build tools, a
#      clean exit 0 on SIGTERM within the grace period; the image size.
#   6. docker-compose (1.29) with deploy/docker-compose.yml and the
#      host-network override: the server and both workers come up from the
#      compose file and the same round trip passes.
#
# Cache: AIQ_DEPLOY_CACHE (default /var/cache/aiqueue-deploy-test when
# writable, else ${XDG_CACHE_HOME:-~/.cache}/aiqueue-deploy-test) keeps the
# base tarball and the private dockerd's data root (so image layers are
# reused). AIQ_DEPLOY_KEEP=1 keeps the temp dir for inspection.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$(pwd)
PY=/usr/bin/python3
DOCKER=${AIQ_DOCKER:-/usr/bin/docker}
IMAGE=aiqueue:deploy-test
BASE_IMAGE=aiq-base:bookworm
GRACE=30
started=$SECONDS

fail() {
	echo "deploy test: FAIL: $*" >&2
	exit 1
}
step() { echo "== [deploy $((SECONDS - started))s] $*"; }

[ "$(id -u)" = 0 ] || fail "needs root (a private dockerd, debootstrap)"
for tool in dockerd "$DOCKER" debootstrap docker-compose; do
	command -v "$tool" >/dev/null || fail "$tool missing (scripts/install-deps.sh installs docker.io, debootstrap, docker-compose)"
done

# ------------------------------------------------------------- cache dir ---
cache=${AIQ_DEPLOY_CACHE:-}
if [ -z "$cache" ]; then
	if mkdir -p /var/cache/aiqueue-deploy-test 2>/dev/null && [ -w /var/cache/aiqueue-deploy-test ]; then
		cache=/var/cache/aiqueue-deploy-test
	else
		cache=${XDG_CACHE_HOME:-$HOME/.cache}/aiqueue-deploy-test
	fi
fi
mkdir -p "$cache" || fail "cannot create cache dir $cache"

T=$(mktemp -d /tmp/aiq-deploy.XXXXXX)
chmod 755 "$T" # PostgreSQL runs as its own user inside it
dockerd_pid=""
services=()
cleanup() {
	local rc=$?
	set +e
	if [ -n "$dockerd_pid" ]; then
		if [ -S "$T/docker.sock" ]; then
			docker-compose -p aiqtest -f deploy/docker-compose.yml -f deploy/docker-compose.hostnet.yml \
				--env-file "$T/compose.env" down --timeout 5 >/dev/null 2>&1
			ids=$(d ps -aq)
			[ -z "$ids" ] || d rm -f $ids >/dev/null 2>&1
			d image prune -f >/dev/null 2>&1
		fi
		kill "$dockerd_pid" 2>/dev/null
		for _ in $(seq 1 150); do
			kill -0 "$dockerd_pid" 2>/dev/null || break
			sleep 0.1
		done
		! kill -0 "$dockerd_pid" 2>/dev/null || kill -9 "$dockerd_pid" 2>/dev/null
		# dockerd leaves its network namespace mount behind.
		umount "$T/exec/netns/default" 2>/dev/null
	fi
	for s in "${services[@]}"; do
		case $s in
		rabbitmq) scripts/services/rabbitmq.sh stop "$T/rmq" >/dev/null 2>&1 ;;
		redis)
			[ -z "${redis_port:-}" ] || REDISCLI_AUTH=${redis_pass:-} redis-cli -h 127.0.0.1 \
				-p "$redis_port" config set requirepass '' >/dev/null 2>&1
			scripts/services/redis.sh stop "$T/redis" >/dev/null 2>&1
			;;
		postgres) scripts/services/postgres.sh stop "$T/pg" >/dev/null 2>&1 ;;
		esac
	done
	if [ "${AIQ_DEPLOY_KEEP:-0}" = 1 ]; then
		echo "kept $T"
	else
		rm -rf "$T"
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 1' INT TERM

d() { "$DOCKER" -H "unix://$T/docker.sock" "$@"; }

free_port() {
	$PY -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# ------------------------------------------------------- 1. manifests ---
step "validate deploy/ manifests"
$PY deploy/validate_manifests.py || fail "manifest validation"
$PY deploy/validate_manifests.py --self-test || fail "the validation misses mistakes it should catch"

# ----------------------------------------------------- 2. base tarball ---
base_tar=$cache/bookworm-minbase.tar
if [ ! -s "$base_tar" ]; then
	# The mirror this machine's apt uses.
	mirror=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
		/etc/apt/sources.list.d/* 2>/dev/null | grep -oE 'https?://[^ ]+' | head -n 1)
	mirror=${mirror:-http://deb.debian.org/debian}
	step "debootstrap --variant=minbase bookworm from $mirror (cached afterwards in $cache)"
	debootstrap --variant=minbase bookworm "$T/rootfs" "$mirror" >"$T/debootstrap.log" 2>&1 || {
		tail -n 20 "$T/debootstrap.log"
		fail "debootstrap"
	}
	# Trim it as debian:bookworm-slim is trimmed: no package cache, no docs,
	# and dpkg told to leave them out of later installs too.
	rm -rf "$T"/rootfs/var/cache/apt/archives/*.deb "$T"/rootfs/var/lib/apt/lists/* \
		"$T"/rootfs/usr/share/doc/* "$T"/rootfs/usr/share/man/* "$T"/rootfs/usr/share/info/* \
		"$T"/rootfs/usr/share/locale/*
	cat >"$T/rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
	printf 'APT::Install-Recommends "false";\n' >"$T/rootfs/etc/apt/apt.conf.d/docker-no-recommends"
	tar -C "$T/rootfs" --numeric-owner -cf "$base_tar.part" . || fail "tar of the base"
	mv "$base_tar.part" "$base_tar"
	rm -rf "$T/rootfs"
fi

# ---------------------------------------------------- 3. private dockerd ---
# The data root lives in the cache so image layers survive between runs; a
# lock keeps two runs from sharing it (the second gets a fresh one).
data_root=$cache/docker
# fd 9 holds the lock; every child started below gets 9>&- so that none of
# them keeps it after this script ends.
exec 9>"$cache/docker.lock"
if ! flock -n 9; then
	echo "cache in use by another run: using a fresh data root"
	data_root=$T/data
fi
mkdir -p "$T/exec" "$data_root"
step "private dockerd (data root $data_root)"
setsid dockerd --data-root "$data_root" --exec-root "$T/exec" --pidfile "$T/dockerd.pid" \
	-H "unix://$T/docker.sock" --bridge=none --iptables=false --ip-masq=false \
	--ip6tables=false --userland-proxy=false >"$T/dockerd.log" 2>&1 </dev/null 9>&- &
dockerd_pid=$!
for _ in $(seq 1 300); do
	d version >/dev/null 2>&1 && break
	kill -0 "$dockerd_pid" 2>/dev/null || { tail -n 20 "$T/dockerd.log"; fail "dockerd exited"; }
	sleep 0.1
done
d version >/dev/null 2>&1 || { tail -n 20 "$T/dockerd.log"; fail "dockerd does not answer"; }
export DOCKER_HOST=unix://$T/docker.sock

# ---------------------------------------------------------- 4. the image ---
base_sum=$(stat -c '%s-%Y' "$base_tar")
if [ "$(d image inspect -f '{{index .Config.Labels "aiq.base"}}' "$BASE_IMAGE" 2>/dev/null)" != "$base_sum" ]; then
	step "docker import $BASE_IMAGE"
	d import --change "LABEL aiq.base=$base_sum" --change 'CMD ["/bin/bash"]' \
		"$base_tar" "$BASE_IMAGE" >/dev/null || fail "docker import"
fi
# The build context: the files git knows (tracked or new, not ignored), so
# build trees never go into it.
mkdir -p "$T/ctx"
git ls-files -z --cached --others --exclude-standard |
	while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
	tar --null -T - -cf - | tar -C "$T/ctx" -xf - || fail "build context"
step "docker build --network host -f deploy/Dockerfile (BASE=$BASE_IMAGE)"
build_start=$SECONDS
DOCKER_BUILDKIT=0 d build --network host --build-arg BASE="$BASE_IMAGE" -f deploy/Dockerfile \
	-t "$IMAGE" "$T/ctx" >"$T/build.log" 2>&1 || {
	tail -n 40 "$T/build.log"
	fail "docker build"
}
# Tag the build stage too (all cached, a second): the dangling-image prune
# at the end then keeps its layers, so the next run does not reinstall the
# compiler.
DOCKER_BUILDKIT=0 d build --network host --build-arg BASE="$BASE_IMAGE" -f deploy/Dockerfile \
	--target build -t "$IMAGE-build" "$T/ctx" >>"$T/build.log" 2>&1 || fail "docker build --target build"
echo "image built in $((SECONDS - build_start)) s"
size=$(d image inspect -f '{{.Size}}' "$IMAGE")
base_size=$(d image inspect -f '{{.Size}}' "$BASE_IMAGE")
echo "image size: $((size / 1000000)) MB ($size bytes; the base alone: $((base_size / 1000000)) MB)"

# No build tools in the final image; the programs are there.
if d run --rm --network host --entrypoint /bin/sh "$IMAGE" -c \
	'for t in cc gcc c++ make meson ninja pkg-config; do command -v $t; done' | grep .; then
	fail "build tools found in the final image"
fi
d run --rm --network host "$IMAGE" aiqueue-worker --help >"$T/worker-help.txt" 2>&1 ||
	fail "aiqueue-worker --help in the image"
d run --rm --network host "$IMAGE" aiqueue-server --help >"$T/server-help.txt" 2>&1 ||
	fail "aiqueue-server --help in the image"
d run --rm --network host "$IMAGE" aiqueue --help >"$T/cli-help.txt" 2>&1 || fail "aiqueue --help in the image"
# The command lines of the manifests and the compose file, against the
# --help of the programs in the image.
$PY deploy/validate_manifests.py --worker-help "$T/worker-help.txt" \
	--server-help "$T/server-help.txt" --cli-help "$T/cli-help.txt" >"$T/validate-help.log" || {
	grep PROBLEM "$T/validate-help.log"
	fail "a command line of the manifests is not accepted by the image's programs"
}

# --------------------------------------------------------- 5. services ---
step "private RabbitMQ, Redis, PostgreSQL"
rmq_pass=rmq-$RANDOM$RANDOM
redis_pass=redis-$RANDOM$RANDOM
pg_pass=pg-$RANDOM$RANDOM
api_token=token-$RANDOM$RANDOM
services+=(rabbitmq)
scripts/services/rabbitmq.sh start "$T/rmq" >"$T/rmq.log" 2>&1 9>&- || { cat "$T/rmq.log"; fail "rabbitmq"; }
rmq_port=$(cat "$T/rmq/port")
# The users/permissions setup of the manifests: an application user, no guest.
scripts/services/rabbitmq.sh ctl "$T/rmq" -q add_user aiqueue "$rmq_pass" >/dev/null || fail "rabbitmq add_user"
scripts/services/rabbitmq.sh ctl "$T/rmq" -q set_permissions -p / aiqueue '.*' '.*' '.*' >/dev/null ||
	fail "rabbitmq set_permissions"
scripts/services/rabbitmq.sh ctl "$T/rmq" -q delete_user guest >/dev/null || fail "rabbitmq delete_user guest"
services+=(redis)
redis_port=$(scripts/services/redis.sh start "$T/redis" 9>&-) || fail "redis"
# A password, as in the manifests (set after start: the script's readiness
# check pings without one).
redis-cli -h 127.0.0.1 -p "$redis_port" config set requirepass "$redis_pass" >/dev/null ||
	fail "redis requirepass"
services+=(postgres)
scripts/services/postgres.sh start "$T/pg" "$pg_pass" >"$T/pg.log" 2>&1 9>&- || { cat "$T/pg.log"; fail "postgres"; }
pg_url=$(cat "$T/pg/url")
http_port=$(free_port)

touch "$T/aiq.env" && chmod 600 "$T/aiq.env"
cat >"$T/aiq.env" <<EOF
AIQUEUE_BROKER_URL=amqp://aiqueue:$rmq_pass@127.0.0.1:$rmq_port/%2f
AIQUEUE_RESULT_URL=redis://:$redis_pass@127.0.0.1:$redis_port/1
AIQUEUE_ARCHIVE_URL=$pg_url
AIQUEUE_API_TOKEN=$api_token
AIQUEUE_AMQP_QUEUE_TYPE=quorum
AIQUEUE_LISTEN=127.0.0.1:$http_port
EOF

# round_trip PORT LABEL: post every sample lyric, wait for every analysis.
round_trip() {
	$PY - "$1" "$api_token" "$2" examples/lyrics/*.txt <<'EOF'
import json, sys, time, urllib.request
port, token, label, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
base = f"http://127.0.0.1:{port}"
def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=40) as r:
        return r.status, json.load(r)
deadline = time.time() + 60
while True:
    try:
        if call("GET", "/readyz")[0] == 200:
            break
    except Exception as e:
        err = e
    if time.time() > deadline:
        sys.exit(f"{label}: /readyz never answered 200 ({err})")
    time.sleep(0.3)
ids = {}
for f in files:
    st, body = call("POST", "/analyze", {"track_id": f.rsplit("/", 1)[-1], "text": open(f).read(),
                                          "analyzer": "lyrics"})
    assert st == 202, (st, body)
    ids[body["task_id"]] = f
for tid, f in ids.items():
    for _ in range(3):
        st, body = call("GET", f"/tasks/{tid}?wait=30")
        if body["ready"]:
            break
    if body["state"] != "SUCCESS" or not isinstance(body["result"], dict):
        sys.exit(f"{label}: {f}: {body}")
print(f"{label}: {len(ids)} lyrics posted, {len(ids)} analyses back (SUCCESS)")
EOF
}

# The Kubernetes migration Job's command: opening the PostgreSQL store runs
# the missing migrations.
step "migrations (the Job's command)"
d run --rm --network host --env-file "$T/aiq.env" "$IMAGE" \
	aiqueue --backend "$pg_url" status migrations-check >"$T/migrate.log" 2>&1 ||
	{ cat "$T/migrate.log"; fail "migration command"; }
mig=$(scripts/services/postgres.sh psql "$T/pg" -tAc 'select count(*) from aiq_schema_migrations') ||
	fail "no aiq_schema_migrations table after the migration command"
[ "${mig:-0}" -ge 1 ] || fail "no migration recorded"
echo "migrations applied: $mig"

step "server and worker containers (--network host)"
# As the pods' securityContext: read-only root filesystem, no capabilities,
# no privilege escalation.
hardening=(--read-only --cap-drop ALL --security-opt no-new-privileges)
d run -d --name aiq-server --network host --env-file "$T/aiq.env" --health-interval 2s \
	--health-start-period 2s "${hardening[@]}" "$IMAGE" >/dev/null || fail "docker run server"
d run -d --name aiq-worker --network host --env-file "$T/aiq.env" --health-interval 2s \
	--health-start-period 2s "${hardening[@]}" "$IMAGE" \
	aiqueue-worker --queues celery --concurrency 4 >/dev/null || fail "docker run worker"
round_trip "$http_port" "docker run" || {
	d logs aiq-server 2>&1 | tail -n 20
	d logs aiq-worker 2>&1 | tail -n 20
	fail "round trip through the containers"
}
# Measured figures behind the manifests' requests and limits: peak resident
# memory and CPU time of each program after the round trip.
for c in aiq-server aiq-worker; do
	pid=$(d inspect -f '{{.State.Pid}}' "$c")
	for p in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
		hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status")
		ticks=$(awk '{print $14 + $15}' "/proc/$p/stat")
		echo "$c: $(cat /proc/"$p"/comm) peak RSS $((hwm / 1024)) MiB, CPU $((ticks * 1000 / $(getconf CLK_TCK))) ms for the round trip"
	done
done
rows=$(scripts/services/postgres.sh psql "$T/pg" -tAc 'select count(*) from aiq_tasks' 2>/dev/null || echo 0)
echo "archived in PostgreSQL: $rows task rows"
qtype=$(scripts/services/rabbitmq.sh ctl "$T/rmq" -q list_queues name type 2>/dev/null | awk '$1 == "celery" {print $2}')
[ "$qtype" = quorum ] || fail "queue celery is '$qtype', expected quorum"

# Non-root: the user of the image, and the real uid of the programs.
for c in aiq-server aiq-worker; do
	user=$(d inspect -f '{{.Config.User}}' "$c")
	uid=$(d exec "$c" id -u)
	[ "$uid" != 0 ] && [ -n "$user" ] || fail "$c runs as root"
	pid=$(d inspect -f '{{.State.Pid}}' "$c")
	for p in $pid $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
		awk '/^Uid:/ { if ($2 == 0) exit 1 }' "/proc/$p/status" || fail "$c: pid $p has uid 0"
	done
	comm=$(cat /proc/"$pid"/comm)
	[ "$comm" = tini ] || fail "$c: PID 1 is $comm, expected tini"
	echo "$c: user $user (uid $uid), PID 1 tini"
done
for c in aiq-server aiq-worker; do
	for _ in $(seq 1 100); do
		h=$(d inspect -f '{{.State.Health.Status}}' "$c")
		[ "$h" = healthy ] && break
		sleep 0.2
	done
	[ "$h" = healthy ] || fail "$c is $h, expected healthy"
done
echo "HEALTHCHECK: both containers healthy"

# SIGTERM: the worker drains and exits 0 within the grace period, and so
# does the server. Tasks are in flight when the signal arrives.
step "SIGTERM within the ${GRACE} s grace period, 2000 tasks queued"
# The worker is frozen while the tasks are queued, then thawed: it is in the
# middle of them (running some, holding prefetched ones) when the stop comes.
d pause aiq-worker >/dev/null || fail "docker pause"
$PY - "$http_port" "$api_token" >"$T/stop-ids.txt" <<'EOF' || fail "enqueue before stop"
import json, sys, urllib.request
port, token = sys.argv[1], sys.argv[2]
# Enough work that the worker is in the middle of it when SIGTERM comes.
for batch in range(2):
    items = [{"track_id": f"stop-{batch}-{i}", "text": f"la la la {i}\nno no no\n" * 20}
             for i in range(1000)]
    req = urllib.request.Request(f"http://127.0.0.1:{port}/analyze/batch", method="POST",
        data=json.dumps({"items": items}).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 202
        print("\n".join(json.load(r)["task_ids"]))
EOF
stop_container() { # NAME
	local c=$1 t0 t1 code took
	t0=$(date +%s.%N)
	d stop -t "$GRACE" "$c" >/dev/null || fail "docker stop $c"
	t1=$(date +%s.%N)
	code=$(d inspect -f '{{.State.ExitCode}}' "$c")
	took=$($PY -c "print(f'{$t1 - $t0:.1f}')")
	echo "$c: exit $code after SIGTERM in $took s"
	d logs "$c" >"$T/$c.log" 2>&1
	[ "$code" = 0 ] || { tail -n 20 "$T/$c.log"; fail "$c exited $code on SIGTERM"; }
	$PY -c "import sys; sys.exit(0 if $t1 - $t0 < $GRACE - 1 else 1)" || fail "$c needed the SIGKILL"
}
d unpause aiq-worker >/dev/null || fail "docker unpause"
sleep 0.3
# The worker is stopped as Kubernetes stops it: the Deployment's preStop
# hook (taken from deploy/k8s/base/worker.yaml) starts the drain, and the
# SIGTERM follows.
prestop=$($PY -c 'import sys, yaml
for d in yaml.safe_load_all(open("deploy/k8s/base/worker.yaml")):
    c = d["spec"]["template"]["spec"]["containers"][0]
    print(c["lifecycle"]["preStop"]["exec"]["command"][-1])')
[ -n "$prestop" ] || fail "no preStop command in worker.yaml"
t0=$(date +%s.%N)
d exec aiq-worker sh -c "$prestop" >/dev/null 2>&1
running=$(d inspect -f '{{.State.Running}}' aiq-worker)
[ "$running" = false ] || fail "the worker still runs after its preStop hook returned"
t1=$(date +%s.%N)
echo "aiq-worker: preStop hook returned after the worker exited, $($PY -c "print(f'{$t1 - $t0:.1f}')") s"
stop_container aiq-worker
grep -q 'task.succeeded' "$T/aiq-worker.log" || fail "worker log shows no task.succeeded"
# Nothing lost, nothing run twice: a second worker takes over the queue;
# every task ends SUCCESS, and it receives exactly those the first one had
# not finished (a task the first one finished but did not acknowledge would
# come back and run again).
count_success() { # [WAIT]
	$PY - "$http_port" "$api_token" "$T/stop-ids.txt" "${1:-0}" <<'EOF'
import json, sys, urllib.request
port, token, ids, wait = sys.argv[1], sys.argv[2], open(sys.argv[3]).read().split(), sys.argv[4]
n = 0
for tid in ids:
    for _ in range(4 if wait != "0" else 1):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/tasks/{tid}?wait={wait}",
                                     headers={"Authorization": "Bearer " + token})
        with urllib.request.urlopen(req, timeout=60) as r:
            state = json.load(r)["state"]
        if state == "SUCCESS":
            n += 1
            break
print(n)
EOF
}
sent=$(wc -l <"$T/stop-ids.txt")
done_n=$(count_success) || fail "reading the states after the stop"
echo "after the worker's stop: $done_n of $sent succeeded; a second worker takes the rest"
[ "$done_n" -lt "$sent" ] || echo "(the worker had finished them all before the stop)"
d run -d --name aiq-worker2 --network host --env-file "$T/aiq.env" "${hardening[@]}" "$IMAGE" \
	aiqueue-worker --queues celery --concurrency 4 >/dev/null || fail "docker run second worker"
all_n=$(count_success 30) || fail "reading the states after the second worker"
stop_container aiq-worker2
again=$(grep -c 'task.received' "$T/aiq-worker2.log")
echo "second worker: received $again, all $all_n of $sent succeeded"
[ "$all_n" -eq "$sent" ] || fail "tasks lost over the worker's stop ($all_n of $sent succeeded)"
[ "$again" -eq $((sent - done_n)) ] ||
	fail "tasks run twice: the second worker received $again, expected $((sent - done_n))"
stop_container aiq-server
d rm aiq-server aiq-worker aiq-worker2 >/dev/null

# ---------------------------------------------------------- 6. compose ---
step "docker-compose $(docker-compose version --short) with the host-network override"
compose_port=$(free_port)
metrics_port_1=$(free_port)
metrics_port_2=$(free_port)
while [ "$metrics_port_2" = "$metrics_port_1" ]; do metrics_port_2=$(free_port); done
{
	echo "AIQUEUE_IMAGE=$IMAGE"
	echo "AIQUEUE_API_TOKEN=$api_token"
	echo "RABBITMQ_USER=aiqueue"
	echo "RABBITMQ_PASSWORD=$rmq_pass"
	echo "REDIS_PASSWORD=$redis_pass"
	echo "POSTGRES_PASSWORD=$pg_pass"
	echo "GRAFANA_ADMIN_PASSWORD=unused-$RANDOM"
	echo "AIQ_HOST_BROKER_URL=amqp://aiqueue:$rmq_pass@127.0.0.1:$rmq_port/%2f"
	echo "AIQ_HOST_RESULT_URL=redis://:$redis_pass@127.0.0.1:$redis_port/1"
	echo "AIQ_HOST_ARCHIVE_URL=$pg_url"
	echo "AIQ_HOST_LISTEN=127.0.0.1:$compose_port"
	# On the host's network the two workers' metrics need ports of their own.
	echo "AIQ_HOST_METRICS_PORT_1=$metrics_port_1"
	echo "AIQ_HOST_METRICS_PORT_2=$metrics_port_2"
} >"$T/compose.env"
compose() {
	docker-compose -p aiqtest -f deploy/docker-compose.yml -f deploy/docker-compose.hostnet.yml \
		--env-file "$T/compose.env" "$@"
}
compose config -q || fail "docker-compose config"
# Only the services built here: the server and the two workers (RabbitMQ,
# Redis, PostgreSQL, Prometheus and Grafana need images that cannot be
# pulled; the private servers stand in for the first three).
compose up --no-deps --no-build migrate >"$T/compose-migrate.log" 2>&1 ||
	{ cat "$T/compose-migrate.log"; fail "docker-compose up migrate"; }
code=$(d inspect -f '{{.State.ExitCode}}' "$(compose ps -q migrate)")
[ "$code" = 0 ] || { cat "$T/compose-migrate.log"; fail "compose migrate exited $code"; }
echo "docker-compose: migrate exited 0"
compose up -d --no-deps --no-build aiqueue-server aiqueue-worker-1 aiqueue-worker-2 \
	>"$T/compose-up.log" 2>&1 || { cat "$T/compose-up.log"; fail "docker-compose up"; }
round_trip "$compose_port" "docker-compose" || {
	compose logs --tail 20
	fail "round trip through docker-compose"
}
n=$(compose ps -q aiqueue-worker-1 aiqueue-worker-2 | wc -l)
[ "$n" = 2 ] || fail "expected 2 worker containers, found $n"
compose stop -t "$GRACE" >/dev/null 2>&1 || fail "docker-compose stop"
for s in aiqueue-server aiqueue-worker-1 aiqueue-worker-2; do
	code=$(d inspect -f '{{.State.ExitCode}}' "$(compose ps -q "$s")")
	[ "$code" = 0 ] || { compose logs "$s" | tail -n 20; fail "compose $s exited $code on stop"; }
done
echo "docker-compose: server and 2 workers stopped with exit 0"
compose down --timeout 5 >/dev/null 2>&1

echo "deploy test: image $((size / 1000000)) MB, total $((SECONDS - started)) s"
echo "deploy test: PASS"
