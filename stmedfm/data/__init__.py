"""Find, verify, load and augment MedMNIST data: the one module between ``.npz`` files and tensors.

Files are trusted only after a checksum: the official MD5 from the registry, or, for derived / subset / synthetic files, a ``MANIFEST.json`` beside the
file listing its sha256. Successful checks are remembered per (path, inode, size, mtime, ctime) so hashing happens
once and a file replaced by another one (even of the same size and mtime) is hashed again.

A verified file has an identity (:class:`FileIdentity`): the official MD5 it matched, or the sha256 its manifest
lists, and whether that manifest calls it synthetic. Run identities and provenance are built from it.

Memory does not grow with the file (MedMNIST+ ``pathmnist_224`` is about 16 GB of uint8): each array of a
verified file is extracted once into an uncompressed ``.npy`` in ``paths.cache_dir()/arrays/`` (keyed by the
file's absolute path, inode, size, mtime and ctime, as its verification is, with a ``source.json`` recording them, written last, so a half-written cache
is never used and a changed file gets a new one) and memory-mapped read-only. Every process maps the same files,
so the images live once, in the page cache, however many workers read them. A split's ``images`` are
tensor *views* of the mapping (no copy, not even for the grayscale -> 3 channel repeat, which is a stride-0
view); training gathers the rows of a batch by index and evaluation converts one batch at a time, so only
batches are ever materialised, and the values are the very ones the former in-memory loader gave (tested).
Mapped pages a process has read count in its RSS until dropped; :func:`touched` drops them (``madvise``) after
every :data:`RELEASE_BYTES` read, so a worker's resident share of the data stays bounded too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import mmap
import os
import shutil
import warnings
import weakref
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from stmedfm.core import paths, registry
from stmedfm.core.errors import StmedfmError
from stmedfm.core.io import atomic_write_text
from stmedfm.core.registry import SPLITS, FlagInfo

CHUNK = 1 << 20  # hash and copy in 1 MiB chunks
VERIFIED_CACHE = "verified.json"
ARRAY_CACHE = "arrays"  #: under paths.cache_dir(): one directory of .npy files per verified file
ARRAY_SOURCE = "source.json"
RELEASE_BYTES = 256 << 20  #: mapped bytes a process reads between drops of its mapped pages (see touched)

__all__ = [
    "Split",
    "TaskData",
    "locate",
    "verify",
    "status",
    "status_table",
    "load_task",
    "to_float",
    "random_flip",
    "kshot_indices",
    "stratified_fraction_indices",
    "class_weights",
    "file_digests",
    "FileIdentity",
    "identify",
    "manifest_entry",
    "release_cache",
]


# --------------------------------------------------------------------------------------------------- containers


@dataclass
class Split:
    """One split.

    ``images`` is uint8 (a read-only view of the memory-mapped cache for loaded files: never write into it), (N, 3, S, S) for 2D (grayscale files repeat their channel to 3, as medmnist's
    ``as_rgb=True`` does, so every 2D task fits one 3-channel stem) or (N, 1, S, S, S) for 3D. ``labels`` is int64,
    (N,) for single-label tasks and (N, C) of 0/1 for multi-label ones.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class TaskData:
    """All three splits of one task at one size, with the facts of its flag and the file it came from.

    Instances returned by :func:`load_task` are cached and shared: treat the tensors as read-only.
    """

    info: FlagInfo
    size: int
    path: Path
    splits: dict[str, Split]

    def __getitem__(self, split: str) -> Split:
        try:
            return self.splits[split]
        except KeyError:
            raise StmedfmError(
                f"Unknown split '{split}' of {self.info.flag}.{registry.closest(str(split), self.splits)} "
                f"Splits are: {', '.join(self.splits)}."
            ) from None


# --------------------------------------------------------------------------------------------------- locating


