"""Memory is checked against the real limit (issue 31, family 5): the container's cgroup (v2 or v1), ``ulimit -v``
and ``/proc/meminfo``, whichever leaves least; an oversized request is refused with its size, never killed; a huge
image is shrunk as it is decoded."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workbench import checks
from workbench.errors import ArgumentValueError

GiB = 2**30


def _cgroup_v2(root: Path, limit: str, current: int, inactive: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "memory.max").write_text(f"{limit}\n")
    (root / "memory.current").write_text(f"{current}\n")
    (root / "memory.stat").write_text(f"anon {current - inactive}\ninactive_file {inactive}\nactive_file 0\n")
    return root


def test_a_2gib_cgroup_v2_container_is_not_told_the_hosts_memory(tmp_path):
    root = _cgroup_v2(tmp_path, str(2 * GiB), current=GiB, inactive=GiB // 4)
    assert checks.cgroup_free(root) == 2 * GiB - (GiB - GiB // 4)          # the page cache is reclaimable
    assert checks.free_memory("cpu", cgroup_root=root) <= 2 * GiB - GiB + GiB // 4


def test_cgroup_v1_limit_and_usage_are_read(tmp_path):
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(str(2 * GiB))
    (tmp_path / "memory" / "memory.usage_in_bytes").write_text(str(GiB // 2))
    (tmp_path / "memory" / "memory.stat").write_text("total_inactive_file 0\n")
    assert checks.cgroup_free(tmp_path) == 2 * GiB - GiB // 2


@pytest.mark.parametrize("limit", ["max", "9223372036854771712"])
def test_an_unlimited_cgroup_leaves_meminfo_in_charge(tmp_path, limit):
    assert checks.cgroup_free(_cgroup_v2(tmp_path, limit, current=GiB)) is None
    assert checks.cgroup_free(tmp_path / "no-cgroup") is None
    assert checks.free_memory("cpu", cgroup_root=tmp_path / "no-cgroup") is not None     # /proc/meminfo


def test_check_allocation_refuses_what_a_2gib_container_cannot_hold(tmp_path, monkeypatch):
    monkeypatch.setattr(checks, "CGROUP_ROOT", _cgroup_v2(tmp_path, str(2 * GiB), current=GiB // 2))
    checks.check_allocation((64, 1024, 1024), torch.float32, "cpu", "a 256 MiB tensor")          # fits
    with pytest.raises(ArgumentValueError, match=r"a 1\.5 GiB tensor would build .* half the 1\.5 GiB free"):
        checks.check_allocation((384, 1024, 1024), torch.float32, "cpu", "a 1.5 GiB tensor")


#: Run in a child python whose address space is capped at what it uses after its imports plus 2 GiB: each request
#: must be refused with its size (exit status 0, one line per request), not killed and not a MemoryError.
CHILD = textwrap.dedent("""
    import resource
    import torch
    import workbench as wb
    from workbench.analysis import composition
    from workbench.errors import ArgumentValueError, InterventionError

    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + 2 * 2**30, resource.RLIM_INFINITY))
    maps = torch.rand(2, 192, 4, 4)
    requests = {
        "TinyWorld(size=10**8)[0]": lambda: wb.TinyWorld("test", size=10**8)[0],
        "interpolate(num_steps=10**5)": lambda: composition.interpolate(maps, maps, 10**5),
        "ablate_channels(range(10**9))": lambda: wb.ablate_channels(range(10**9)),
    }
    for what, request in requests.items():
        try:
            request()
            print(what, "ran")
        except (ArgumentValueError, InterventionError) as err:
            print(what, "refused:", str(err)[:160])
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/statm are Linux's")
def test_oversized_requests_are_refused_not_killed_under_a_memory_limit():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3 and all(" refused: " in line for line in lines), proc.stdout
    assert "GiB" in lines[0] and "GiB" in lines[1]


# ------------------------------------------------------------------------------------------ huge images
@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_a_huge_image_is_shrunk_as_it_is_decoded(tmp_path, monkeypatch, kind):
    from workbench import models

    monkeypatch.setattr(models, "MAX_DECODE_PIXELS", 64 * 64)       # a 10000x10000 photo, scaled down
    path = tmp_path / f"huge.{kind.lower()}"
    pixels = np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=kind)
    img = models.read_image(path)
    assert img.width * img.height <= 64 * 64 and img.width < img.height          # the aspect ratio kept
    assert img.width >= 200 // 5 and img.height >= 300 // 5                       # an integer factor, no more


def test_a_palette_image_is_shrunk_too(tmp_path, monkeypatch):
    from workbench import models

    monkeypatch.setattr(models, "MAX_DECODE_PIXELS", 32 * 32)
    path = tmp_path / "palette.png"
    Image.fromarray(np.zeros((128, 128, 3), dtype=np.uint8)).convert("P").save(path)
    img = models.read_image(path)
    assert img.width * img.height <= 32 * 32 and img.mode in ("RGB", "RGBA")
