#!/usr/bin/python3
"""Build a downstream program against an installed libaiqueue.

Installs the build tree into a temporary directory (`meson install
--destdir`), then compiles consumer.c with nothing but the flags
`pkg-config --cflags --libs libaiqueue` prints for that installation, runs
it, and expects it to enqueue and consume its tasks through memory://.
PKG_CONFIG_SYSROOT_DIR maps the installed prefix into the temporary
directory, so the real prefix is never touched.

usage: check_consumer.py MESON BUILD_DIR CONSUMER.c [LIBASAN] -- CC...
"""
import os
import shlex
import shutil
import subprocess
import sys
import tempfile


def run(cmd, quiet=False, **kw):
    print('+ ' + ' '.join(shlex.quote(c) for c in cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if not quiet or r.returncode != 0:
        sys.stdout.write(r.stdout)
    sys.stdout.write(r.stderr)
    if r.returncode != 0:
        sys.exit('command failed with status %d' % r.returncode)
    return r.stdout


def find(root, name):
    for dirpath, _, files in os.walk(root):
        if name in files:
            return os.path.join(dirpath, name)
    sys.exit('%s not found under %s after meson install' % (name, root))


def main(argv):
    if '--' not in argv or len(argv[:argv.index('--')]) < 3:
        sys.exit(__doc__)
    sep = argv.index('--')
    meson, build_dir, source = argv[:3]
    libasan = argv[3] if sep > 3 else ''
    cc = argv[sep + 1:]
    if shutil.which('pkg-config') is None:
        print('pkg-config is not installed: skipped')
        return 77

    tmp = tempfile.mkdtemp(prefix='aiq-pkgconfig-')
    try:
        dest = os.path.join(tmp, 'root')
        run([meson, 'install', '-C', build_dir, '--no-rebuild', '--quiet',
             '--destdir', dest])
        pc = find(dest, 'libaiqueue.pc')
        env = dict(os.environ)
        env['PKG_CONFIG_PATH'] = os.path.dirname(pc)
        env['PKG_CONFIG_SYSROOT_DIR'] = dest
        flags = shlex.split(run(['pkg-config', '--cflags', '--libs', 'libaiqueue'],
                                env=env))
        print('pkg-config: %s' % ' '.join(flags))
        libdirs = [f[2:] for f in flags if f.startswith('-L')]
        # The flags must lead into the temporary installation, not to some
        # copy installed on the system.
        if not libdirs or not all(d.startswith(dest) for d in libdirs):
            sys.exit('pkg-config -L flags do not point into %s' % dest)
        if not any(f.startswith('-I' + dest) for f in flags):
            sys.exit('pkg-config -I flags do not point into %s' % dest)
        exe = os.path.join(tmp, 'consumer')
        run(cc + [source, '-o', exe] + flags)
        run_env = dict(os.environ)
        run_env['LD_LIBRARY_PATH'] = os.pathsep.join(libdirs)
        if libasan:
            run_env['LD_PRELOAD'] = libasan
        out = run([exe], env=run_env)
        if 'consumed 3 tasks through memory://' not in out:
            sys.exit('the consumer did not report its tasks')
        # The program must have loaded the installed copy.
        if shutil.which('ldd'):
            loaded = [line.strip() for line in
                      run(['ldd', exe], quiet=True, env=run_env).splitlines()
                      if 'libaiqueue' in line]
            print('\n'.join(loaded))
            if not loaded or not all(dest in line for line in loaded):
                sys.exit('the consumer did not load the installed libaiqueue')
        print('ok')
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
