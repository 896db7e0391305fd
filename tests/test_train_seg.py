"""Segmentation training: learns, resumes exactly, stops on NaN, survives a killed checkpoint write, runs DDP."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import tiny_segmenter_config

from train.configs import SegTrainConfig
from train.losses import SetCriterion
from train.runtime import NonFiniteLossError, checkpoint_problem, latest_valid_checkpoint, list_checkpoints
from train.train_segmenter import ResumeError, train

ROOT = Path(__file__).resolve().parent.parent


def tiny_train_config(text_mode: str = "pmp", **overrides) -> SegTrainConfig:
    model = tiny_segmenter_config(text_mode)
    settings = dict(
        model=model,
        crop_size=64,
        batch_size=2,
        steps=6,
        lr=1e-3,
        warmup_steps=1,
        clip_grad_norm=1.0,
        checkpoint_every=3,
        log_every=1,
        eval_limit=0,
        seed=3,
    )
    settings.update(overrides)
    return SegTrainConfig(**settings)


def losses(out_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    config = tiny_train_config(steps=30, lr=3e-3, checkpoint_every=30)
    train(config, tmp_path)
    history = losses(tmp_path)
    assert len(history) == 30
    first, last = sum(history[:5]) / 5, sum(history[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    from pmp.segmenter import Segmenter

    saved = Segmenter.from_pretrained(tmp_path / "model").config
    assert saved.decoder.text_mode == "pmp"
    from train.world.vocabulary import SEEN_NAMES

    assert saved.training_names == SEEN_NAMES  # what the world's sampler labels, for Eq. 3's second weight
    assert (tmp_path / "loss.png").is_file()


def test_nan_stops_training_and_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    config = tiny_train_config()
    train(config, tmp_path / "straight")
    reference = losses(tmp_path / "straight")

    interrupted = tmp_path / "interrupted"
    real_total = SetCriterion.total_loss
    calls = []

    def nan_at_step_4(self, losses):
        calls.append(1)
        total = real_total(self, losses)
        return total * float("nan") if len(calls) == 5 else total  # the fifth step is step 4

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SetCriterion, "total_loss", nan_at_step_4)
        with pytest.raises(NonFiniteLossError, match="non-finite loss at step 4"):
            train(config, interrupted)
    # The NaN step saved nothing: the step-3 checkpoint is the newest and it is intact.
    assert [step for step, _ in list_checkpoints(interrupted / "checkpoints")] == [3]
    assert latest_valid_checkpoint(interrupted / "checkpoints").name == "step-00000003.safetensors"

    train(config, interrupted)  # resumes from step 3
    assert losses(interrupted) == pytest.approx(reference, rel=1e-4, abs=1e-5)


def test_a_checkpoint_killed_mid_write_is_not_chosen(tmp_path: Path) -> None:
    config = tiny_train_config(steps=3, checkpoint_every=3)
    train(config, tmp_path)
    folder = tmp_path / "checkpoints"
    good = latest_valid_checkpoint(folder)
    # A later step whose write was killed: half of the bytes, under the final name.
    broken = folder / "step-00000006.safetensors"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (folder / ".tmp-abc.safetensors").write_bytes(b"partial")
    assert latest_valid_checkpoint(folder) == good


@pytest.mark.slow
def test_two_process_gloo_run_agrees_on_weights(tmp_path: Path) -> None:
    config = tiny_train_config(steps=2, checkpoint_every=2)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "train.train_segmenter",
        "--config",
        str(config_path),
        "--out",
        str(tmp_path / "run"),
    ]
    completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert final["ranks_agree"] is True
    assert len(losses(tmp_path / "run")) == 2


def test_config_round_trips_through_json() -> None:
    config = tiny_train_config(text_mode="concat_drop")
    again = SegTrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert dataclasses.asdict(again.model.decoder)["text_mode"] == "concat_drop"


def test_prompt_scheme_keeps_present_classes_and_shuffles() -> None:
    import numpy as np

    from train.batches import sample_prompt_ids

    rng = np.random.default_rng(0)
    present = np.array([2, 5, 7])
    seen_orders = set()
    for _ in range(50):
        prompts = sample_prompt_ids(present, 15, 0.5, rng)
        assert set(present) <= set(prompts.tolist()) and len(set(prompts.tolist())) == len(prompts)
        seen_orders.add(tuple(prompts[np.isin(prompts, present)].tolist()))
    assert len(seen_orders) > 1  # positions carry no information
    dropped = [sample_prompt_ids(present, 15, 0.0, rng, present_prob=0.5) for _ in range(50)]
    assert all(1 <= len(p) <= 3 and set(p.tolist()) <= set(present.tolist()) for p in dropped)
    assert any(len(p) < 3 for p in dropped)


def test_model_cards_record_no_path_of_the_training_machine(tmp_path) -> None:
    from train.train_segmenter import portable_arguments

    inside = tmp_path / "runs" / "pmp"
    argv = ["--out", str(inside), "--init-clip", "/somewhere/else/tiny-clip", "--steps", "10", "relative/dir"]
    assert portable_arguments(argv, root=tmp_path) == [
        "--out",
        "runs/pmp",
        "--init-clip",
        "<...>/tiny-clip",
        "--steps",
        "10",
        "relative/dir",
    ]


def test_no_committed_text_file_holds_an_absolute_path_of_a_machine() -> None:
    import re
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r"(?<![\w.])/(?:work|root|home|Users|tmp)/[\w.-]+/")
    offenders = []
    for name in files:
        path = root / name
        if (
            path.suffix not in {".py", ".md", ".json", ".txt", ".toml", ".ini", ".cfg", ".yml", ".yaml"}
            or not path.is_file()
        ):
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if (
                pattern.search(line)
                and "test_no_committed_text_file" not in line
                and "pattern = re.compile" not in line
            ):
                offenders.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not offenders, "\n".join(offenders)


# ------------------------------------------------------------------------ divergence, corruption, resume
def test_divergence_stops_with_the_step_and_never_saves_or_resumes_broken_weights(tmp_path: Path) -> None:
    """lr 1e9 without clipping: the weights blow up, the predictions go NaN. Training must stop with
    one message naming the step, before the matcher sees NaN, and keep only finite checkpoints."""
    config = tiny_train_config(lr=1e9, clip_grad_norm=0.0, steps=8, checkpoint_every=1, warmup_steps=0)
    with pytest.raises(NonFiniteLossError, match=r"non-finite (predictions|loss|weights) at step \d+"):
        train(config, tmp_path)
    for _, path in list_checkpoints(tmp_path / "checkpoints"):
        assert checkpoint_problem(path) is None, path  # whatever was saved is finite and intact
    with pytest.raises(NonFiniteLossError):  # resuming runs into the divergence again, with the same clear stop
        train(config, tmp_path)


def test_a_checkpoint_with_a_nan_weight_or_a_flipped_bit_is_not_resumed_from(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    config = tiny_train_config(steps=3, checkpoint_every=3)
    train(config, tmp_path)
    path = latest_valid_checkpoint(tmp_path / "checkpoints")
    original = path.read_bytes()
    flipped = bytearray(original)
    flipped[-100] ^= 0x10  # inside the tensor data, past the header
    path.write_bytes(bytes(flipped))
    assert "do not match the checksum" in checkpoint_problem(path)
    path.write_bytes(original)
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.startswith("model.") and tensors[k].is_floating_point())
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, str(path), metadata={"complete": "1", "step": "3"})
    from train.runtime import file_sha256

    path.with_name(path.name + ".sha256").write_text(file_sha256(path))  # a valid checksum of NaN weights
    assert "holds NaN or inf" in checkpoint_problem(path)
    assert latest_valid_checkpoint(tmp_path / "checkpoints") is None


def test_a_run_without_any_valid_checkpoint_is_not_restarted_silently(tmp_path: Path) -> None:
    config = tiny_train_config(steps=3, checkpoint_every=3)
    train(config, tmp_path)
    rows = losses(tmp_path)
    for _, path in list_checkpoints(tmp_path / "checkpoints"):
        path.write_bytes(path.read_bytes()[:100])  # every checkpoint damaged
    killed = tmp_path / "checkpoints" / ".step-00000006.safetensors.abc123.tmp"
    killed.write_bytes(b"partial")
    with pytest.raises(ResumeError, match="no valid checkpoint to resume from .*pass --restart"):
        train(config, tmp_path)
    assert losses(tmp_path) == rows  # nothing appended
    assert not killed.exists()  # the killed save's temporary file is gone
    train(config, tmp_path, restart=True)
    assert len(losses(tmp_path)) == len(rows)  # rows of the old run dropped, not duplicated
    assert [step for step, _ in list_checkpoints(tmp_path / "checkpoints")] == [3]


def test_resuming_with_another_config_says_what_differs(tmp_path: Path) -> None:
    train(tiny_train_config(steps=3, checkpoint_every=3), tmp_path)
    with pytest.raises(ResumeError, match=r"lr: 0\.001 -> 0\.002"):
        train(tiny_train_config(steps=6, checkpoint_every=3, lr=2e-3), tmp_path)
    train(tiny_train_config(steps=6, checkpoint_every=3), tmp_path)  # only a longer schedule: resumes
    stage2 = tiny_train_config(steps=9, checkpoint_every=3)
    stage2 = dataclasses.replace(stage2, model=dataclasses.replace(stage2.model, crop_views=("masked", "box")))
    train(stage2, tmp_path)  # stage 2 never enters a training step: resumes
    assert [
        r["step"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    ] == list(range(1, 10))


def test_the_world_step_profile_times_every_phase_of_a_real_step() -> None:
    from benchmarks.world_step_profile import PHASES, profile

    result = profile("world-pmp", steps=1, batch_size=2)
    assert set(result["phases_s"]) == set(PHASES) and all(v > 0 for v in result["phases_s"].values())


def test_readme_speed_rows_are_the_measured_bundled_latency() -> None:
    import json
    from pathlib import Path

    from benchmarks.latency import readme_rows

    root = Path(__file__).resolve().parent.parent
    measured = json.loads((root / "results" / "latency_bundled.json").read_text())
    assert measured["models"]["bundled"]["note"] == "baseline: checkpoints/baseline; pmp: checkpoints/pmp"
    assert readme_rows(measured) in (root / "docs" / "speed.md").read_text()