def locate(flag: str, size: int = 28, data_dir: str | os.PathLike | None = None) -> Path:
    """The first directory of :func:`stmedfm.core.paths.data_dirs` holding the flag's file, so users choose by precedence."""
    info = registry.get(flag)
    name = info.filename(size)
    searched = paths.data_dirs(data_dir)
    if data_dir is not None:
        return paths.explicit_data_file(searched[0], name, info.flag, size)
    for d in searched:
        candidate = d / name
        if candidate.is_file():
            return candidate
    size_opt = "" if size == 28 else f" --size {size}"
    raise StmedfmError(
        f"MedMNIST file '{name}' ({info.flag}, {size} px) was not found; searched, in order: "
        f"{', '.join(str(d) for d in searched)}. Run `stmedfm download {info.flag}{size_opt}` to fetch it "
        f"(it lands in {paths.download_dir(data_dir)}), or, on a machine without internet, copy the official file "
        f"into one of those directories (or point ${paths.ENV_DATA} at a directory holding it)."
    )


# --------------------------------------------------------------------------------------------------- verifying


def file_digests(path: str | os.PathLike, algorithms: tuple[str, ...] = ("md5",)) -> dict[str, str]:
    """Hex digests of a file, all algorithms in one pass over 1 MiB chunks (the only place data files are hashed)."""
    hashers = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def manifest_entry(path: Path) -> dict | None:
    """The entry of ``MANIFEST.json`` beside ``path`` naming it (with a sha256), or None.

    Public because the writers of synthetic files (:mod:`stmedfm.data.synthetic`, ``stmedfm bench``) read it too: an
    entry saying ``synthetic`` with the wanted split sizes means the file need not be written again."""
    manifest = path.parent / paths.MANIFEST_NAME
    try:
        doc = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    files = doc.get("files", []) if isinstance(doc, dict) else []
    for entry in files if isinstance(files, list) else []:
        if isinstance(entry, dict) and entry.get("name") == path.name and entry.get("sha256"):
            return entry
    return None


def _cache_file() -> Path:
    return paths.cache_dir() / VERIFIED_CACHE


def _read_cache() -> dict:
    try:
        doc = json.loads(_cache_file().read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(doc: dict) -> None:
    """Atomic write so concurrent runs never read half a file; a failure only costs a re-hash later."""
    try:
        atomic_write_text(_cache_file(), json.dumps(doc, indent=1, sort_keys=True))
    except OSError:
        pass


@dataclass(frozen=True)
class FileIdentity:
    """What a verified data file is: ``kind`` 'official' (its MD5 is the registry's), 'manifest' (listed with
    its sha256 in a MANIFEST.json) or 'synthetic' (listed there as ``synthetic: true``), and ``digest``, the
    checksum it was verified against ('md5:...' or 'sha256:...')."""

    flag: str
    size: int
    kind: str
    digest: str

    @property
    def official(self) -> bool:
        return self.kind == "official"

    def __str__(self) -> str:
        return f"{self.flag}={self.kind}:{self.digest}"


def _record(st: os.stat_result, info: FlagInfo, size: int) -> dict:
    """What must be unchanged for a cached verification to hold: a replaced file has another inode or ctime."""
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "inode": st.st_ino,
            "flag": info.flag, "size": size}


def _check(path: Path, info: FlagInfo, size: int) -> FileIdentity:
    """Verify without wrapping I/O errors (``OSError`` means unreadable; :class:`StmedfmError` means mismatch)."""
    path = Path(path)
    st = path.stat()
    key = str(path.resolve())
    rec = _record(st, info, size)
    entry = manifest_entry(path)
    # what the manifest says is part of a verification: a file it vouched for is trusted only while it still does
    rec["manifest"] = None if entry is None else {"sha256": entry["sha256"], "synthetic": entry.get("synthetic") is True}
    doc = _read_cache()
    cached = doc.get(key)
    if (isinstance(cached, dict) and cached.get("identity") in ("official", "manifest", "synthetic")
            and cached.get("digest") and all(cached.get(k) == v for k, v in rec.items()
                                             if k != "manifest" or cached["identity"] != "official")):
        return FileIdentity(info.flag, size, cached["identity"], cached["digest"])

    official = info.md5.get(size)
    digests = file_digests(path, ("md5", "sha256") if entry else ("md5",))
    if official and digests["md5"] == official:
        identity = FileIdentity(info.flag, size, "official", f"md5:{official}")
    elif entry and digests["sha256"] == entry["sha256"]:
        kind = "synthetic" if entry.get("synthetic") is True else "manifest"
        identity = FileIdentity(info.flag, size, kind, f"sha256:{entry['sha256']}")
    else:
        expected = f"official md5 {official}"
        got = f"md5 {digests['md5']}"
        if entry:
            expected += f" or sha256 {entry['sha256']} (from {path.parent / paths.MANIFEST_NAME})"
            got += f" / sha256 {digests['sha256']}"
        raise StmedfmError(
            f"Checksum mismatch for {path}: expected {expected}, got {got}. The file is incomplete, corrupt or not "
            f"the official {info.filename(size)}. Delete it and re-download it with `stmedfm download {info.flag}"
            f"{'' if size == 28 else f' --size {size}'}` (or copy a good copy in); a derived or synthetic file must be "
            f"listed with its sha256 in a {paths.MANIFEST_NAME} beside it."
        )
    doc = _read_cache()  # re-read: another process may have added entries while we hashed
    doc[key] = {**rec, "identity": identity.kind, "digest": identity.digest}
    _write_cache(doc)
    return identity


