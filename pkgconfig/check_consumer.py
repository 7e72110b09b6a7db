#!/usr/bin/python3
"""Build and run downstream programs against an installed libaiqueue.

Installs the build tree into a temporary directory (`meson install
--destdir`), then checks, against that copy only:

1. libaiqueue.pc is in PREFIX/LIBDIR/pkgconfig (meson's libdir: multiarch
   on Debian, e.g. lib/x86_64-linux-gnu);
2. `pkg-config --cflags --libs libaiqueue` works with PKG_CONFIG_LIBDIR
   naming only that directory, as on a machine without the -dev packages
   of jansson, libuuid, hiredis, libpq, librabbitmq-c or libcurl, and
   prints nothing but the installation's own -I/-L/-l flags (no include
   path of a library the public headers never include);
3. consumer.c, compiled with nothing but those flags, enqueues and
   consumes its tasks through memory:// with the installed library;
4. each installed PROGRAM (--program, repeatable) runs `--help` from the
   installation's bindir without LD_LIBRARY_PATH and loads the installed
   libaiqueue (the programs carry a RUNPATH relative to themselves).

PKG_CONFIG_SYSROOT_DIR maps the installed prefix into the temporary
directory, so the real prefix is never touched.

usage: check_consumer.py MESON BUILD_DIR CONSUMER.c --prefix P --libdir L
                         --bindir B [--program NAME]... [LIBASAN] -- CC...
"""
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

# Words that would show in a flag leading to a backend's or a private
# dependency's headers or .pc file.
FOREIGN = ("hiredis", "postgresql", "libpq", "uuid", "jansson", "rabbitmq", "curl")


def run(cmd, quiet=False, check=True, **kw):
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if not quiet or r.returncode != 0:
        sys.stdout.write(r.stdout)
    sys.stdout.write(r.stderr)
    if check and r.returncode != 0:
        sys.exit("command failed with status %d" % r.returncode)
    return r.stdout


def find(root, name):
    for dirpath, _, files in os.walk(root):
        if name in files:
            return os.path.join(dirpath, name)
    sys.exit("%s not found under %s after meson install" % (name, root))


def parse(argv):
    if "--" not in argv:
        sys.exit(__doc__)
    sep = argv.index("--")
    head, cc = argv[:sep], argv[sep + 1:]
    if len(head) < 3 or not cc:
        sys.exit(__doc__)
    opts = {"meson": head[0], "build": head[1], "source": head[2], "programs": [],
            "libasan": ""}
    rest = head[3:]
    while rest:
        key = rest.pop(0)
        if key in ("--prefix", "--libdir", "--bindir", "--program") and rest:
            value = rest.pop(0)
            if key == "--program":
                opts["programs"].append(value)
            else:
                opts[key[2:]] = value
        elif not key.startswith("--"):
            opts["libasan"] = key
        else:
            sys.exit(__doc__)
    for k in ("prefix", "libdir", "bindir"):
        if k not in opts:
            sys.exit(__doc__)
    opts["cc"] = cc
    return opts


def installed(dest, prefix, sub):
    path = sub if os.path.isabs(sub) else os.path.join(prefix, sub)
    return dest + path


def check_pc_location(dest, o):
    pc = find(dest, "libaiqueue.pc")
    want = os.path.join(installed(dest, o["prefix"], o["libdir"]), "pkgconfig")
    if os.path.dirname(pc) != want:
        sys.exit("libaiqueue.pc is in %s, not in <libdir>/pkgconfig %s"
                 % (os.path.dirname(pc), want))
    print("libaiqueue.pc: %s" % pc[len(dest):])
    return os.path.dirname(pc)


