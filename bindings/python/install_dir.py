"""Print the entry of this interpreter's sys.path that lies under PREFIX and
holds packages (site-packages or dist-packages), or nothing.

usage: install_dir.py PREFIX
"""
import sys

prefix = sys.argv[1].rstrip("/") + "/"
print(next((p for p in sys.path
            if p.startswith(prefix) and p.rstrip("/").endswith(("site-packages", "dist-packages"))),
           ""))