def verify(path: str | os.PathLike, flag: str, size: int = 28) -> str:
    """Check a file's checksum: 'md5' (official file) or 'manifest' (listed in a MANIFEST.json beside it, synthetic
    or not; :func:`identify` tells which).

    Results are cached in ``paths.cache_dir()/verified.json`` by absolute path, inode, size, mtime and ctime, so
    unchanged files are hashed once per machine rather than on every load.
    """
    return "md5" if _verified(path, flag, size).official else "manifest"


def identify(flag: str, size: int = 28, data_dir: str | os.PathLike | None = None) -> FileIdentity:
    """Locate and verify the flag's file; return its identity (what run identities and provenance record)."""
    info = registry.get(flag)
    return _verified(locate(info.flag, size, data_dir), info.flag, size)


def _verified(path: str | os.PathLike, flag: str, size: int) -> FileIdentity:
    info = registry.get(flag)
    registry.check_size(size)
    try:
        return _check(Path(path), info, size)
    except OSError as exc:
        raise StmedfmError(
            f"Cannot read {path} to verify it ({exc.strerror or exc}). Check that the file exists and is readable "
            f"by you, or delete it and re-download it with `stmedfm download {info.flag}`."
        ) from exc


#: ``stmedfm data`` status of a verified file, by identity kind: an official file, or one a manifest vouches for.
STATUS = {"official": "official md5", "manifest": "listed in MANIFEST", "synthetic": "synthetic (MANIFEST)"}


def status(flag: str, size: int = 28, data_dir: str | os.PathLike | None = None) -> tuple[str, Path | None]:
    """('missing' | 'official md5' | 'listed in MANIFEST' | 'synthetic (MANIFEST)' | 'bad checksum' |
    'unreadable', path or None), for reports that must not raise."""
    info = registry.get(flag)
    try:
        path = locate(info.flag, size, data_dir)
    except StmedfmError:
        return "missing", None
    try:
        identity = _check(path, info, size)
    except OSError:
        return "unreadable", path
    except StmedfmError:
        return "bad checksum", path
    return STATUS[identity.kind], path


def status_table(data_dir: str | os.PathLike | None = None, size: int = 28, flags=None) -> pd.DataFrame:
    """One row per flag with its official facts and local status, for ``stmedfm data``.

    ``df.attrs['data_dirs']`` lists the directories searched (in order) and ``df.attrs['download_dir']`` where a
    download would land, so the CLI can say where it looked.
    """
    registry.check_size(size)
    rows = []
    for flag in flags if flags is not None else registry.flags():
        info = registry.get(flag)
        st, path = status(info.flag, size, data_dir)
        rows.append(
            {
                "flag": info.flag,
                "dim": info.modality,
                "channels": info.n_channels,
                "classes": info.n_classes,
                "task": info.task,
                "train": info.n_samples["train"],
                "val": info.n_samples["val"],
                "test": info.n_samples["test"],
                "license": info.license,
                "status": st,
                "path": str(path) if path is not None else "",
            }
        )
    df = pd.DataFrame(rows, columns=["flag", "dim", "channels", "classes", "task", "train", "val", "test",
                                     "license", "status", "path"])
    df.attrs["data_dirs"] = [str(d) for d in paths.data_dirs(data_dir)]
    df.attrs["download_dir"] = str(paths.download_dir(data_dir))
    df.attrs["size"] = size
    return df