def pkg_config_flags(dest, pcdir):
    # Only the installation's .pc directory: neither the default search path
    # nor PKG_CONFIG_PATH, so a Requires of any other package fails here.
    env = dict(os.environ)
    env.pop("PKG_CONFIG_PATH", None)
    env["PKG_CONFIG_LIBDIR"] = pcdir
    env["PKG_CONFIG_SYSROOT_DIR"] = dest
    cflags = shlex.split(run(["pkg-config", "--cflags", "libaiqueue"], env=env))
    libs = shlex.split(run(["pkg-config", "--libs", "libaiqueue"], env=env))
    # A static link's flags resolve too (Libs.private, no Requires.private).
    run(["pkg-config", "--static", "--libs", "libaiqueue"], env=env)
    print("pkg-config --cflags: %s" % " ".join(cflags))
    print("pkg-config --libs:   %s" % " ".join(libs))
    for f in cflags:
        if not f.startswith("-I" + dest):
            sys.exit("pkg-config --cflags prints %r, which is not the installation's "
                     "include directory" % f)
        if any(w in f[len("-I" + dest):] for w in FOREIGN):
            sys.exit("pkg-config --cflags prints a dependency's path: %r" % f)
    if not cflags:
        sys.exit("pkg-config --cflags printed no -I flag")
    libdirs = [f[2:] for f in libs if f.startswith("-L")]
    if not libdirs or not all(d.startswith(dest) for d in libdirs):
        sys.exit("pkg-config -L flags do not point into %s" % dest)
    if [f for f in libs if f.startswith("-l")] != ["-laiqueue"]:
        sys.exit("pkg-config --libs names more than libaiqueue: %s" % libs)
    # The ordinary way (PKG_CONFIG_PATH) gives the same flags.
    env2 = dict(os.environ)
    env2["PKG_CONFIG_PATH"] = pcdir
    env2["PKG_CONFIG_SYSROOT_DIR"] = dest
    both = shlex.split(run(["pkg-config", "--cflags", "--libs", "libaiqueue"], env=env2))
    if both != cflags + libs:
        sys.exit("PKG_CONFIG_PATH gives other flags: %s" % both)
    return cflags + libs, libdirs


def check_consumer(tmp, dest, o, flags, libdirs):
    exe = os.path.join(tmp, "consumer")
    run(o["cc"] + [o["source"], "-o", exe] + flags)
    run_env = dict(os.environ)
    run_env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs)
    if o["libasan"]:
        run_env["LD_PRELOAD"] = o["libasan"]
    out = run([exe], env=run_env)
    if "consumed 3 tasks through memory://" not in out:
        sys.exit("the consumer did not report its tasks")
    check_loaded(exe, dest, run_env)


def check_loaded(exe, dest, env):
    if shutil.which("ldd") is None:
        return
    loaded = [line.strip() for line in run(["ldd", exe], quiet=True, env=env).splitlines()
              if "libaiqueue" in line]
    print("\n".join(loaded))
    if not loaded or not all(dest in line for line in loaded):
        sys.exit("%s did not load the installed libaiqueue" % os.path.basename(exe))


def check_programs(dest, o):
    bindir = installed(dest, o["prefix"], o["bindir"])
    env = dict(os.environ)
    env.pop("LD_LIBRARY_PATH", None)
    for name in o["programs"]:
        exe = os.path.join(bindir, name)
        if not os.access(exe, os.X_OK):
            sys.exit("%s is not installed in %s" % (name, bindir))
        out = run([exe, "--help"], quiet=True, env=env)
        if "usage" not in out.lower():
            sys.exit("%s --help printed no usage" % name)
        check_loaded(exe, dest, env)
        print("%s --help runs from %s without LD_LIBRARY_PATH" % (name, o["bindir"]))


def main(argv):
    o = parse(argv)
    if shutil.which("pkg-config") is None:
        sys.exit("pkg-config is not installed (scripts/install-deps.sh installs it)")
    tmp = tempfile.mkdtemp(prefix="aiq-pkgconfig-")
    try:
        dest = os.path.join(tmp, "root")
        run([o["meson"], "install", "-C", o["build"], "--no-rebuild", "--quiet",
             "--destdir", dest])
        pcdir = check_pc_location(dest, o)
        flags, libdirs = pkg_config_flags(dest, pcdir)
        check_consumer(tmp, dest, o, flags, libdirs)
        check_programs(dest, o)
        print("ok")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
