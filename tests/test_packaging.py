"""The project installs as a package: ``pip install .`` gives the ``pmp`` library and the ``pmp`` command."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_holds_the_library_and_the_console_command(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*command, str(ROOT)], check=True, capture_output=True, text=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("pmp-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in (
        "pmp/__init__.py",
        "pmp/segmenter.py",
        "pmp/stage2.py",
        "pmp/clip/text.py",
        "pmp/modeling/text_conditioning.py",
    ):
        assert module in names, module
    assert not any(name.startswith(("train/", "tests/", "benchmarks/")) for name in names)
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "pmp = pmp.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_command_line_entry_point_runs() -> None:
    from pmp.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
