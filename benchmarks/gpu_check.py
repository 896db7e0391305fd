"""The GPU check: what a lent GPU must show before this project's GPU figures are trusted, in one command.

    python -m benchmarks.gpu_check                          # on a CUDA machine; writes results/gpu_check/<gpu>.json
    python -m benchmarks.gpu_check --smoke --out /tmp/check # anywhere: every step at toy size (CI runs this)

Steps, each recorded in the summary with its command, exit status and figures:

1. the test suite on CUDA (``python -m pytest -q``; tests that need CUDA run instead of being skipped);
2. a dry run of ``ovseg-swinb-vitl14-pmp`` (``--dry-run 50``, batch 4 per GPU, 640 px) in bf16 and in fp16
   with its GradScaler: seconds per step and peak memory (``train.dry_run``);
3. a collective through torchrun: a process group (NCCL over every GPU on CUDA, gloo over two processes
   otherwise) and one all-reduce checked against its hand sum;
4. the latency benchmark at paper scale (``python -m benchmarks.latency --models r50,swinb``).

``--smoke`` runs each step at toy size on whatever device there is (no test suite, the reduced dry run
of ``ovseg-r101c-vitb16-pmp``, gloo, the bundled models' latency), to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parent.parent


def run(command: list[str], log: Path, timeout: float) -> dict[str, Any]:
    """Run ``command`` in the repository, its output to ``log``; returns command, status and seconds."""
    started = time.perf_counter()
    with open(log, "w") as handle:
        try:
            status = subprocess.run(
                command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            status = "timeout"
    shown = ["python" if part == sys.executable else part for part in command]  # no path of this machine
    return {"command": " ".join(shown), "status": status, "seconds": round(time.perf_counter() - started, 1)}


def collective_probe() -> None:
    """Run under torchrun: join the group, all-reduce each rank's rank + 1, check the sum."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if backend == "nccl" else torch.device("cpu")
    value = torch.tensor([dist.get_rank() + 1.0], device=device)
    dist.all_reduce(value)
    world, rank = dist.get_world_size(), dist.get_rank()
    expected = world * (world + 1) / 2
    dist.destroy_process_group()
    if float(value) != expected:
        raise SystemExit(f"all-reduce gave {float(value)}, expected {expected}")
    if rank == 0:  # one line for the summary to read
        print(json.dumps({"backend": backend, "world_size": world, "all_reduce": float(value)}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every step at toy size (checks the script, any device)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "gpu_check", help="summary and logs go here")
    parser.add_argument("--steps", type=int, default=50, help="dry-run steps")
    parser.add_argument("--collective-probe", action="store_true", help=argparse.SUPPRESS)  # torchrun's entry
    args = parser.parse_args(argv)
    if args.collective_probe:
        collective_probe()
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    summary: dict[str, Any] = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "steps": {}}
    python = sys.executable
    if not args.smoke:
        summary["steps"]["tests"] = run([python, "-m", "pytest", "-q"], args.out / "tests.log", 3600)
    recipe, size = ("ovseg-r101c-vitb16-pmp", ["--crop-size", "128", "--batch-size", "2"]) if args.smoke else (
        "ovseg-swinb-vitl14-pmp", ["--batch-size", "4"])  # fmt: skip
    steps = "2" if args.smoke else str(args.steps)
    for dtype in ("bfloat16", "float16"):
        folder = args.out / f"dry_run_{dtype}"
        command = [python, "-m", "train.train_segmenter", "--recipe", recipe, "--dry-run", steps, "--amp-dtype", dtype,
                   *size, "--out", str(folder)]  # fmt: skip
        step = run(command, args.out / f"dry_run_{dtype}.log", 3600)
        report = folder / "dry_run.json"
        if report.is_file():
            figures = json.loads(report.read_text())
            step.update({key: figures[key] for key in ("seconds_per_step", "peak_memory_gib", "random_weights")})
        summary["steps"][f"dry_run_{dtype}"] = step
        if args.smoke:
            break  # on a CPU both dtypes run the same path (autocast is CUDA-only)
    ranks = str(torch.cuda.device_count()) if torch.cuda.is_available() else "2"  # a collective needs two to mean much
    probe = [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", ranks,
             "-m", "benchmarks.gpu_check", "--collective-probe"]  # fmt: skip
    summary["steps"]["collective"] = run(probe, args.out / "collective.log", 600)
    found = re.findall(r"\{\"backend\"[^{}]*\}", (args.out / "collective.log").read_text())
    if found:
        summary["steps"]["collective"].update(json.loads(found[-1]))
    latency = [
        python,
        "-m",
        "benchmarks.latency",
        "--no-profile",
        "--json",
        str(args.out / "latency.json"),
    ]
    latency += ["--models", "bundled", "--prompts", "1", "--repeats", "1"] if args.smoke else ["--models", "r50,swinb"]
    summary["steps"]["latency"] = run(latency, args.out / "latency.log", 3600)
    name = re.sub(r"[^A-Za-z0-9]+", "_", device).strip("_").lower()
    (args.out / f"{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if all(step["status"] == 0 for step in summary["steps"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
