"""Mutation score of the core: how many one-token slips in each central module the tests catch.

    python tests/mutation_score.py                       # every module below (docs/testing.md: how long)
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

import tomllib

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "mutation.json"

# module -> the tests that exercise it (mutmut runs, per mutant, only those of them that reach the mutated function)
MODULES: dict[str, list[str]] = {
    "pmp/modeling/heads.py": [
        "tests/test_modeling.py",
        "tests/test_heads.py",
        "tests/test_fcclip.py",
        "tests/test_convert_ovseg.py",
    ],  # Eq. 1
    "pmp/modeling/text_conditioning.py": [
        "tests/test_modeling.py",
        "tests/test_text_modes.py",
        "tests/test_text_hooks.py",
        "tests/test_mask2former_reference.py",
    ],  # Eq. 5, Fig. 5
    "pmp/modeling/transformer_decoder.py": [
        "tests/test_modeling.py",
        "tests/test_text_modes.py",
        "tests/test_text_hooks.py",
        "tests/test_mask2former_reference.py",
        "tests/test_convert_ovseg.py",
    ],
    "pmp/stage2.py": [
        "tests/test_segmenter.py",
        "tests/test_clip.py",
        "tests/test_fast_paths.py",
        "tests/test_image_state.py",
        "tests/test_mask_prompts.py",
        "tests/test_fcclip.py",
        "tests/test_stage2_pooling.py",
        "tests/test_stage2_paths.py",
    ],
    "pmp/postprocess.py": ["tests/test_segmenter.py", "tests/test_fast_paths.py", "tests/test_postprocess_edges.py"],
    "train/matcher.py": ["tests/test_matcher.py", "tests/test_matcher_costs.py", "tests/test_losses.py"],
    "train/losses.py": ["tests/test_losses.py", "tests/test_loss_terms.py", "tests/test_fcclip_training.py"],
    "pmp/metrics.py": ["tests/test_metrics.py", "tests/test_metrics_edges.py", "tests/test_evaluate.py"],
    "pmp/prompts.py": ["tests/test_prompts.py", "tests/test_fast_paths.py"],
    "pmp/checkpoint.py": [
        "tests/test_checkpoints.py",
        "tests/test_checkpoint_edges.py",
        "tests/test_untrusted_checkpoints.py",
    ],
}
ON_ONE_DEVICE = "a device dropped: the tests run on one device (CPU), where placing a tensor is a no-op"
EQUIVALENTS_FILE = Path(__file__).with_name("equivalent_mutants.toml")


def load_equivalents(path: Path = EQUIVALENTS_FILE, table: str = "equivalent") -> dict[tuple[str, ...], str]:
    """(module, the mutant's added line(s)) or, where that alone is ambiguous, (module, removed, added) -> the
    reason: why that mutant changes nothing a caller can observe ("equivalent"), or which test fails on it
    where mutmut cannot see it fail ("caught_outside_mutmut")."""
    with path.open("rb") as file:
        groups = tomllib.load(file).get(table, [])
    return {
        (group["module"], *(" ".join(part.split()) for part in ([line] if isinstance(line, str) else line))): (
            group["reason"]
        )
        for group in groups
        for line in group["lines"]
    }


EQUIVALENT = load_equivalents()
CAUGHT_OUTSIDE_MUTMUT = load_equivalents(table="caught_outside_mutmut")
# Single-token changes that are the same call wherever they appear: (original, mutated, reason).
SAME_EVERYWHERE: list[tuple[str, str, str]] = [
    ("dtype=np.float64", "dtype=None", "numpy's default dtype is float64"),
    ("dtype=np.float64", "", "numpy's default dtype is float64"),
    (".astype(np.float64)", ".astype(None)", "numpy's astype(None) is float64"),
    ('float("nan")', 'float("NAN")', "float() reads 'nan' in any case"),
    ('float("-inf")', 'float("-INF")', "float() reads 'inf' in any case"),
    ("align_corners=False", "align_corners=None", "torch reads align_corners=None as False"),
    ("align_corners=False", "", "torch's align_corners defaults to False"),
    ("align_corners=False, ", "", "torch's align_corners defaults to False"),
]
# A cast or move to match another tensor (x.to(y), x.to(y.dtype)), or a dtype copied from one: no-ops in the
# tests, which run in float32 on the CPU throughout. Casts to a named dtype (torch.int64, ...) are not this.
ON_ONE_DTYPE = "a cast to match another tensor dropped: the tests run in float32 on the CPU, where it is a no-op"
# A keyword argument set to None or dropped, and a .to(...) made .to(None): pattern -> reason.
ARGUMENTS = {re.compile(r"device=[\w.]+(, )?"): ON_ONE_DEVICE, re.compile(r"dtype=[\w.]+\.dtype(, )?"): ON_ONE_DTYPE}
CASTS = {
    re.compile(r"\.to\([\w.\[\]\"']*device\)"): ON_ONE_DEVICE,
    re.compile(r"\.to\((?!torch\.)[\w.]+\)"): ON_ONE_DTYPE,
}


def changed_lines(diff: list[str]) -> tuple[str, str]:
    """A mutant's removed and added line(s), each joined by one space, spacing normalised."""
    return tuple(" ".join(" ".join(line[1:] for line in diff if line.startswith(sign)).split()) for sign in "-+")


def listed(table: dict[tuple[str, ...], str], module: str, removed: str, added: str) -> str | None:
    """The reason ``table`` gives for this mutant: keyed by (module, removed, added) or by (module, added)."""
    return table.get((module, removed, added)) or table.get((module, added))


def equivalent_reason(module: str, removed: str, added: str) -> str | None:
    """Why a surviving mutant changes nothing a caller can observe, or None when it is a gap in the tests.
    ``removed`` and ``added`` as :func:`changed_lines` gives them."""
    if reason := listed(EQUIVALENT, module, removed, added):
        return reason
    for original, mutated, reason in SAME_EVERYWHERE:
        if original in removed and " ".join(removed.replace(original, mutated, 1).split()) == added:
            return reason
    for pattern, reason in ARGUMENTS.items():
        for argument in pattern.finditer(removed):
            before, after = removed[: argument.start()], removed[argument.end() :]
            as_none = before + argument.group(0).split("=")[0] + "=None" + (argument.group(1) or "") + after
            if added in (as_none, before + after):
                return reason
    for pattern, reason in CASTS.items():
        for cast in pattern.finditer(removed):
            if removed[: cast.start()] + ".to(None)" + removed[cast.end() :] == added:
                return reason
    einsum = re.search(r'einsum\("([a-z,>-]+)"', removed)
    if einsum and removed.replace(einsum.group(1), einsum.group(1).upper(), 1) == added:
        return "torch.einsum takes upper-case subscripts as well"
    return None


COPIED = [
    "pmp",
    "train",
    "demo",
    "tests",
    "recipes",
    "checkpoints",
    "examples",
    "benchmarks",
    "docs",
    "results",
    "pytest.ini",
]
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
        if not statuses or set(statuses.values()) == {"not checked"}:
            raise RuntimeError(f"mutmut gave no results for {module}:\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
        counts: dict[str, int] = {}
        for status in statuses.values():
            counts[status] = counts.get(status, 0) + 1
        survivors = []
        for name, status in sorted(statuses.items()):
            if status not in ("killed", "timeout"):
                shown = subprocess.run(
                    [sys.executable, "-m", "mutmut", "show", name], cwd=folder, capture_output=True, text=True
                ).stdout
                changed = [line for line in shown.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
                survivors.append({"mutant": name, "status": status, "diff": changed, "equivalent": None})
    result = {
        "tests": tests,
        "mutants": len(statuses),
        "counts": counts,
        "seconds": round(seconds, 1),
        "open": survivors,
        "equivalent_mutants": [],
    }
    return reclassify(module, result)


def stored_survivors(result: dict) -> list[dict]:
    """Every mutant of a stored result that mutmut did not see killed, whichever list it was filed in."""
    return result["open"] + result["equivalent_mutants"] + result.get("caught_outside_mutmut", [])


def reclassify(module: str, result: dict) -> dict:
    """The same result with every survivor's equivalence decided again by the current EQUIVALENT."""
    survivors = [survivor for survivor in stored_survivors(result) if survivor["status"] != "timeout"]
    outside = []
    for survivor in survivors:
        removed, added = changed_lines(survivor["diff"])
        survivor["equivalent"] = equivalent_reason(module, removed, added)
        survivor.pop("caught_by", None)
        if caught_by := listed(CAUGHT_OUTSIDE_MUTMUT, module, removed, added):
            survivor["caught_by"] = caught_by
            outside.append(survivor)
    survivors.sort(key=lambda survivor: survivor["mutant"])
    equivalent = [survivor for survivor in survivors if survivor["equivalent"]]
    # A mutant that makes the tests hang (timeout) is caught too: the suite would never pass.
    caught = result["counts"].get("killed", 0) + result["counts"].get("timeout", 0) + len(outside)
    return {
        "tests": result["tests"],
        "mutants": result["mutants"],
        "counts": result["counts"],
        "seconds": result["seconds"],
        "equivalent": len(equivalent),
        "caught_share": round(caught / result["mutants"], 4),
        "caught_share_of_non_equivalent": round(caught / max(result["mutants"] - len(equivalent), 1), 4),
        "open": [survivor for survivor in survivors if not survivor["equivalent"] and "caught_by" not in survivor],
        "equivalent_mutants": equivalent,
        "caught_outside_mutmut": outside,
    }


def unmatched_entries(summary: dict) -> list[tuple[str, ...]]:
    """Entries of equivalent_mutants.toml, for the modules in ``summary``, that no stored survivor matches: lines
    the code no longer has, or mutants a test now kills. They are to be deleted, so the file stays a list of
    what is true."""
    seen = set()
    for module, result in summary["modules"].items():
        for survivor in stored_survivors(result):
            removed, added = changed_lines(survivor["diff"])
            seen |= {(module, added), (module, removed, added)}
    entries = {**EQUIVALENT, **CAUGHT_OUTSIDE_MUTMUT}
    return sorted(key for key in entries if key[0] in summary["modules"] and key not in seen)


DOCS_PAGE = REPO / "docs" / "testing.md"
TABLE_START = "<!-- mutation table: python tests/mutation_score.py -->"
TABLE_END = "<!-- end of mutation table -->"


def mutation_table(summary: dict) -> str:
    """docs/testing.md's table: one row per module, from results/mutation.json."""
    rows = [
        "| module | mutants | killed | timeout | survived | not run | equivalent | caught | of the non-equivalent |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for module, result in summary["modules"].items():
        counts = result["counts"]
        killed, timeout, survived = (counts.get(status, 0) for status in ("killed", "timeout", "survived"))
        rows.append(
            f"| `{module}` | {result['mutants']} | {killed} | {timeout} | {survived} "
            f"| {result['mutants'] - killed - timeout - survived} | {result['equivalent']} "
            f"| {result['caught_share']:.1%} | {result['caught_share_of_non_equivalent']:.1%} |"
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
    parser.add_argument(
        "--reclassify", action="store_true", help="only apply EQUIVALENT again to the stored survivors (no mutmut run)"
    )
    args = parser.parse_args(argv)
    if args.reclassify:
        summary = json.loads(RESULTS.read_text())
        for module, result in summary["modules"].items():
            summary["modules"][module] = reclassify(module, result)
        RESULTS.write_text(json.dumps(summary, indent=1) + "\n")
        write_docs_table(summary)
        return report_unmatched(summary)
    for module in args.module or list(MODULES):
        result = score_module(module, MODULES[module], args.workers)
        # Read again just before writing: another run may have written other modules meanwhile.
        summary = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        summary["command"] = "python tests/mutation_score.py"
        summary["modules"] = {**summary.get("modules", {}), module: result}
        summary["modules"] = {name: summary["modules"][name] for name in MODULES if name in summary["modules"]}
        print(
            f"{module}: {result['caught_share']:.1%} of {result['mutants']} caught "
            f"({result['caught_share_of_non_equivalent']:.1%} of the non-equivalent), {len(result['open'])} open",
            flush=True,
        )
        RESULTS.write_text(json.dumps(summary, indent=1) + "\n")  # after each module: a long run keeps its part
        write_docs_table(summary)
    return report_unmatched(summary)


def report_unmatched(summary: dict) -> int:
    """Print :func:`unmatched_entries`; 1 when there are any."""
    unmatched = unmatched_entries(summary)
    for entry in unmatched:
        print(f"{EQUIVALENTS_FILE.name} lists a mutant no survivor matches: {entry}", flush=True)
    return int(bool(unmatched))


if __name__ == "__main__":
    sys.exit(main())
