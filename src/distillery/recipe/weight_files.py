"""Reading weight files without running code from them; every failure is one line naming the file.

Weights come from users (a checkpoint to fine-tune from, a download): `torch.load(weights_only=True)`
or safetensors, never a full unpickle, so a file cannot execute anything when it is read.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ..core.errors import ConfigError

_MAX_DETAIL = 160


def one_line(exc: BaseException | str) -> str:
    """The first non-empty line of an error message, shortened: user errors here are one line."""
    text = str(exc)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "") or type(exc).__name__
    line = re.sub(r"\s+", " ", line.replace("\x1b[1m", "").replace("\x1b[0m", ""))
    if len(line) > _MAX_DETAIL and ". " in line:  # torch appends advice sentences: keep the first one
        line = line[: line.index(". ")]
    return line if len(line) <= _MAX_DETAIL else line[: _MAX_DETAIL - 3] + "..."


def file_label(path: Path, what: str | None) -> str:
    return f"{what}='{path}'" if what else f"checkpoint '{path}'"


_RESAVE = ("distillery loads weights only (tensors, numbers, strings), never pickled objects; "
           "re-save it with torch.save(model.state_dict(), path) or as .safetensors")


def read_weights(path: Path, what: str | None = None, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict stored in a weight file, read without running any code from it.

    `.safetensors` files (or files that look like one) go through safetensors; everything else
    through `torch.load(weights_only=True)`, which refuses any pickled Python object. Every
    failure is a one-line ConfigError naming the file (and `what`, the params key, if given).
    """
    path = Path(path)
    label = file_label(path, what)
    if not path.exists():
        raise ConfigError(f"{label} does not exist")
    if path.is_dir():
        raise ConfigError(f"{label} is a directory, not a checkpoint file")
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ConfigError(f"{label} cannot be read ({one_line(exc)})") from None
    if size == 0:
        raise ConfigError(f"{label} is empty (0 bytes); the download or save did not finish, write it again")
    if path.suffix == ".safetensors" or head[8:9] == b"{":
        blob = _read_safetensors(path, label, map_location)
    else:
        blob = _read_torch(path, label, head, map_location)
    if not isinstance(blob, dict):
        raise ConfigError(f"{label} holds a {type(blob).__name__}, not a dict of tensors (a state dict); "
                          "save one with torch.save(model.state_dict(), path)")
    return blob


def _read_safetensors(path: Path, label: str, map_location: str | torch.device) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        detail = one_line(exc)
        if any(s in detail for s in ("incomplete metadata", "not fully covered", "header too small")):
            raise ConfigError(f"{label} is truncated or damaged ({detail}); download or save it again") from None
        raise ConfigError(f"{label} is not a valid safetensors file ({detail})") from None


def _read_torch(path: Path, label: str, head: bytes, map_location: str | torch.device) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*pickle protocol.*")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file; all mean "this file cannot be used"
        text = str(exc)
        blocked = re.search(r"GLOBAL ([\w.]+)", text)
        if isinstance(exc, pickle.UnpicklingError) and blocked:
            raise ConfigError(f"{label} holds pickled Python objects ({blocked.group(1)}); {_RESAVE}") from None
        zipped = head.startswith(b"PK\x03\x04")
        pickled = head[:1] == b"\x80"
        if isinstance(exc, EOFError) or "unexpected EOF" in text or (zipped and isinstance(exc, (OSError, RuntimeError))):
            detail = "" if isinstance(exc, pickle.UnpicklingError) else f" ({one_line(exc)})"
            raise ConfigError(f"{label} is truncated or damaged{detail}; download or save it again") from None
        if isinstance(exc, pickle.UnpicklingError) or not (zipped or pickled):
            raise ConfigError(f"{label} is not a PyTorch or safetensors checkpoint (corrupt or another format); "
                              "expected a state dict saved with torch.save or a .safetensors file") from None
        raise ConfigError(f"{label} cannot be loaded as weights ({type(exc).__name__}: {one_line(exc)})") from None
