#!/usr/bin/env bash
# valgrind memcheck over every unit suite program and over the Redis
# integration suite (each Redis program through its run.sh, which starts a
# private redis-server on a free loopback port, exactly as meson runs it).
# Zero errors and zero definite leaks are required; tests/valgrind.supp holds
# suppressions for third-party libraries only.
#
# Usage: scripts/valgrind.sh [BUILD_DIR] [-j N]
#   BUILD_DIR  a meson build of this tree (default build-valgrind; set up
#              with --buildtype=debugoptimized when missing, rebuilt always)
#   -j N       programs run at once (default 2; the Redis ones run alone)
# Logs: BUILD_DIR/meson-logs/valgrind/<test>.<pid>.log (one per process).
# The last line is "valgrind: N programs, M with errors"; the exit status is
# non-zero when M > 0, when a program fails its own tests, or on setup errors.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
root=$(pwd)
dir=build-valgrind
jobs=2
while [ $# -gt 0 ]; do
	case $1 in
	-j) jobs=$2; shift 2 ;;
	-j*) jobs=${1#-j}; shift ;;
	*) dir=$1; shift ;;
	esac
done
fail() {
	echo "$1"
	echo "valgrind: 0 programs, 1 with errors"
	exit 1
}
command -v valgrind >/dev/null 2>&1 || fail "valgrind: valgrind is not installed (apt-get install valgrind)"
if [ ! -f "$dir/build.ninja" ]; then
	meson setup "$dir" --werror --buildtype=debugoptimized >"$dir.setup.log" 2>&1 ||
		{ cat "$dir.setup.log"; fail "valgrind: meson setup failed"; }
fi
ninja -C "$dir" >"$dir/valgrind-build.log" 2>&1 ||
	{ cat "$dir/valgrind-build.log"; fail "valgrind: build failed"; }
logdir=$dir/meson-logs/valgrind
rm -rf "$logdir"
mkdir -p "$logdir"
meson introspect "$dir" --tests >"$logdir/tests.json" || fail "valgrind: meson introspect failed"

exec /usr/bin/python3 - "$root" "$dir" "$logdir" "$jobs" <<'EOF'
import concurrent.futures, json, os, re, subprocess, sys, time

root, build, logdir, jobs = sys.argv[1], os.path.abspath(sys.argv[2]), sys.argv[3], int(sys.argv[4])
logdir = os.path.abspath(logdir)
SUITES = {"unit", "redis"}
VG = ["valgrind", "--error-exitcode=99", "--leak-check=full",
      "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite",
      "--num-callers=30", "--suppressions=" + os.path.join(root, "tests", "valgrind.supp")]

def is_elf(path):
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False

plan = []
with open(os.path.join(logdir, "tests.json")) as f:
    tests = json.load(f)
for t in tests:
    suites = {s.split(":")[-1] for s in t["suite"]}
    if not suites & SUITES:
        continue
    cmd = list(t["cmd"]) + list(t.get("args") or [])
    # meson gives built programs in arguments relative to the build dir.
    cmd = [os.path.join(build, a) if not os.path.isabs(a) and is_elf(os.path.join(build, a))
           else a for a in cmd]
    # valgrind goes in front of the first program built here: the test
    # itself for a unit suite, the program after run.sh and its service
    # script for the Redis suite (so the server runs natively).
    at = next((i for i, a in enumerate(cmd) if a.startswith(build + "/") and is_elf(a)), None)
    if at is None:
        print(f"valgrind: {t['name']}: no program of the build in {cmd}")
        sys.exit(1)
    name = ("redis-" if "redis" in suites else "") + t["name"]
    log = os.path.join(logdir, name + ".%p.log")
    cmd[at:at] = VG + ["--log-file=" + log]
    env = dict(os.environ)
    env.update(t.get("env") or {})
    # Check forks a child per test by default; valgrind must see the tests.
    env["CK_FORK"] = "no"
    # valgrind runs one thread at a time: tests skip the checks that need
    # threads to overlap (they say so), never a correctness check.
    env["AIQ_TEST_SERIAL_THREADS"] = "1"
    # The "figures" case only prints throughput (tens of thousands of round
    # trips); the batch operations it times are checked by the other cases.
    if name == "redis-batch":
        env.setdefault("CK_RUN_CASE", "batch")
    plan.append({"name": name, "cmd": cmd, "env": env, "cwd": t.get("workdir") or build,
                 "timeout": 3 * (t.get("timeout") or 300),
                 "serial": "redis" in suites or not t.get("is_parallel", True)})

def run(p):
    start = time.monotonic()
    out = os.path.join(logdir, p["name"] + ".out")
    with open(out, "wb") as o:
        try:
            rc = subprocess.run(p["cmd"], env=p["env"], cwd=p["cwd"], stdout=o,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                timeout=p["timeout"]).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    errors = 0
    leaks = 0
    for f in os.listdir(logdir):
        if f.startswith(p["name"] + ".") and f.endswith(".log"):
            text = open(os.path.join(logdir, f), errors="replace").read()
            for m in re.finditer(r"ERROR SUMMARY: (\d+) errors", text):
                errors += int(m.group(1))
            for m in re.finditer(r"definitely lost: ([\d,]+) bytes", text):
                leaks += int(m.group(1).replace(",", ""))
    return p, rc, errors, leaks, time.monotonic() - start

results = []
with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
    results += pool.map(run, [p for p in plan if not p["serial"]])
for p in plan:
    if p["serial"]:
        results.append(run(p))

bad = 0
total = time.monotonic()
for p, rc, errors, leaks, secs in results:
    ok = rc == 0 and errors == 0 and leaks == 0
    bad += not ok
    what = "ok" if ok else f"FAILED (exit {rc}, {errors} errors, {leaks} bytes definitely lost)"
    print(f"{p['name']:<28} {secs:6.1f}s  {what}")
    if not ok:
        print(f"  logs: {logdir}/{p['name']}.*.log and {p['name']}.out")
# The failures again at the end, with the lines that say why, so that a log
# cut to its tail still names them.
for p, rc, errors, leaks, secs in results:
    if rc == 0 and errors == 0 and leaks == 0:
        continue
    print(f"== {p['name']}: exit {rc}, {errors} errors, {leaks} bytes definitely lost")
    out = os.path.join(logdir, p["name"] + ".out")
    lines = open(out, errors="replace").read().splitlines() if os.path.exists(out) else []
    for line in [l for l in lines if ":F:" in l or ":E:" in l or "%:" in l][-8:] or lines[-8:]:
        print("   " + line[:300])
    for f in sorted(os.listdir(logdir)):
        if f.startswith(p["name"] + ".") and f.endswith(".log"):
            text = open(os.path.join(logdir, f), errors="replace").read().splitlines()
            first = [i for i, l in enumerate(text) if re.search(r"==\d+== (Invalid|Conditional|Use of|Syscall|Mismatched|Source and)|definitely lost in", l)]
            for i in first[:1]:
                for l in text[i:i + 12]:
                    print("   " + l[:300])
print(f"valgrind: {len(results)} programs, {bad} with errors")
sys.exit(1 if bad else 0)
EOF
