"""The README's "From Python" snippet runs and prints what the README says."""
from __future__ import annotations

import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, "..", "..", "..", "README.md")


def test_readme_python_taste_runs() -> None:
    with open(README, encoding="utf-8") as f:
        text = f.read()
    section = text.split("### From Python", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "no python block under '### From Python' in README.md"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    r = subprocess.run([sys.executable, "-c", m.group(1)], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "SUCCESS -> 5"
    assert "prints `SUCCESS -> 5`" in section.split("```", 1)[0]
