"""Synthetic MedMNIST-layout files, to exercise code paths where the official files cannot be had.

Synthetic files exist ONLY to test and demonstrate the code (loading, 2D/3D/multi-label shapes, training loops,
study plumbing) on machines without the official data. Their numbers mean nothing about medical imaging and must
never be reported as results. Each file has the official keys, dtypes and image shapes of its flag, and is listed
(``synthetic: true``, with its sha256) in a ``MANIFEST.json`` beside it, so :func:`stmedfm.data.verify` accepts it
as 'manifest' and never as an official file.

Images carry a deliberately easy class signal so a few training steps beat chance (a smoke test of learning):
each class has its own brightness and tint plus a bright square at a class-specific position; for multi-label
flags every positive class adds its square. Gaussian noise (sd 20) is added on top.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from stmedfm import data
from stmedfm.core import paths, registry
from stmedfm.core.errors import StmedfmError
from stmedfm.core.io import atomic_path
from stmedfm.core.registry import SPLITS, FlagInfo

DEFAULT_N = {"train": 64, "val": 16, "test": 32}
NOISE_SD = 20.0

__all__ = ["DEFAULT_N", "split_sizes", "make_arrays", "write_synthetic"]


def split_sizes(info: FlagInfo, n: int | dict | None = None, scale: float | None = None) -> dict[str, int]:
    """Samples per split: ``n`` (int or per-split dict), else ``scale`` x official sizes, else :data:`DEFAULT_N`.

    Every split gets at least ``n_classes`` samples so every class can appear in it.
    """
    if n is not None and scale is not None:
        raise StmedfmError("Give either n (samples per split) or scale (fraction of the official sizes), not both.")
    if scale is not None:
        if not float(scale) > 0:
            raise StmedfmError(f"scale must be positive (a fraction of the official split sizes), got {scale}.")
        sizes = {s: max(info.n_classes, round(float(scale) * info.n_samples[s])) for s in SPLITS}
    elif n is None:
        sizes = dict(DEFAULT_N)
    elif isinstance(n, dict):
        unknown = set(n) - set(SPLITS)
        if unknown:
            raise StmedfmError(f"Unknown split(s) {sorted(unknown)} in n; splits are {', '.join(SPLITS)}.")
        sizes = {s: int(n.get(s, DEFAULT_N[s])) for s in SPLITS}
    else:
        sizes = {s: int(n) for s in SPLITS}
    small = {s: v for s, v in sizes.items() if v < info.n_classes}
    if small:
        raise StmedfmError(
            f"{info.flag} has {info.n_classes} classes, so every split needs at least {info.n_classes} samples for each "
            f"class to appear; got {small}. Raise n."
        )
    return sizes


def _templates(info: FlagInfo, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (brightness + tint) images and per-class bright squares, float32, shaped like one stored image."""
    shape = info.image_shape(size)
    c = info.n_classes
    spatial = shape[:3] if info.dim == 3 else shape[:2]
    d = len(spatial)
    g = max(2, math.ceil(c ** (1.0 / d)))  # grid cells per axis
    cell = size // g
    squares = np.zeros((c, *spatial), dtype=np.float32)
    for k in range(c):
        pos = np.unravel_index(k, (g,) * d)
        sl = tuple(slice(p * cell + cell // 4, (p + 1) * cell - cell // 4) for p in pos)
        squares[(k, *sl)] = 90.0
    base = 50.0 + 80.0 * np.arange(c, dtype=np.float32) / max(c - 1, 1)
    bright = np.broadcast_to(base.reshape(c, *([1] * d)), (c, *spatial)).astype(np.float32)
    if len(shape) > d:  # RGB: a class-dependent tint per channel
        tint = 0.75 + 0.5 * np.mod(np.arange(c)[:, None] * 0.37 + np.arange(3)[None, :] / 3.0, 1.0)
        bright = bright[..., None] * tint.reshape(c, *([1] * d), 3).astype(np.float32)
        squares = np.repeat(squares[..., None], 3, axis=-1)
    return bright, squares


def make_arrays(info: FlagInfo, sizes: dict[str, int], size: int = 28, seed: int = 0) -> dict[str, np.ndarray]:
    """The six arrays of one synthetic file (official layout), deterministic in (flag, size, seed)."""
    rng = np.random.default_rng([int(seed), zlib.crc32(info.flag.encode()), int(size)])
    bright, squares = _templates(info, size)
    c = info.n_classes
    out: dict[str, np.ndarray] = {}
    for s in SPLITS:
        n = sizes[s]
        if info.multi_label:
            y = (rng.random((n, c)) < 0.15).astype(np.uint8)
            y[np.arange(n), np.arange(n) % c] = 1  # every class positive somewhere in the split
            y = y[rng.permutation(n)]
            x = 60.0 + (y.astype(np.float32) @ squares.reshape(c, -1)).reshape(n, *squares.shape[1:])
        else:
            cls = rng.permutation(np.arange(n) % c)  # round-robin, then shuffle: every class appears
            y = cls.astype(np.uint8).reshape(n, 1)
            x = bright[cls] + squares[cls]
        x += rng.standard_normal(x.shape, dtype=np.float32) * NOISE_SD
        out[f"{s}_images"] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        out[f"{s}_labels"] = y
    return out


def _write_atomic(target: Path, write) -> None:
    """Write through a temp file beside ``target``, then rename: readers never see half a file."""
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        write(fh)


def _merge_manifest(directory: Path, entries: list[dict]) -> None:
    """Add or replace (by name) entries of ``MANIFEST.json``, keeping everything else in it."""
    manifest = directory / paths.MANIFEST_NAME
    doc: dict = {}
    if manifest.exists():
        try:
            doc = json.loads(manifest.read_text())
        except (OSError, ValueError) as exc:
            raise StmedfmError(
                f"{manifest} exists but is not readable JSON ({exc}); fix or remove it, then write the synthetic files "
                f"again."
            ) from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("files", []), list):
            raise StmedfmError(f"{manifest} is not a manifest (an object with a 'files' list); fix or remove it.")
    files = list(doc.get("files", []))
    index = {e.get("name"): i for i, e in enumerate(files) if isinstance(e, dict)}
    for e in entries:
        if e["name"] in index:
            files[index[e["name"]]] = e
        else:
            index[e["name"]] = len(files)
            files.append(e)
    doc["files"] = files
    doc.setdefault(
        "synthetic_note",
        "Entries with synthetic: true are generated test files (stmedfm.data.synthetic); never report them as results.",
    )
    text = json.dumps(doc, indent=2) + "\n"
    _write_atomic(manifest, lambda fh: fh.write(text.encode()))


def write_synthetic(
    directory: str | os.PathLike,
    flags,
    n: int | dict | None = None,
    size: int = 28,
    seed: int = 0,
    scale: float | None = None,
) -> dict[str, Path]:
    """Write ``{flag}.npz`` (``{flag}_{size}.npz`` for size > 28) per flag into ``directory``, listed in MANIFEST.json.

    Split sizes: ``n`` (int per split or dict split -> int), else ``scale`` x the official sizes, else 64/16/32.
    Refuses to overwrite an official file (one whose MD5 is the official one). Returns {flag: path}.
    """
    directory = Path(directory).expanduser()
    if isinstance(flags, str):
        flags = [flags]
    infos = [registry.get(f) for f in flags]
    registry.check_size(size)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StmedfmError(f"Cannot create {directory} ({exc.strerror or exc}); choose a writable directory.") from exc
    out: dict[str, Path] = {}
    entries: list[dict] = []
    for info in infos:
        target = directory / info.filename(size)
        if target.is_file() and data.file_digests(target, ("md5",))["md5"] == info.md5.get(size):
            raise StmedfmError(
                f"{target} is the official {info.flag} file; refusing to overwrite it with synthetic data. Write the "
                f"synthetic files into another directory."
            )
        sizes = split_sizes(info, n, scale)
        arrays = make_arrays(info, sizes, size, seed)
        _write_atomic(target, lambda fh: np.savez_compressed(fh, **arrays))
        digests = data.file_digests(target, ("sha256", "md5"))
        entries.append(
            {
                "name": target.name,
                "flag": info.flag,
                "sha256": digests["sha256"],
                "md5": digests["md5"],
                "bytes": target.stat().st_size,
                "n_samples": sizes,
                "size": size,
                "seed": seed,
                "synthetic": True,
            }
        )
        out[info.flag] = target
    _merge_manifest(directory, entries)
    return out


def write_synthetic_streaming(directory: str | os.PathLike, flag: str, size: int = 28, scale: float = 1.0,
                              seed: int = 0, block: int = 256) -> Path:
    """Write a synthetic ``{flag}_{size}.npz`` of ``scale`` x the official split sizes without ever holding it in
    memory (MedMNIST+ ``pathmnist_224`` is about 16 GB): an uncompressed archive whose ``.npy`` members are
    streamed in chunks; the images of each split repeat one generated block of ``block`` images (cost and memory
    depend only on shapes and sizes). Listed in MANIFEST.json like :func:`write_synthetic`'s files, and, as
    those, never to be reported as results. Refuses to overwrite a file not listed there as synthetic.
    """
    directory = Path(directory).expanduser()
    info = registry.get(flag)
    registry.check_size(size)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / info.filename(size)
    if target.is_file():
        entry = data.manifest_entry(target)
        if not (entry and entry.get("synthetic")):
            raise StmedfmError(f"{target} exists and is not a synthetic file listed in {paths.MANIFEST_NAME}; "
                               f"refusing to overwrite it. Write the synthetic files into another directory.")
    sizes = split_sizes(info, scale=scale)
    blocks = make_arrays(info, {s: max(info.n_classes, min(block, sizes[s])) for s in SPLITS}, size, seed)
    shape = info.image_shape(size)
    with atomic_path(target) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for s in SPLITS:
                n, imgs = sizes[s], blocks[f"{s}_images"]
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                          "shape": (n, *shape)}
                with zf.open(f"{s}_images.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array_header_2_0(fh, header)
                    for start in range(0, n, len(imgs)):
                        fh.write(imgs[: min(len(imgs), n - start)].tobytes())
                labels = np.resize(blocks[f"{s}_labels"], (n, *blocks[f"{s}_labels"].shape[1:]))
                with zf.open(f"{s}_labels.npy", "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.ascontiguousarray(labels), allow_pickle=False)
    digests = data.file_digests(target, ("sha256", "md5"))
    _merge_manifest(directory, [{"name": target.name, "flag": info.flag, "sha256": digests["sha256"],
                                 "md5": digests["md5"], "bytes": target.stat().st_size, "n_samples": sizes,
                                 "size": size, "seed": seed, "synthetic": True, "streamed": True}])
    return target
