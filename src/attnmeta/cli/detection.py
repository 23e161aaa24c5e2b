"""``attnmeta eval`` of detection runs, and ``attnmeta detect``: boxes of the support classes in images."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from attnmeta.errors import UserError


def eval_detection(args: argparse.Namespace, trained: Any) -> int:
    """``attnmeta eval`` of a detection run: mAP@0.5 and mAP@[.5:.95] with 95% CIs on fixed episodes."""
    from attnmeta.train.detection_run import evaluate_detection_run

    refused = ["--rotation-ensemble"] * bool(args.rotation_ensemble)
    refused += ["--transductive"] * bool(getattr(args, "transductive", None))
    refused += ["--oos"] * bool(getattr(args, "oos", False))
    if refused:
        raise UserError(f"{', '.join(refused)} do not apply to detection runs; use --ways, --shots, "
                        "--queries (scenes), --episodes and --seed")
    keys = ("ways", "shots", "queries", "root", "device")
    changes = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    report = evaluate_detection_run(args.run_dir, trained, checkpoint=args.checkpoint,
                                    episodes=100 if args.episodes is None else args.episodes, seed=args.seed,
                                    changes=changes, quiet=args.quiet)
    print(report.table())
    print(f"\ncheckpoint {report.checkpoint} (step {report.step}); per-episode results in {report.path}")
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    """``attnmeta detect RUN --support DIR --images DIR --out DIR``: ``detections.json`` and one PNG per image
    with its boxes drawn (``<image file name>.png``)."""
    from attnmeta.detector import FewShotDetector
    from attnmeta.predictor import load
    from attnmeta.predictor_inputs import read_query_folder, read_support_folder

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {str(out)!r} exists and is not an empty folder; name a new or empty folder "
                        "(nothing there is overwritten)")
    detector = load(args.run_dir, imports=args.imports or [], score_threshold=args.score_threshold,
                    max_detections=args.max_detections)
    if not isinstance(detector, FewShotDetector):
        raise UserError(f"{args.run_dir!r} is not a detection run; use `attnmeta predict` for classification")
    support, labels = read_support_folder(args.support)
    images, files = read_query_folder(args.images, "--images")
    found = detector.fit(support, labels).detect(images)
    out.mkdir(parents=True, exist_ok=True)
    record = {file.name: [{"label": label, "score": round(score, 4), "box": [round(v, 1) for v in box]}
                          for label, score, box in boxes] for file, boxes in zip(files, found)}
    for file, image, boxes in zip(files, images, found):  # a.png -> a.png.png, a.jpg -> a.jpg.png
        draw_boxes(image, boxes).save(out / f"{file.name}.png")
    (out / "detections.json").write_text(json.dumps(record, indent=2))
    total = sum(len(b) for b in found)
    print(f"{total} boxes in {len(files)} images (score >= {args.score_threshold}); "
          f"{out / 'detections.json'} and one PNG per image in {out}")
    return 0


COLOURS = ((230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40))


def draw_boxes(image: Any, boxes: Sequence[tuple[Any, float, tuple[float, ...]]]) -> Any:
    """An RGB copy of ``image`` (PIL) with each ``(label, score, box)`` drawn and captioned."""
    from PIL import ImageDraw

    canvas = image.convert("RGB")
    scale = max(1, 256 // max(1, min(canvas.size)))  # small images are enlarged so captions stay legible
    if scale > 1:
        canvas = canvas.resize((canvas.size[0] * scale, canvas.size[1] * scale))
    draw = ImageDraw.Draw(canvas)
    names = sorted({str(label) for label, _, _ in boxes})
    for label, score, box in boxes:
        colour = COLOURS[names.index(str(label)) % len(COLOURS)]
        x0, y0, x1, y1 = (v * scale for v in box)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=2)
        draw.text((x0 + 2, max(0, y0 - 11)), f"{label} {score:.2f}", fill=colour)
    return canvas
