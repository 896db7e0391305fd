"""How an evaluation's result is written: strict JSON (undefined values as null) and the per-class table."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def to_json(result: dict[str, Any]) -> str:
    """Strict JSON: NaN (undefined metrics) becomes null."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, list):
            return [clean(item) for item in value]
        return value

    return json.dumps(clean(result), indent=2, allow_nan=False)


def format_table(result: dict[str, Any]) -> str:
    """Per-class IoU sorted best first (classes without ground truth last), then the summary, in %."""

    def pct(value: float) -> str:
        return "   n/a" if value is None or math.isnan(value) else f"{100 * value:6.2f}"

    seen = set(result["seen_classes"])
    rows = sorted(result["per_class"].items(), key=lambda item: (math.isnan(item[1]), -np.nan_to_num(item[1], nan=0.0)))
    width = max((len(name) for name, _ in rows), default=5)
    lines = [f"{'class':<{width}}  IoU %   seen", "-" * (width + 15)]
    lines += [f"{name:<{width}}  {pct(iou)}  {'yes' if name in seen else 'no'}" for name, iou in rows]
    lines += [
        "",
        "summary (%)",
        f"benchmark          {result['benchmark']} ({result['num_classes']} classes, {result['num_images']} images, "
        f"{result['seconds']:.1f} s)"
        + (f"; {result['num_skipped']} skipped (files that could not be used)" if result.get("num_skipped") else ""),
        f"protocol           {result['options'].get('protocol', '-')}, CLIP weight "
        f"{result['options'].get('clip_weight', 'the checkpoint' + chr(39) + 's')}",
        f"mIoU               {pct(result['miou'])}",
        f"mIoU seen          {pct(result['miou_seen'])}",
        f"mIoU unseen        {pct(result['miou_unseen'])}",
        f"pixel accuracy     {pct(result['pixel_accuracy'])}",
        f"proposal recall    {pct(result['proposal_recall'])}  (mean best IoU; "
        f"@0.5 {pct(result['proposal_recall@0.5']).strip()}, @0.75 {pct(result['proposal_recall@0.75']).strip()})",
    ]
    for row in result.get("clip_weight_sweep", []):
        lines.append(
            f"clip weight {row['clip_weight']:.2f}   mIoU {pct(row['miou'])}  seen {pct(row['miou_seen'])}  "
            f"unseen {pct(row['miou_unseen'])}"
        )
    for row in result.get("split_weight_sweep", []):
        lines.append(
            f"clip weights {row['clip_weight']:.2f} / {row['clip_weight_unseen']:.2f} (training names / others)   "
            f"mIoU {pct(row['miou'])}  seen {pct(row['miou_seen'])}  unseen {pct(row['miou_unseen'])}"
        )
    return "\n".join(lines)
