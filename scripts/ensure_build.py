#!/usr/bin/python3
"""Make sure a build directory has the features a command needs.

    ensure_build.py [--dry-run] BUILD_DIR FEATURE... [-- SETUP_ARG...]

FEATURE names a meson feature option (amqp, redis, postgres, server, llm).
A build directory configured earlier keeps the options it was configured
with: one set up before librabbitmq-c was installed has amqp 'auto' and no
AMQP driver, and stays so when the package arrives later. So each FEATURE
must be 'enabled' in the build (then meson itself fails, naming the missing
package, instead of building a library that answers "not built in"):

- no build.ninja (or a directory meson cannot read): meson setup with
  -DFEATURE=enabled for each FEATURE and the SETUP_ARGs;
- a FEATURE that is 'auto' or 'disabled': meson setup --reconfigure with
  -DFEATURE=enabled for those;
- otherwise nothing.

Run it from the source root (meson setup takes the current directory as the
source). The first line printed says what was decided and why. --dry-run prints it
without running meson. Exit status: 0, or meson's when it fails.
"""
import json
import os
import shlex
import subprocess
import sys

MESON = os.environ.get("MESON", "meson")


def build_options(build_dir):
    """The build's feature options as {name: value}, or None when the
    directory is not a configured meson build."""
    if not os.path.isfile(os.path.join(build_dir, "build.ninja")):
        return None
    r = subprocess.run([MESON, "introspect", "--buildoptions", build_dir],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None
    try:
        options = json.loads(r.stdout)
    except ValueError:
        return None
    return {o["name"]: o["value"] for o in options if o.get("section") == "user"}


def decide(build_dir, features, setup_args):
    """Return (reason, meson command or None)."""
    enable = ["-D%s=enabled" % f for f in features]
    options = build_options(build_dir)
    if options is None:
        # A half-made build directory (an interrupted setup) is set up afresh.
        wipe = ["--wipe"] if os.path.isdir(os.path.join(build_dir, "meson-info")) else []
        return ("%s: configuring a new build with %s enabled" %
                (build_dir, ", ".join(features) or "no feature"),
                [MESON, "setup"] + wipe + [build_dir] + setup_args + enable)
    lacking = [f for f in features if options.get(f) != "enabled"]
    unknown = [f for f in lacking if f not in options]
    if unknown:
        raise SystemExit("%s: no such feature option: %s" % (build_dir, ", ".join(unknown)))
    if not lacking:
        return ("%s: up to date (%s enabled)" % (build_dir, ", ".join(features) or
                                                   "no feature needed"), None)
    was = ", ".join("%s=%s" % (f, options[f]) for f in lacking)
    return ("%s was configured with %s: reconfiguring with %s enabled" %
            (build_dir, was, ", ".join(lacking)),
            [MESON, "setup", "--reconfigure", build_dir] +
            ["-D%s=enabled" % f for f in lacking])


def main(argv):
    dry = False
    if argv and argv[0] == "--dry-run":
        dry, argv = True, argv[1:]
    if "--" in argv:
        i = argv.index("--")
        argv, setup_args = argv[:i], argv[i + 1:]
    else:
        setup_args = []
    if not argv:
        sys.exit(__doc__)
    build_dir, features = argv[0], argv[1:]
    reason, cmd = decide(build_dir, features, setup_args)
    print(reason, flush=True)
    if cmd is None or dry:
        return 0
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout)
        print("%s: meson failed (status %d); the message above names what is missing"
              % (build_dir, r.returncode), file=sys.stderr)
    return r.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
