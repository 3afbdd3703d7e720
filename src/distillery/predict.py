"""Classify image files with a logged model: python -m distillery.predict --model URI IMAGE_OR_FOLDER...

URI: anything mlflow.pyfunc.load_model takes (models:/distillery-soft@current, models:/<model id> of a
final run's logged model, or a local folder). Images of any size and mode (gray, RGB, RGBA, palette, 16-bit)
are converted the way prepare stores them; folders are read recursively. Prints one line per image:
the top classes with their probabilities.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .core.errors import DistilleryError
from .data import IMAGE_SUFFIXES


class PredictError(DistilleryError):
    pass


def image_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise PredictError(f"{raw}: no such file or folder")
    if not files:
        raise PredictError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(paths)}")
    return files


def load(uri: str):
    import logging

    import mlflow.pyfunc

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    try:
        model = mlflow.pyfunc.load_model(uri)
    except Exception as exc:  # any store or format failure: one line naming the URI
        raise PredictError(f"could not load model '{uri}': {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") \
            from None
    card = (model.metadata.metadata or {}) if model.metadata else {}
    if "classes" not in card or "input_size" not in card:
        raise PredictError(f"'{uri}' is not a distillery model (its metadata has no classes and input_size)")
    return model, card


def read_images(files: list[Path], channels: int, size: int) -> tuple[np.ndarray, list[Path], list[str]]:
    from PIL import Image, UnidentifiedImageError

    from .data.datasets import image_as_input

    arrays, kept, skipped = [], [], []
    for path in files:
        try:
            with Image.open(path) as im:
                arrays.append(image_as_input(im, channels, size))
            kept.append(path)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            skipped.append(f"{path}: unreadable ({type(exc).__name__})")
    return (np.stack(arrays) if arrays else np.zeros((0, channels, size, size), np.uint8)), kept, skipped


def format_line(path: Path, probs: np.ndarray, classes: list[str], top: int) -> str:
    order = np.argsort(-probs, kind="stable")[:top]
    return f"{path}\t" + "  ".join(f"{classes[i]} {probs[i]:.3f}" for i in order)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distillery.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True,
                        help="models:/<name>@<alias>, models:/<model id> (a final run's logged model) or a folder")
    parser.add_argument("--top", type=int, default=3, help="classes shown per image (default 3)")
    parser.add_argument("images", nargs="+", help="image files or folders")
    args = parser.parse_args(argv)
    try:
        files = image_files(args.images)
        model, card = load(args.model)
        x, kept, skipped = read_images(files, int(card["channels"]), int(card["input_size"]))
        probs = np.asarray(model.predict(x)) if len(x) else np.zeros((0, len(card["classes"])))
    except DistilleryError as exc:
        print(f"distillery.predict: {exc}", file=sys.stderr)
        return 2
    for path, p in zip(kept, probs):
        print(format_line(path, p, card["classes"], max(args.top, 1)))
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
