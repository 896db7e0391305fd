"""Command line: ``pmp segment IMAGE_OR_FOLDER --prompts "..." --out DIR`` (or ``python -m pmp ...``).

Per image it writes the overlay PNG, the label-map PNG, one PNG mask per label and a JSON of labels,
selected proposals and scores (see :func:`pmp.visualize.save_outputs`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from pmp.allocator import retain_freed_memory
from pmp.images import IMAGE_SUFFIXES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pmp", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    segment = commands.add_parser("segment", help="segment an image or every image in a folder")
    segment.add_argument("input", type=Path, help="an image file or a folder of images")
    segment.add_argument("--prompts", required=True, help="class names separated by commas/semicolons, or a caption")
    segment.add_argument(
        "--checkpoint",
        default=None,
        help="bundled name (pmp, baseline), local folder or Hub repo id; default: bundled pmp",
    )
    segment.add_argument("--out", type=Path, required=True, help="output folder")
    segment.add_argument(
        "--stage2", choices=("pool", "crop"), default=None, help="stage-2 mode (default: the checkpoint's)"
    )
    segment.add_argument(
        "--clip-weight",
        type=float,
        default=None,
        help="Eq. 3: exponent w of CLIP's p_hat in p_out = p^(1-w) * p_hat^w (default: the checkpoint's, 0.65)",
    )
    segment.add_argument("--mask-threshold", type=float, default=None)
    segment.add_argument(
        "--flip-test",
        action="store_true",
        help="also segment each image mirrored left to right and add its class maps to the label map (twice the time)",
    )
    segment.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return parser


def list_images(path: Path) -> list[Path]:
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(f"{path}: no images found (accepted suffixes: {', '.join(IMAGE_SUFFIXES)})")
        return images
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such image or folder")
    return [path]


def check_output_folder(folder: Path) -> None:
    """Create ``folder`` if needed and check that files can be written in it; ValueError saying why not."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {folder}: exists and is not a folder; name a folder (it is created if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"--out {folder}: cannot write there ({error.strerror or error})") from None


def output_stems(images: list[Path]) -> dict[Path, str]:
    """The name each input's outputs start with: its stem, or stem + suffix where stems collide
    (``a.png`` and ``a.jpg`` -> ``a_png`` and ``a_jpg``), so no input overwrites another's results."""
    counts: dict[str, int] = {}
    for path in images:
        counts[path.stem] = counts.get(path.stem, 0) + 1
    stems: dict[Path, str] = {}
    taken: set[str] = set()
    for path in images:
        stem = path.stem if counts[path.stem] == 1 else f"{path.stem}_{path.suffix.lstrip('.').lower()}"
        candidate, number = stem, 1
        while candidate in taken:  # e.g. "a.PNG" and "a.png"
            number += 1
            candidate = f"{stem}_{number}"
        taken.add(candidate)
        stems[path] = candidate
    return stems


def run_segment(args: argparse.Namespace) -> int:
    # Imported here: torch and the models load only to segment, so that `pmp --help` answers at once.
    import torch
    from tqdm import tqdm

    from pmp.images import load_image  # here: see above
    from pmp.segmenter import Segmenter  # here: see above
    from pmp.visualize import save_outputs  # here: see above

    images = list_images(args.input)
    check_output_folder(args.out)  # before the model is loaded: a bad --out costs nothing
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    segmenter = Segmenter.from_pretrained(args.checkpoint, device=device)
    failures = 0
    stems = output_stems(images)
    for path in tqdm(images, desc="segment", unit="image", disable=len(images) == 1 or not sys.stderr.isatty()):
        try:
            image = load_image(path)
            result = segmenter(
                image,
                args.prompts,
                clip_weight=args.clip_weight,
                stage2_mode=args.stage2,
                mask_threshold=args.mask_threshold,
                flip_test=args.flip_test,
            )
        except ValueError as error:  # bad image or prompts: report and go on with the folder
            print(f"{path}: {error}", file=sys.stderr)
            failures += 1
            continue
        try:
            save_outputs(result, image, args.out, stems[path])
        except OSError as error:  # e.g. a name too long for the file system once suffixes are added
            print(f"{path}: its results could not be written to {args.out}: {error.strerror or error}", file=sys.stderr)
            failures += 1
    print(f"wrote results for {len(images) - failures} of {len(images)} image(s) to {args.out}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    retain_freed_memory()  # stage 2's crop tower reuses its activations' memory (pmp.allocator)
    try:
        if args.command == "segment":
            return run_segment(args)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