# --------------------------------------------------------------------------------------------------- loading


def _bad(path: Path, key: str, expected: str, found: str) -> StmedfmError:
    return StmedfmError(
        f"{path} is not a valid MedMNIST file: '{key}' should be {expected} but is {found}. The file is not in the "
        f"official layout (keys train/val/test_images and _labels); delete it and re-download it with "
        f"`stmedfm download`, or regenerate it if it is derived or synthetic."
    )


_WANTED = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")]


def _unreadable(path: Path, exc: Exception) -> StmedfmError:
    return StmedfmError(
        f"{path} is truncated or unreadable as an .npz archive ({type(exc).__name__}: {exc}). Delete it and "
        f"re-download it with `stmedfm download`, or copy in a complete copy."
    )


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read all six arrays into memory in one open (the former loader; :func:`_map_arrays` is what loads now)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _WANTED if k not in npz.files]
            if missing:
                raise _bad(path, missing[0], "present", f"missing (keys found: {', '.join(npz.files) or 'none'})")
            return {k: npz[k] for k in _WANTED}
    except StmedfmError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, KeyError) as exc:
        raise _unreadable(path, exc) from exc


def array_cache_dir(path: Path, st: os.stat_result, size: int) -> Path:
    """Where the ``.npy`` arrays of ``path`` (at this size and mtime) are extracted."""
    key = hashlib.sha256(f"{Path(path).resolve()}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{size}"
                         .encode()).hexdigest()[:20]
    return paths.cache_dir() / ARRAY_CACHE / f"{Path(path).stem}-{key}"


def _source_record(path: Path, st: os.stat_result, size: int) -> dict:
    return {"source": str(Path(path).resolve()), "inode": st.st_ino, "bytes": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "size": size}


