"""Mutation score of the core: how many one-token slips in each central module the tests catch.

    python tests/mutation_score.py                       # every module below, ~30-60 min on 2 cores
    python tests/mutation_score.py --module pmp/prompts.py

Not part of the test suite (it is slow). For each module, a copy of the checkout is made in a temporary folder
(nothing is written into the checkout but the summary), mutmut (on PyPI) mutates that module there and runs the
module's tests against every mutant, and the counts and every surviving mutant's diff go to
results/mutation.json. docs/testing.md says how to read it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "mutation.json"

# module -> the tests that exercise it (mutmut runs, per mutant, only those of them that reach the mutated function)
MODULES: dict[str, list[str]] = {
    "pmp/modeling/heads.py": ["tests/test_modeling.py", "tests/test_fcclip.py"],  # Eq. 1
    "pmp/modeling/text_conditioning.py": ["tests/test_modeling.py", "tests/test_text_modes.py"],  # Eq. 5, Fig. 5
    "pmp/modeling/transformer_decoder.py": ["tests/test_modeling.py", "tests/test_text_modes.py"],
    "pmp/stage2.py": [
        "tests/test_segmenter.py",
        "tests/test_clip.py",
        "tests/test_fast_paths.py",
        "tests/test_image_state.py",
        "tests/test_mask_prompts.py",
        "tests/test_fcclip.py",
    ],  # fmt: skip
    "pmp/postprocess.py": ["tests/test_segmenter.py", "tests/test_fast_paths.py"],
    "train/matcher.py": ["tests/test_matcher.py", "tests/test_matcher_costs.py", "tests/test_losses.py"],
    "train/losses.py": ["tests/test_losses.py", "tests/test_fcclip_training.py"],
    "pmp/metrics.py": ["tests/test_metrics.py", "tests/test_evaluate.py"],
    "pmp/prompts.py": ["tests/test_prompts.py", "tests/test_fast_paths.py"],
    "pmp/checkpoint.py": ["tests/test_checkpoints.py", "tests/test_untrusted_checkpoints.py"],
}
# Surviving mutants that change nothing a caller can observe, keyed by module and the mutant's added line(s), with
# the reason. A survivor not listed here is a gap in the tests.
EQUIVALENT: dict[tuple[str, str], str] = {
    ("pmp/prompts.py", 'text.encode("UTF-8")'): "Python's codec names are case-insensitive",
    **{
        ("train/matcher.py", line): "the tensors are 2-D (Q, P) and (K, P): dim +1 is dim -1"
        for line in (
            "denominator = probs.sum(+1)[:, None] + target_points.sum(-1)[None, :]",
            "denominator = probs.sum(-1)[:, None] + target_points.sum(+1)[None, :]",
        )
    },
    **{
        ("train/matcher.py", line): "an argument dropped or None where torch's default is the value written out"
        for line in (
            'sampled = F.grid_sample(inputs, grid, mode="bilinear", padding_mode="zeros", align_corners=None)',
            'sampled = F.grid_sample(inputs, grid, padding_mode="zeros", align_corners=False)',
            'sampled = F.grid_sample(inputs, grid, mode="bilinear", align_corners=False)',
            'sampled = F.grid_sample(inputs, grid, mode="bilinear", padding_mode="zeros", )',
            "target_pixels = F.interpolate(target_masks[None], size=pred_masks.shape[-2:], )[0]",
        )
    },
    **{
        ("train/matcher.py", line): "a device dropped: the tests run on one device (CPU), where it is a no-op"
        for line in (
            "padded = torch.isneginf(logits[b][:, labels.to(None)]).all(dim=0)  # (K,)",
            "target_masks = target_masks.to(device=None, dtype=torch.float32)",
            "target_masks = target_masks.to(dtype=torch.float32)",
            "coords = torch.rand(1, num_points, 2, device=None)  # (1, P, 2)",
            "coords = torch.rand(1, num_points, 2, )  # (1, P, 2)",
        )
    },
}
COPIED = ["pmp", "train", "demo", "tests", "recipes", "checkpoints", "examples", "pytest.ini"]
STATUS_LINE = re.compile(r"^\s*(\S+__mutmut_\d+): (.+)$")


def _copy_checkout(folder: Path) -> None:
    for name in COPIED + ["pyproject.toml"]:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, folder / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.exists():
            shutil.copy2(source, folder / name)


def score_module(module: str, tests: list[str], workers: int) -> dict:
    """Run mutmut on one module in a fresh copy; counts by status and the survivors' diffs."""
    with tempfile.TemporaryDirectory(prefix="pmp-mutation-") as tmp:
        folder = Path(tmp)
        _copy_checkout(folder)
        with (folder / "pyproject.toml").open("a") as config:
            config.write(
                "\n[tool.mutmut]\n"
                f"source_paths = [{json.dumps(module)}]\n"
                f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
                f"also_copy = {json.dumps(COPIED)}\n"
            )
        start = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", "--max-children", str(workers)],
            cwd=folder,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        listed = subprocess.run(
            [sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=folder, capture_output=True, text=True
        )
        statuses = {m.group(1): m.group(2).strip() for m in map(STATUS_LINE.match, listed.stdout.splitlines()) if m}
        if not statuses:
            raise RuntimeError(f"mutmut gave no results for {module}:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
        counts: dict[str, int] = {}
        for status in statuses.values():
            counts[status] = counts.get(status, 0) + 1
        survivors = []
        for name, status in sorted(statuses.items()):
            if status != "killed":
                shown = subprocess.run(
                    [sys.executable, "-m", "mutmut", "show", name], cwd=folder, capture_output=True, text=True
                ).stdout
                changed = [line for line in shown.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
                added = " ".join(line[1:].strip() for line in changed if line.startswith("+"))
                reason = EQUIVALENT.get((module, added))
                survivors.append({"mutant": name, "status": status, "diff": changed, "equivalent": reason})
    killed = counts.get("killed", 0)
    equivalent = sum(1 for survivor in survivors if survivor["equivalent"])
    return {
        "tests": tests,
        "mutants": len(statuses),
        "counts": counts,
        "equivalent": equivalent,
        "killed_share": round(killed / len(statuses), 4),
        "killed_share_of_non_equivalent": round(killed / max(len(statuses) - equivalent, 1), 4),
        "seconds": round(seconds, 1),
        "open": [survivor for survivor in survivors if not survivor["equivalent"]],
        "equivalent_mutants": [survivor for survivor in survivors if survivor["equivalent"]],
    }


DOCS_PAGE = REPO / "docs" / "testing.md"
TABLE_START = "<!-- mutation table: python tests/mutation_score.py -->"
TABLE_END = "<!-- end of mutation table -->"


def mutation_table(summary: dict) -> str:
    """docs/testing.md's table: one row per module, from results/mutation.json."""
    rows = [
        "| module | mutants | killed | survived | no tests / timeout | equivalent | killed | of the non-equivalent |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for module, result in summary["modules"].items():
        counts = result["counts"]
        other = result["mutants"] - counts.get("killed", 0) - counts.get("survived", 0)
        rows.append(
            f"| `{module}` | {result['mutants']} | {counts.get('killed', 0)} | {counts.get('survived', 0)} | {other} "
            f"| {result['equivalent']} | {result['killed_share']:.1%} "
            f"| {result['killed_share_of_non_equivalent']:.1%} |"
        )
    return "\n".join(rows)


def write_docs_table(summary: dict, page: Path = DOCS_PAGE) -> None:
    """Rewrite the table between docs/testing.md's markers."""
    head, _, rest = page.read_text().partition(TABLE_START)
    _, _, tail = rest.partition(TABLE_END)
    page.write_text(f"{head}{TABLE_START}\n{mutation_table(summary)}\n{TABLE_END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES), help="default: all of them")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    for module in args.module or list(MODULES):
        result = score_module(module, MODULES[module], args.workers)
        # Read again just before writing: another run may have written other modules meanwhile.
        summary = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        summary["command"] = "python tests/mutation_score.py"
        summary["modules"] = {**summary.get("modules", {}), module: result}
        summary["modules"] = {name: summary["modules"][name] for name in MODULES if name in summary["modules"]}
        print(
            f"{module}: {result['killed_share']:.1%} of {result['mutants']} killed "
            f"({result['killed_share_of_non_equivalent']:.1%} of the non-equivalent), {len(result['open'])} open",
            flush=True,
        )
        RESULTS.write_text(json.dumps(summary, indent=1) + "\n")  # after each module: a long run keeps its part
        write_docs_table(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
