#!/usr/bin/python3
"""The demo's build decision and its error reporting.

usage: check_demo.py MESON SOURCE_ROOT

1. scripts/ensure_build.py on a build directory configured with
   -Damqp=disabled, asked for what `scripts/demo.sh --services` needs
   (amqp redis postgres), decides to reconfigure, does it, and the build
   then has those features enabled; asked again, it does nothing.
2. examples/demo/post_lyrics.py against a server answering 503 with a
   detail prints the status and the detail, exits non-zero, and prints no
   Python traceback.
"""
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading

DETAIL = "broker URL scheme 'amqp' is unknown or not built into this library"
SERVICES = ["amqp", "redis", "postgres"]


def run(cmd, cwd=None, env=None, check=True, quiet=False):
    print("+ " + " ".join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if not quiet:
        sys.stdout.write(r.stdout)
    sys.stdout.write(r.stderr)
    if check and r.returncode != 0:
        sys.exit("command failed with status %d" % r.returncode)
    return r


def options(meson, build):
    out = run([meson, "introspect", "--buildoptions", build], quiet=True).stdout
    return {o["name"]: o["value"] for o in json.loads(out) if o["section"] == "user"}


def check_build_decision(meson, root, tmp):
    ensure = [sys.executable, os.path.join(root, "scripts", "ensure_build.py")]
    env = dict(os.environ, MESON=meson)
    build = os.path.join(tmp, "build-demo")

    # No build yet: set up with the features enabled.
    r = run(ensure + ["--dry-run", build] + SERVICES, cwd=root, env=env)
    if "configuring a new build" not in r.stdout:
        sys.exit("a missing build directory was not set up")

    # What the first `scripts/demo.sh` leaves when librabbitmq-c is absent.
    run([meson, "setup", build, "-Damqp=disabled", "-Dtests=false", "-Dexamples=false"],
        cwd=root)
    r = run(ensure + ["--dry-run", build] + SERVICES, cwd=root, env=env)
    first = r.stdout.splitlines()[0] if r.stdout else ""
    if "reconfiguring" not in first or "amqp=disabled" not in first:
        sys.exit("a build without amqp was not reconfigured: %r" % first)
    if options(meson, build)["amqp"] != "disabled":
        sys.exit("--dry-run changed the build")

    r = run(ensure + [build] + SERVICES, cwd=root, env=env)
    got = options(meson, build)
    if any(got[f] != "enabled" for f in SERVICES):
        sys.exit("after the reconfigure the build has %s"
                 % {f: got[f] for f in SERVICES})
    r = run(ensure + [build] + SERVICES, cwd=root, env=env)
    if "up to date" not in r.stdout:
        sys.exit("a build with every feature enabled was reconfigured again")
    print("build decision ok")


class Refusing(http.server.BaseHTTPRequestHandler):
    """Answers every request 503 with a JSON detail, as aiqueue-server does
    when the broker's URL scheme is not built in."""

    def _refuse(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"detail": DETAIL}).encode()
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET = _refuse

    def log_message(self, *args):
        pass


def check_error_report(root):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        url = "http://127.0.0.1:%d" % server.server_address[1]
        lyrics = os.path.join(root, "examples", "lyrics")
        files = sorted(os.path.join(lyrics, f) for f in os.listdir(lyrics))[:2]
        r = run([sys.executable, os.path.join(root, "examples", "demo", "post_lyrics.py"),
                 url] + files, check=False)
    finally:
        server.shutdown()
        server.server_close()
    out = r.stdout + r.stderr
    if r.returncode == 0:
        sys.exit("post_lyrics.py exited 0 on a 503")
    if "Traceback" in out:
        sys.exit("post_lyrics.py printed a traceback")
    if "503" not in out or DETAIL not in out:
        sys.exit("post_lyrics.py did not print the status and the server's detail")
    print("error report ok")


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__)
    meson, root = argv
    tmp = tempfile.mkdtemp(prefix="aiq-demo-")
    try:
        check_error_report(root)
        check_build_decision(meson, root, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