def _cache_valid(dest: Path, record: dict) -> bool:
    """The cache was extracted from exactly this (verified) file and every array is complete on disk."""
    try:
        doc = json.loads((dest / ARRAY_SOURCE).read_text())
        if not isinstance(doc, dict) or any(doc.get(k) != v for k, v in record.items()):
            return False
        return all((dest / f"{k}.npy").stat().st_size == doc["arrays"][k] for k in _WANTED)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _extract(path: Path, dest: Path, record: dict) -> None:
    """Stream each ``.npy`` member of the archive into ``dest`` (chunked: never the whole array in memory);
    ``source.json`` is written last, so an interrupted extraction is never used. Concurrent extractions of the
    same file are safe (each writes its own temporary file, then renames)."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(path) as zf:
            found = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            missing = [k for k in _WANTED if k not in found]
            if missing:
                raise _bad(path, missing[0], "present", f"missing (keys found: {', '.join(found) or 'none'})")
            sizes = {}
            for k in _WANTED:
                tmp = dest / f".{k}.npy.{os.getpid()}.tmp"
                with zf.open(f"{k}.npy") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 16 * CHUNK)
                os.replace(tmp, dest / f"{k}.npy")
                sizes[k] = (dest / f"{k}.npy").stat().st_size
    except StmedfmError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError) as exc:
        raise _unreadable(path, exc) from exc
    atomic_write_text(dest / ARRAY_SOURCE, json.dumps({**record, "arrays": sizes}, indent=1))
    for old in dest.parent.glob(f"{path.stem}-*"):  # earlier extractions of a file since changed
        if old != dest and _cache_source(old) == record["source"]:
            shutil.rmtree(old, ignore_errors=True)


def _cache_source(d: Path) -> str | None:
    try:
        return json.loads((d / ARRAY_SOURCE).read_text()).get("source")
    except (OSError, ValueError, AttributeError):
        return None


#: the arrays mapped by this process (for :func:`release_pages`)
_MAPPED: dict[int, weakref.ref] = {}
_touched = 0


def _map_arrays(path: Path, size: int) -> dict[str, np.ndarray]:
    """The six arrays of a verified file: images memory-mapped read-only from the ``.npy`` cache (extracted on
    first use), labels read into memory (they are small). Every failure becomes one actionable error."""
    st = path.stat()
    dest = array_cache_dir(path, st, size)
    record = _source_record(path, st, size)
    if not _cache_valid(dest, record):
        try:
            _extract(path, dest, record)
        except OSError as exc:
            raise StmedfmError(
                f"Cannot extract {path} into the array cache {dest} ({exc.strerror or exc}). The cache needs at "
                f"least {st.st_size / 2**30:.1f} GiB (the arrays uncompressed): free space there or point "
                f"${paths.ENV_CACHE} at a larger disk. If {path.name} itself is unreadable, delete it and "
                f"re-download it with `stmedfm download`."
            ) from exc
    out = {}
    try:
        for k in _WANTED:
            f = dest / f"{k}.npy"
            if k.endswith("_labels"):
                out[k] = np.load(f, allow_pickle=False)
                continue
            with open(f, "rb") as fh:  # an empty array cannot be mapped: read it (it is nothing)
                version = np.lib.format.read_magic(fh)
                header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _, _ = header(fh)
            if int(np.prod(shape)) == 0:
                out[k] = np.load(f, allow_pickle=False)
            else:
                out[k] = np.load(f, mmap_mode="r", allow_pickle=False)
                _MAPPED[id(out[k])] = weakref.ref(out[k], lambda _, key=id(out[k]): _MAPPED.pop(key, None))
    except (ValueError, OSError, EOFError) as exc:
        raise _unreadable(path, exc) from exc
    return out


def release_pages() -> None:
    """Drop this process's mapped pages of every split (``madvise(MADV_DONTNEED)``): its RSS falls back, the
    page cache keeps the data for the next read (a minor fault, no disk). A no-op where unsupported."""
    for ref in list(_MAPPED.values()):
        mm = getattr(ref(), "_mmap", None)
        if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            try:
                mm.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass


def touched(batch: torch.Tensor, gathered: bool = True) -> None:
    """Count the mapped bytes a batch read (``gathered`` rows: at least 64 KiB each, as the kernel maps the pages
    around a fault; a slice: its bytes) and drop the mapped pages every :data:`RELEASE_BYTES`, so no process keeps
    a whole split resident."""
    global _touched
    if not _MAPPED or batch.dtype != torch.uint8 or batch.dim() == 0:
        return
    rows = int(batch.shape[0])
    _touched += rows * max(batch[:1].numel(), 64 << 10) if gathered else batch.numel()
    if _touched >= RELEASE_BYTES:
        _touched = 0
        release_pages()


def _validate(path: Path, arrays: dict[str, np.ndarray], info: FlagInfo, size: int) -> None:
    """Check dtypes, shapes and label ranges of every split before any tensor is built."""
    img_shape = info.image_shape(size)
    lab_shape = info.label_shape()
    upper = 2 if info.multi_label else info.n_classes  # multi-label rows are 0/1 indicators
    for s in SPLITS:
        im, lb = arrays[f"{s}_images"], arrays[f"{s}_labels"]
        if im.shape[0] == 0:
            raise _bad(path, f"{s}_images", "non-empty (a model trained or evaluated on no samples is no result)",
                       "empty")
        if im.dtype != np.uint8:
            raise _bad(path, f"{s}_images", "uint8", str(im.dtype))
        if im.ndim != 1 + len(img_shape) or tuple(im.shape[1:]) != img_shape:
            raise _bad(path, f"{s}_images", f"of shape (N, {', '.join(map(str, img_shape))})", f"of shape {im.shape}")
        if not np.issubdtype(lb.dtype, np.integer):
            raise _bad(path, f"{s}_labels", "an integer array", str(lb.dtype))
        want = (im.shape[0], *lab_shape)
        if tuple(lb.shape) != want:
            raise _bad(path, f"{s}_labels", f"of shape {want}", f"of shape {lb.shape}")
        if lb.size:
            lo, hi = int(lb.min()), int(lb.max())
            if lo < 0 or hi >= upper:
                raise _bad(path, f"{s}_labels", f"within [0, {upper})", f"within [{lo}, {hi}]")


def _to_split(images: np.ndarray, labels: np.ndarray, info: FlagInfo, views: bool = False) -> Split:
    """Tensors of one split; ``views``: no copy of the images (a mapped split stays mapped; batches gathered from
    the views hold exactly the values of the copies)."""
    with warnings.catch_warnings():  # a read-only mapping: torch warns that it is not writable (we never write)
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(images)
    if info.dim == 3:
        x = x.unsqueeze(1)  # (N, 1, S, S, S), a view
    elif images.ndim == 3:
        x = x.unsqueeze(1).expand(-1, 3, -1, -1)  # grayscale -> 3 equal channels
    else:
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
    if not views:
        x = x.contiguous()
    y = torch.from_numpy(labels.astype(np.int64, copy=False))
    if not info.multi_label:
        y = y.reshape(-1)
    return Split(images=x, labels=y)


@functools.lru_cache(maxsize=8)
def _load_cached(resolved: str, flag: str, size: int, mtime_ns: int, nbytes: int) -> TaskData:
    """Map once per (file, size, mtime); the key changes whenever the file does, so stale data is never served."""
    info = registry.get(flag)
    path = Path(resolved)
    arrays = _map_arrays(path, size)
    _validate(path, arrays, info, size)
    splits = {s: _to_split(arrays[f"{s}_images"], arrays[f"{s}_labels"], info, views=True) for s in SPLITS}
    return TaskData(info=info, size=size, path=path, splits=splits)


def release_cache() -> None:
    """Forget the tasks held in memory by this process (a client whose workers load the data themselves)."""
    _load_cached.cache_clear()


def load_task(flag: str, size: int = 28, data_dir: str | os.PathLike | None = None) -> TaskData:
    """Locate, verify and map all splits of one task (see the module docstring), cached in-process.

    Never downloads: this module sits below :mod:`stmedfm.data.download` (which verifies with it), so fetching a
    missing file first is :func:`stmedfm.data.download.load_or_download`."""
    info = registry.get(flag)
    registry.check_size(size)
    path = locate(info.flag, size, data_dir)
    verify(path, info.flag, size)
    try:
        st = path.stat()
    except OSError as exc:
        raise StmedfmError(f"Cannot read {path} ({exc.strerror or exc}); check that it exists and is readable.") from exc
    return _load_cached(str(path.resolve()), info.flag, size, st.st_mtime_ns, st.st_size)


# --------------------------------------------------------------------------------------------------- batch ops


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> float32 in [-1, 1] (x / 127.5 - 1), one vectorised op on the whole batch."""
    return x.to(torch.float32, copy=True).div_(127.5).sub_(1.0)  # copy: never modify a float input in place


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each sample independently (p = 0.5) along every spatial axis: H, W for 2D; D, H, W for 3D.

    All randomness comes from ``generator`` (one ``torch.rand`` draw per batch), so equal seeds give equal batches.
    """
    if x.dim() not in (4, 5):
        raise StmedfmError(
            f"random_flip expects a batch of shape (B, C, H, W) or (B, C, D, H, W), got {tuple(x.shape)}."
        )
    b = x.shape[0]
    axes = list(range(2, x.dim()))
    flip = torch.rand((b, len(axes)), generator=generator, device=generator.device) < 0.5
    flip = flip.to(x.device)
    view = (b,) + (1,) * (x.dim() - 1)
    for i, axis in enumerate(axes):
        x = torch.where(flip[:, i].view(view), x.flip(axis), x)
    return x


def _single_labels(labels: torch.Tensor, what: str) -> torch.Tensor:
    y = labels.reshape(-1) if labels.dim() == 2 and labels.shape[1] == 1 else labels
    if y.dim() != 1:
        raise StmedfmError(
            f"{what} needs single-label class indices of shape (N,), got labels of shape {tuple(labels.shape)} "
            f"(multi-label tasks have no single class per sample)."
        )
    return y.to(torch.int64)


def _grouped(y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random permutation grouped by class: (indices, their classes, rank within class, counts per class)."""
    perm = torch.randperm(y.numel(), generator=generator, device=generator.device).to(y.device)
    cls = y[perm]
    order = torch.argsort(cls, stable=True)
    idx, cls = perm[order], cls[order]
    counts = torch.bincount(y)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(y.numel(), device=y.device) - starts[cls]
    return idx, cls, rank, counts


