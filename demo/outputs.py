"""What a request writes: its folder, the downloads, and old folders pruned (downloads are short-lived)."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pmp.visualize import label_map_png, mask_png, result_summary, slug


def write_downloads(
    folder: Path,
    labels: list[str],
    results: dict[str, Any],
    picked: dict[str, list[np.ndarray]],
    settings: dict[str, Any],
) -> list[Path]:
    """Label maps (8-bit PNG, 255 = none), a zip of per-prompt masks (each model's ``picked`` proposal per
    prompt, and the prompt's region of its label map), and a JSON of all scores."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, result in results.items():
        path = folder / f"{name}_labels.png"
        label_map_png(np.asarray(result.semantic), len(labels)).save(path)
        files.append(path)
    zip_path = folder / "masks.zip"
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, result in results.items():
            semantic = np.asarray(result.semantic)
            for k, label in enumerate(labels):
                stem = f"{k:02d}_{slug(label)}"
                for kind, mask in (("picked", picked[name][k]), ("region", semantic == k)):
                    buffer = _png_bytes(mask_png(mask))
                    archive.writestr(f"{name}/{kind}_{stem}.png", buffer)
    files.append(zip_path)
    summary: dict[str, Any] = {"prompts": labels, "settings": settings, "label_map_no_label_value": 255}
    for name, result in results.items():
        entry = result_summary(result)
        entry["scores"] = {
            "p": np.round(np.asarray(result.p, dtype=np.float64), 5).tolist(),
            "p_hat": np.round(np.asarray(result.p_hat, dtype=np.float64), 5).tolist(),
            "p_out": np.round(np.asarray(result.p_out, dtype=np.float64), 5).tolist(),
        }
        summary[name] = entry
    json_path = folder / "scores.json"
    json_path.write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    files.append(json_path)
    return files


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def prune_outputs(root: Path, max_age_s: float) -> None:
    """Delete request folders under ``root`` older than ``max_age_s`` (downloads are short-lived)."""
    cutoff = time.time() - max_age_s
    for folder in root.glob("request-*"):
        try:
            if folder.is_dir() and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # another request removed it first
            continue


def request_folder(max_age_s: float, output_root: str | Path | None) -> Path:
    """A fresh ``request-*`` folder under ``output_root`` (default: the system temp dir); old ones pruned."""
    root = Path(output_root) if output_root is not None else Path(tempfile.gettempdir()) / "pmp-demo"
    root.mkdir(parents=True, exist_ok=True)
    prune_outputs(root, max_age_s)
    return Path(tempfile.mkdtemp(prefix="request-", dir=root))
