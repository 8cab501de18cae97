"""The README runs as written: every ```python block, in order, in a fresh interpreter in fast mode, as a newcomer
would paste them; any exception fails the test. The README also stays short and opens with its two commands."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    """The bodies of the fenced ```python blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_python_blocks_are_found():
    blocks = python_blocks("intro\n```python\na = 1\n```\n```bash\nmake\n```\n```python\nb = a\n```\n")
    assert blocks == ["a = 1\n", "b = a\n"]


def test_readme_is_short_and_opens_with_its_commands():
    text = README.read_text()
    assert len(text) < 10_000, f"README.md has {len(text)} characters; keep it under 10,000"
    head = text.split("## ")[0]
    assert "make demo" in head and "make test" in head


@pytest.mark.slow
def test_every_python_block_of_the_readme_runs_in_order(tmp_path):
    blocks = python_blocks(README.read_text())
    assert blocks, "the README has no ```python block"
    script = "\n".join(f"# --- README block {i + 1}\n{b}" for i, b in enumerate(blocks))
    (tmp_path / "readme.py").write_text(script)
    env = {**os.environ, "WORKBENCH_FAST": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(tmp_path / "readme.py")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    error = proc.stderr[proc.stderr.rfind("Traceback"):] if "Traceback" in proc.stderr else proc.stderr[-3000:]
    assert proc.returncode == 0, f"a README block failed:\n{error}"
