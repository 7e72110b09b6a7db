#!/usr/bin/env bash
# The dashboard end to end in a real browser: aiqueue-server (memory://, an
# embedded worker, an API token) on a free loopback port, driven by
# tests/browser/dashboard_test.js through Playwright in Debian's headless
# Chromium. Run once, not under ASan.
#
#   bash scripts/browser_test.sh [BUILD_DIR]        (default: build)
#
# Needs /usr/bin/chromium (or $AIQ_CHROMIUM), node and npm. The only thing it
# installs is playwright-core, pinned by tests/browser/package-lock.json,
# with `npm ci` into ${AIQ_BROWSER_CACHE:-/var/cache/aiqueue-browser-test}
# (outside the tree; reused while the lock file is unchanged).
# Screenshots go to BUILD_DIR/browser-test/; AIQ_BROWSER_UPDATE_DOCS=1 also
# copies two of them to docs/images/. Prints one summary line; exits 0 when
# every check passed, 1 otherwise (a missing tool is a failure, not a skip).
set -u
cd "$(dirname "$0")/.." || exit 2
SRC=$PWD
BUILD=${1:-build}
case $BUILD in /*) ;; *) BUILD=$SRC/$BUILD ;; esac
CACHE=${AIQ_BROWSER_CACHE:-/var/cache/aiqueue-browser-test}
CHROMIUM=${AIQ_CHROMIUM:-/usr/bin/chromium}
SERVER=$BUILD/examples/aiqueue-server
ART=$BUILD/browser-test
START=$(date +%s.%N)

elapsed() { awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }'; }
fail() {
	echo "browser test: FAIL ($1; $(elapsed) s)"
	exit 1
}

for tool in node npm; do
	command -v "$tool" >/dev/null || fail "$tool not found (apt-get install nodejs npm)"
done
[ -x "$CHROMIUM" ] || fail "$CHROMIUM not found (apt-get install chromium)"
[ -x "$SERVER" ] || fail "$SERVER not built (ninja -C $BUILD)"

# playwright-core, as pinned; npm ci again only when the lock file changed.
if ! cmp -s "$SRC/tests/browser/package-lock.json" "$CACHE/package-lock.json" ||
	[ ! -f "$CACHE/node_modules/playwright-core/package.json" ]; then
	mkdir -p "$CACHE" || fail "cannot create $CACHE (set AIQ_BROWSER_CACHE)"
	cp "$SRC/tests/browser/package.json" "$SRC/tests/browser/package-lock.json" "$CACHE/" ||
		fail "cannot write to $CACHE"
	(cd "$CACHE" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) \
		>"$BUILD/browser-npm.log" 2>&1 || { cat "$BUILD/browser-npm.log"; fail "npm ci failed"; }
fi

rm -rf "$ART"
mkdir -p "$ART"
TOKEN=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
AIQUEUE_API_TOKEN=$TOKEN "$SERVER" --listen 127.0.0.1:0 --concurrency 2 --log-level debug \
	>"$ART/server.out" 2>"$ART/server.log" &
PID=$!
stop_server() {
	if kill -0 "$PID" 2>/dev/null; then
		kill -TERM "$PID"
		wait "$PID"
		return $?
	fi
	wait "$PID"
}
trap 'kill -KILL "$PID" 2>/dev/null' EXIT
PORT=
for _ in $(seq 100); do
	PORT=$(sed -n 's|^listening on http://127\.0\.0\.1:\([0-9]*\)$|\1|p' "$ART/server.out")
	[ -n "$PORT" ] && break
	kill -0 "$PID" 2>/dev/null || break
	sleep 0.1
done
[ -n "$PORT" ] || { cat "$ART/server.log"; fail "aiqueue-server did not start"; }

BASE_URL=http://127.0.0.1:$PORT API_TOKEN=$TOKEN CHROMIUM=$CHROMIUM ARTIFACTS=$ART \
	NODE_PATH=$CACHE/node_modules timeout 110 node "$SRC/tests/browser/dashboard_test.js" \
	>"$ART/browser.log" 2>&1
rc=$?
stop_server
src=$?
trap - EXIT
cat "$ART/browser.log"
[ $rc -eq 0 ] || { [ $rc -eq 124 ] && fail "timed out"; fail "browser checks failed, see $ART/"; }
[ $src -eq 0 ] || { tail -20 "$ART/server.log"; fail "aiqueue-server exited $src"; }
# The token went out as a header and as ?access_token=: never into the log.
! grep -qF -- "$TOKEN" "$ART/server.log" "$ART/server.out" || fail "the token appears in the server's log"

if [ "${AIQ_BROWSER_UPDATE_DOCS:-0}" = 1 ]; then
	mkdir -p "$SRC/docs/images"
	cp "$ART/dashboard-dead-letter.png" "$ART/dashboard-progress.png" "$SRC/docs/images/"
fi
checks=$(sed -n 's/^browser checks: \([0-9]*\) passed$/\1/p' "$ART/browser.log")
echo "browser test: PASS ($checks checks in $(elapsed) s; screenshots in $ART/)"