def kshot_indices(labels: torch.Tensor, k: int, n_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Exactly ``k`` distinct indices per class (seeded, without replacement), sorted, for few-shot studies."""
    y = _single_labels(labels, "kshot_indices")
    if k < 1:
        raise StmedfmError(f"k-shot sampling needs k >= 1, got k={k}.")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise StmedfmError(
            f"Labels lie in [{int(y.min())}, {int(y.max())}] but n_classes={n_classes}; pass the task's class count."
        )
    counts = torch.bincount(y, minlength=n_classes)
    short = (counts < k).nonzero().flatten().tolist()
    if short:
        c = short[0]
        others = f" (also too few in classes {', '.join(map(str, short[1:]))})" if len(short) > 1 else ""
        raise StmedfmError(
            f"Cannot draw k={k} samples per class: class {c} has only {int(counts[c])} samples{others}. Use a "
            f"smaller k (at most {int(counts.min())} for these labels) or a larger split."
        )
    idx, _, rank, _ = _grouped(y, generator)
    return torch.sort(idx[rank < k]).values


def stratified_fraction_indices(labels: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """A seeded subset of about ``fraction`` of each class (rounded, at least 1 per present class), sorted.

    Keeping every present class lets data-efficiency curves go down to tiny fractions without losing a class.
    Multi-label labels (N, C) have no single class per sample, so they get a plain random subset (at least 1).
    """
    if not 0.0 < float(fraction) <= 1.0:
        raise StmedfmError(f"A data fraction must lie in (0, 1], got {fraction}.")
    if labels.dim() == 2 and labels.shape[1] > 1:
        n = labels.shape[0]
        keep = max(1, round(fraction * n))
        perm = torch.randperm(n, generator=generator, device=generator.device).to(labels.device)
        return torch.sort(perm[:keep]).values
    y = _single_labels(labels, "stratified_fraction_indices")
    if y.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=y.device)
    if int(y.min()) < 0:
        raise StmedfmError(f"Labels must be non-negative class indices, found {int(y.min())}.")
    idx, cls, rank, counts = _grouped(y, generator)
    keep = torch.clamp(torch.round(counts.double() * float(fraction)).long(), min=1)
    keep = torch.where(counts > 0, keep, torch.zeros_like(keep))
    return torch.sort(idx[rank < keep[cls]]).values


def class_weights(labels: torch.Tensor, n_classes: int, clip: tuple[float, float] = (0.1, 5.0)) -> torch.Tensor:
    """Inverse-frequency class weights, float32 (C,), for weighted cross-entropy on imbalanced tasks.

    Decision: ``w_c = N / (C * n_c)`` (1.0 for every class of a balanced set; a class absent from ``labels`` counts
    as +inf), clipped to ``clip`` = [0.1, 5.0] so rare or absent classes cannot dominate, then renormalised to mean
    1 over classes (``w / w.mean()``). With weighted cross-entropy and ``reduction='mean'`` the overall scale cancels
    anyway; renormalising keeps weights comparable across tasks. After renormalising a weight may lie outside
    ``clip``; the clip bounds the *ratio* between classes (at most 50x). For multi-label labels (N, C) ``n_c`` is the
    number of positives of class c.
    """
    if labels.dim() == 2 and labels.shape[1] == n_classes and n_classes > 1:
        counts = (labels > 0).sum(0).to(torch.float64)
        n = float(labels.shape[0])
    else:
        y = _single_labels(labels, "class_weights")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
            raise StmedfmError(
                f"Labels lie in [{int(y.min())}, {int(y.max())}] but n_classes={n_classes}; pass the task's class count."
            )
        counts = torch.bincount(y, minlength=n_classes).to(torch.float64)
        n = float(y.numel())
    lo, hi = clip
    w = torch.where(counts > 0, n / (n_classes * counts.clamp(min=1)), torch.full_like(counts, float("inf")))
    w = w.clamp(min=lo, max=hi)
    return (w / w.mean()).to(torch.float32)
