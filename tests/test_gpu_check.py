"""The GPU check script, run at toy size on this machine (``--smoke``): every step runs and is recorded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def test_the_gpu_check_runs_every_step_at_toy_size(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--smoke", "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    [summary_file] = [path for path in tmp_path.glob("*.json") if path.name != "latency.json"]
    summary = json.loads(summary_file.read_text())
    steps = summary["steps"]
    assert set(steps) == {"dry_run_bfloat16", "collective", "latency"}
    assert all(step["status"] == 0 for step in steps.values())
    assert steps["collective"]["world_size"] == 2 and steps["collective"]["all_reduce"] == 3.0  # 1 + 2
    assert steps["dry_run_bfloat16"]["seconds_per_step"] > 0
    assert sys.executable not in summary_file.read_text()  # nothing of this machine's paths in a results file
