"""`meson install` installs the Python package into the prefix's
site-packages (into a temporary DESTDIR here), importable from there."""
import os
import subprocess
import sys
import tempfile

import pytest

MODULES = ("__init__.py", "__main__.py", "_lib.py", "app.py", "client.py", "config.py",
           "errors.py", "worker.py", "py.typed", "_install.py")


@pytest.fixture(scope="module")
def installed():
    dest = tempfile.mkdtemp(prefix="aiq-pyinstall-")
    subprocess.run([os.environ["AIQUEUE_MESON"], "install", "-C",
                    os.environ["AIQUEUE_BUILD_ROOT"], "--no-rebuild", "--quiet",
                    "--destdir", dest], check=True, stdout=subprocess.DEVNULL)
    site = dest + os.environ["AIQUEUE_PY_INSTALL_DIR"]
    return site


def test_every_module_is_installed(installed):
    pkg = os.path.join(installed, "aiqueue")
    missing = [m for m in MODULES if not os.path.isfile(os.path.join(pkg, m))]
    assert not missing, "not installed in %s: %s" % (pkg, missing)
    ns = {}
    with open(os.path.join(pkg, "_install.py")) as f:
        exec(f.read(), ns)
    assert ns["LIBRARY"] == os.environ["AIQUEUE_INSTALLED_LIBRARY"]


def test_package_lands_on_the_interpreter_path_or_under_the_prefix():
    # For the prefixes Debian's Python searches, `import aiqueue` must work
    # without PYTHONPATH once installed; other prefixes keep it under them.
    where = os.environ["AIQUEUE_PY_INSTALL_DIR"].rstrip("/")
    prefix = os.environ["AIQUEUE_PREFIX"].rstrip("/")
    if prefix in ("/usr", "/usr/local"):
        assert where in [p.rstrip("/") for p in sys.path]
    else:
        assert where.startswith(prefix + "/")


def test_installed_package_finds_the_installed_library(installed):
    # The DESTDIR stands in for the prefix: point _install.py at the copy
    # there, and load with neither AIQUEUE_LIBRARY nor LD_LIBRARY_PATH.
    dest = installed[:-len(os.environ["AIQUEUE_PY_INSTALL_DIR"])]
    lib = dest + os.environ["AIQUEUE_INSTALLED_LIBRARY"]
    assert os.path.exists(lib)
    with open(os.path.join(installed, "aiqueue", "_install.py"), "w") as f:
        f.write("LIBRARY = %r\n" % lib)
    env = {k: v for k, v in os.environ.items()
           if k not in ("AIQUEUE_LIBRARY", "LD_LIBRARY_PATH", "PYTHONPATH")}
    env["PYTHONPATH"] = installed
    code = ("import aiqueue; print(aiqueue._lib.lib._name); print(aiqueue.version())")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == lib


def test_installed_package_imports_and_runs(installed):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = installed  # the DESTDIR stands in for the prefix
    code = ("import aiqueue, sys; assert aiqueue.__file__.startswith(sys.argv[1]), "
            "aiqueue.__file__; app = aiqueue.App('i', broker='memory://i', backend='memory://i')\n"
            "@app.task\ndef add(x, y): return x + y\n"
            "w = app.Worker(concurrency=1); w.start()\n"
            "print(add.delay(2, 3).get(timeout=10)); w.close()")
    r = subprocess.run([sys.executable, "-c", code, installed], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "5", r.stderr
    r = subprocess.run([sys.executable, "-m", "aiqueue", "worker", "--help"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--concurrency" in r.stdout, r.stderr
