"""stmedfm.data: locating, verifying, loading (every error), batch ops, and the real official files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from stmedfm import data
from stmedfm.core import paths, registry
from stmedfm.data import synthetic
from stmedfm.core.errors import StmedfmError

# --------------------------------------------------------------------------------------------------- helpers


def _arrays(npz_path: Path) -> dict[str, np.ndarray]:
    with np.load(npz_path) as z:
        return {k: z[k] for k in z.files}


def _add_to_manifest(file: Path) -> None:
    """List ``file`` with its sha256 in the MANIFEST.json beside it (as a derived file would be)."""
    manifest = file.parent / paths.MANIFEST_NAME
    doc = json.loads(manifest.read_text()) if manifest.exists() else {"files": []}
    doc["files"] = [e for e in doc["files"] if e["name"] != file.name]
    doc["files"].append({"name": file.name, "sha256": hashlib.sha256(file.read_bytes()).hexdigest()})
    manifest.write_text(json.dumps(doc))


def _write_npz(directory: Path, name: str, arrays: dict, listed: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    if listed:
        _add_to_manifest(path)
    return path


def _copy_task(src_dir: Path, flag: str, dst_dir: Path) -> Path:
    """Copy a synthetic file and its manifest into a fresh directory (so tests can change it)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(src_dir / f"{flag}.npz", dst_dir / f"{flag}.npz")
    shutil.copy(src_dir / paths.MANIFEST_NAME, dst_dir / paths.MANIFEST_NAME)
    return dst_dir / f"{flag}.npz"


# --------------------------------------------------------------------------------------------------- locate


def test_locate_precedence_explicit_then_env_then_home(no_default_data, tmp_path, monkeypatch):
    home_dir = no_default_data / ".medmnist"
    env_dir, explicit = tmp_path / "env", tmp_path / "explicit"
    for d in (home_dir, env_dir, explicit):
        d.mkdir()
        (d / "bloodmnist.npz").write_bytes(b"x")

    assert data.locate("bloodmnist") == home_dir / "bloodmnist.npz"
    monkeypatch.setenv(paths.ENV_DATA, str(env_dir))
    assert data.locate("bloodmnist") == env_dir / "bloodmnist.npz"
    assert data.locate("bloodmnist", data_dir=explicit) == explicit / "bloodmnist.npz"
    # an explicit folder is the only place looked (issue 29): no fallback to $STMEDFM_DATA
    (tmp_path / "empty").mkdir()
    with pytest.raises(StmedfmError, match=f"not in the data folder '{tmp_path / 'empty'}'"):
        data.locate("BloodMNIST", data_dir=tmp_path / "empty")
    # MedMNIST+ sizes use {flag}_{size}.npz
    (env_dir / "bloodmnist_64.npz").write_bytes(b"x")
    assert data.locate("bloodmnist", size=64) == env_dir / "bloodmnist_64.npz"


def test_missing_file_lists_every_directory_and_how_to_fetch(no_default_data, tmp_path, monkeypatch):
    monkeypatch.setenv(paths.ENV_DATA, str(tmp_path / "env"))
    with pytest.raises(StmedfmError) as err:
        data.locate("dermamnist")
    msg = str(err.value)
    assert "dermamnist.npz" in msg
    for d in (tmp_path / "env", no_default_data / ".medmnist"):
        assert str(d) in msg
    assert "`stmedfm download dermamnist`" in msg
    assert "without internet" in msg and paths.ENV_DATA in msg

    with pytest.raises(StmedfmError, match=r"stmedfm download dermamnist --size 64"):
        data.load_task("dermamnist", size=64, data_dir=tmp_path)


def test_unknown_flag_suggests_closest(tmp_path):
    with pytest.raises(StmedfmError, match=r"Did you mean 'bloodmnist'"):
        data.load_task("bloodmnst", data_dir=tmp_path)
    with pytest.raises(StmedfmError, match=r"Unsupported image size 32"):
        data.locate("bloodmnist", size=32, data_dir=tmp_path)


# --------------------------------------------------------------------------------------------------- verify


def test_verify_by_manifest_and_by_official_md5(synthetic_dir, tmp_path, monkeypatch):
    path = _copy_task(synthetic_dir, "bloodmnist", tmp_path / "d")
    assert data.verify(path, "bloodmnist") == "manifest"
    # the same bytes count as official when the registry's MD5 is theirs (stands in for a real file)
    other = _copy_task(synthetic_dir, "bloodmnist", tmp_path / "e")
    (other.parent / paths.MANIFEST_NAME).unlink()
    md5 = hashlib.md5(other.read_bytes()).hexdigest()
    monkeypatch.setitem(registry.get("bloodmnist").md5, 28, md5)
    assert data.verify(other, "bloodmnist") == "md5"


def test_checksum_mismatch_after_one_changed_byte(synthetic_dir, tmp_path):
    path = _copy_task(synthetic_dir, "bloodmnist", tmp_path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(StmedfmError) as err:
        data.load_task("bloodmnist", data_dir=tmp_path)
    msg = str(err.value)
    assert "Checksum mismatch" in msg and str(path) in msg
    assert registry.get("bloodmnist").md5[28] in msg  # expected official md5
    listed = json.loads((tmp_path / paths.MANIFEST_NAME).read_text())["files"]
    assert next(e["sha256"] for e in listed if e["name"] == "bloodmnist.npz") in msg  # expected manifest sha256
    assert hashlib.md5(bytes(raw)).hexdigest() in msg  # what we got
    assert "Delete it and re-download" in msg and "stmedfm download bloodmnist" in msg
    assert data.status("bloodmnist", data_dir=tmp_path) == ("bad checksum", path)


def test_unlisted_file_fails_verification(synthetic_dir, tmp_path):
    path = _copy_task(synthetic_dir, "pathmnist", tmp_path)
    (tmp_path / paths.MANIFEST_NAME).unlink()
    with pytest.raises(StmedfmError, match="Checksum mismatch"):
        data.verify(path, "pathmnist")


def test_verification_is_cached_until_the_file_changes(synthetic_dir, tmp_path, monkeypatch):
    path = _copy_task(synthetic_dir, "dermamnist", tmp_path)
    calls = []
    real = data.file_digests

    def counting(p, algorithms=("md5",)):
        calls.append(Path(p))
        return real(p, algorithms)

    monkeypatch.setattr(data, "file_digests", counting)
    assert data.verify(path, "dermamnist") == "manifest"
    assert len(calls) == 1
    assert data.verify(path, "dermamnist") == "manifest"
    assert data.status("dermamnist", data_dir=tmp_path) == ("synthetic (MANIFEST)", path)
    assert len(calls) == 1, "an unchanged file must not be hashed again"

    record = json.loads((paths.cache_dir() / data.VERIFIED_CACHE).read_text())[str(path.resolve())]
    st = path.stat()
    sha = next(e["sha256"] for e in json.loads((tmp_path / "MANIFEST.json").read_text())["files"]
               if e["name"] == "dermamnist.npz")
    assert record == {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
                      "inode": st.st_ino, "flag": "dermamnist", "size": 28, "identity": "synthetic",
                      "digest": f"sha256:{sha}", "manifest": {"sha256": sha, "synthetic": True}}

    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same bytes, new mtime
    assert data.verify(path, "dermamnist") == "manifest"
    assert len(calls) == 2
    assert not list(paths.cache_dir().glob(".verified.*")), "atomic write must not leave temp files"


def test_a_replaced_file_of_same_size_and_mtime_is_verified_again(synthetic_dir, tmp_path):
    """Issue 18: the cache keyed on (size, mtime) accepted another file with the same size and mtime."""
    path = _copy_task(synthetic_dir, "dermamnist", tmp_path)
    assert data.verify(path, "dermamnist") == "manifest"
    st = path.stat()
    blob = bytearray(path.read_bytes())
    blob[-30] ^= 0xFF  # same size, other bytes
    other = tmp_path / "other.npz"
    other.write_bytes(bytes(blob))
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)  # same path, size and mtime; new inode and ctime
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(StmedfmError, match="Checksum mismatch"):
        data.verify(path, "dermamnist")


def test_the_cache_follows_what_the_manifest_says(synthetic_dir, tmp_path):
    """Review of issue 18: once cached as 'manifest', a file stayed so after its manifest called it synthetic, and
    stayed trusted after its manifest was deleted."""
    _copy_task(synthetic_dir, "dermamnist", tmp_path)
    manifest = tmp_path / "MANIFEST.json"
    doc = json.loads(manifest.read_text())
    for e in doc["files"]:
        e["synthetic"] = False
    manifest.write_text(json.dumps(doc))
    assert data.status("dermamnist", data_dir=tmp_path)[0] == "listed in MANIFEST"
    for e in doc["files"]:
        e["synthetic"] = True
    manifest.write_text(json.dumps(doc))
    assert data.status("dermamnist", data_dir=tmp_path)[0] == "synthetic (MANIFEST)"
    manifest.unlink()
    assert data.status("dermamnist", data_dir=tmp_path)[0] == "bad checksum"


def test_manifest_listed_file_with_an_empty_train_split_is_refused(tmp_path):
    """Issue 18: an empty train split was accepted and reported as the result of an untrained model."""
    arrays = synthetic.make_arrays(registry.get("bloodmnist"), {"train": 0, "val": 4, "test": 4}, seed=0)
    path = tmp_path / "bloodmnist.npz"
    np.savez(path, **arrays)
    sha = data.file_digests(path, ("sha256",))["sha256"]
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"files": [{"name": "bloodmnist.npz", "sha256": sha}]}))
    assert data.status("bloodmnist", data_dir=tmp_path)[0] == "listed in MANIFEST"
    with pytest.raises(StmedfmError, match="'train_images' should be non-empty .* but is empty"):
        data.load_task("bloodmnist", data_dir=tmp_path)


def test_unreadable_status_and_error(synthetic_dir, tmp_path, monkeypatch):
    path = _copy_task(synthetic_dir, "pathmnist", tmp_path)

    def refuse(p, algorithms=("md5",)):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(data, "file_digests", refuse)
    assert data.status("pathmnist", data_dir=tmp_path) == ("unreadable", path)
    with pytest.raises(StmedfmError, match=r"Cannot read .*pathmnist.npz.*Permission denied"):
        data.verify(path, "pathmnist")


def test_status_table_has_every_flag(synthetic_dir, no_default_data):
    df = data.status_table(synthetic_dir)
    assert list(df["flag"]) == list(registry.flags())
    assert list(df.columns) == ["flag", "dim", "channels", "classes", "task", "train", "val", "test", "license",
                                "status", "path"]
    row = df.set_index("flag")
    assert row.loc["organmnist3d", "dim"] == "3D" and row.loc["pathmnist", "dim"] == "2D"
    assert row.loc["bloodmnist", "train"] == 11959 and row.loc["bloodmnist", "classes"] == 8
    assert row.loc["dermamnist", "license"] == "CC BY-NC 4.0"
    assert set(row.loc[["pathmnist", "bloodmnist", "dermamnist", "organmnist3d"], "status"]) == {"synthetic (MANIFEST)"}
    assert row.loc["chestmnist", "status"] == "missing" and row.loc["chestmnist", "path"] == ""
    assert df.attrs["data_dirs"][0] == str(synthetic_dir)
    assert df.attrs["download_dir"] == str(synthetic_dir)


# --------------------------------------------------------------------------------------------------- load errors


@pytest.fixture
def blood_arrays(synthetic_dir) -> dict[str, np.ndarray]:
    return _arrays(synthetic_dir / "bloodmnist.npz")


def test_truncated_file_is_reported(synthetic_dir, tmp_path):
    path = _copy_task(synthetic_dir, "bloodmnist", tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _add_to_manifest(path)  # listed with its (truncated) checksum, so only reading can notice
    with pytest.raises(StmedfmError, match=r"truncated or unreadable.*Delete it and re-download"):
        data.load_task("bloodmnist", data_dir=tmp_path)


def test_corrupt_member_is_reported(synthetic_dir, tmp_path):
    path = _copy_task(synthetic_dir, "bloodmnist", tmp_path)
    raw = bytearray(path.read_bytes())
    raw[200] ^= 0xFF  # inside the first compressed member
    path.write_bytes(bytes(raw))
    _add_to_manifest(path)
    with pytest.raises(StmedfmError, match=r"truncated or unreadable"):
        data.load_task("bloodmnist", data_dir=tmp_path)


def test_missing_key(blood_arrays, tmp_path):
    del blood_arrays["test_labels"]
    path = _write_npz(tmp_path, "bloodmnist.npz", blood_arrays)
    with pytest.raises(StmedfmError) as err:
        data.load_task("bloodmnist", data_dir=tmp_path)
    assert str(path) in str(err.value) and "'test_labels'" in str(err.value) and "missing" in str(err.value)


def test_wrong_image_shape(blood_arrays, tmp_path):
    blood_arrays["val_images"] = blood_arrays["val_images"][..., 0]  # grayscale where RGB is expected
    _write_npz(tmp_path, "bloodmnist.npz", blood_arrays)
    with pytest.raises(StmedfmError, match=r"'val_images' should be of shape \(N, 28, 28, 3\) but is of shape \(16, 28, 28\)"):
        data.load_task("bloodmnist", data_dir=tmp_path)


def test_wrong_label_shape(blood_arrays, tmp_path):
    blood_arrays["train_labels"] = blood_arrays["train_labels"][:-1]
    _write_npz(tmp_path, "bloodmnist.npz", blood_arrays)
    with pytest.raises(StmedfmError, match=r"'train_labels' should be of shape \(48, 1\) but is of shape \(47, 1\)"):
        data.load_task("bloodmnist", data_dir=tmp_path)


def test_wrong_dtypes(blood_arrays, tmp_path):
    bad = dict(blood_arrays, train_images=blood_arrays["train_images"].astype(np.float32))
    _write_npz(tmp_path / "a", "bloodmnist.npz", bad)
    with pytest.raises(StmedfmError, match=r"'train_images' should be uint8 but is float32"):
        data.load_task("bloodmnist", data_dir=tmp_path / "a")
    bad = dict(blood_arrays, test_labels=blood_arrays["test_labels"].astype(np.float64))
    _write_npz(tmp_path / "b", "bloodmnist.npz", bad)
    with pytest.raises(StmedfmError, match=r"'test_labels' should be an integer array but is float64"):
        data.load_task("bloodmnist", data_dir=tmp_path / "b")


def test_labels_out_of_range(blood_arrays, tmp_path):
    blood_arrays["val_labels"] = blood_arrays["val_labels"].copy()
    blood_arrays["val_labels"][3, 0] = 8  # bloodmnist has classes 0..7
    _write_npz(tmp_path, "bloodmnist.npz", blood_arrays)
    with pytest.raises(StmedfmError, match=r"'val_labels' should be within \[0, 8\) but is within \[0, 8\]"):
        data.load_task("bloodmnist", data_dir=tmp_path)


def test_unknown_split_name(synthetic_dir):
    task = data.load_task("bloodmnist", data_dir=synthetic_dir)
    with pytest.raises(StmedfmError, match=r"Unknown split 'valid'.*Did you mean 'val'"):
        task["valid"]


# --------------------------------------------------------------------------------------------------- loading


def test_rgb_task_shapes_and_values(synthetic_dir):
    task = data.load_task("pathmnist", data_dir=synthetic_dir)
    raw = _arrays(synthetic_dir / "pathmnist.npz")
    assert task.info.flag == "pathmnist" and task.size == 28 and task.path == (synthetic_dir / "pathmnist.npz").resolve()
    for s, n in {"train": 48, "val": 16, "test": 32}.items():
        split = task[s]
        assert len(split) == n
        assert split.images.shape == (n, 3, 28, 28) and split.images.dtype == torch.uint8
        assert split.labels.shape == (n,) and split.labels.dtype == torch.int64
        assert torch.equal(split.images, torch.from_numpy(raw[f"{s}_images"]).permute(0, 3, 1, 2))
        assert torch.equal(split.labels, torch.from_numpy(raw[f"{s}_labels"][:, 0].astype(np.int64)))


def test_grayscale_task_repeats_its_channel(tmp_path):
    from stmedfm.data import synthetic

    synthetic.write_synthetic(tmp_path, ["organamnist"], n=20)
    task = data.load_task("organamnist", data_dir=tmp_path)
    raw = _arrays(tmp_path / "organamnist.npz")
    x = task["train"].images
    # the repeat is a stride-0 view of the mapped file (no 3x copy); gathered batches are ordinary tensors
    assert x.shape == (20, 3, 28, 28) and x.dtype == torch.uint8 and x.stride()[1] == 0
    assert x[[0, 3]].is_contiguous()
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert torch.equal(x[:, 0], torch.from_numpy(raw["train_images"]))


def test_3d_task_shapes(synthetic_dir):
    task = data.load_task("organmnist3d", data_dir=synthetic_dir)
    assert task["train"].images.shape == (48, 1, 28, 28, 28)
    assert task["test"].labels.shape == (32,) and task["test"].labels.dtype == torch.int64
    assert set(task["val"].labels.tolist()) == set(range(11))


def test_multilabel_task_keeps_label_rows(tmp_path):
    from stmedfm.data import synthetic

    synthetic.write_synthetic(tmp_path, ["chestmnist"], n=20)
    labels = data.load_task("chestmnist", data_dir=tmp_path)["val"].labels
    assert labels.shape == (20, 14) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) == {0, 1}


def test_load_task_is_cached_until_the_file_changes(synthetic_dir, tmp_path):
    path = _copy_task(synthetic_dir, "bloodmnist", tmp_path)
    first = data.load_task("bloodmnist", data_dir=tmp_path)
    assert data.load_task("bloodmnist", data_dir=tmp_path) is first
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = data.load_task("bloodmnist", data_dir=tmp_path)
    assert second is not first and torch.equal(second["train"].images, first["train"].images)


def test_load_task_never_downloads_load_or_download_does(synthetic_dir, tmp_path, monkeypatch, no_default_data):
    from stmedfm.data import download as download_mod

    calls = []

    def fake_download(flag, size=28, data_dir=None, **kwargs):
        calls.append((flag, size, data_dir))
        return _copy_task(synthetic_dir, flag, Path(data_dir))

    monkeypatch.setattr(download_mod, "download", fake_download)
    with pytest.raises(StmedfmError, match="stmedfm download"):
        data.load_task("dermamnist", data_dir=tmp_path)
    assert calls == []
    task = download_mod.load_or_download("dermamnist", data_dir=tmp_path)
    assert calls == [("dermamnist", 28, tmp_path)]
    assert len(task["train"]) == 48


# --------------------------------------------------------------------------------------------------- batch ops


def test_to_float_endpoints():
    x = torch.tensor([0, 255, 127, 128], dtype=torch.uint8)
    y = data.to_float(x)
    assert y.dtype == torch.float32
    assert y[0].item() == -1.0 and y[1].item() == 1.0
    assert y[2].item() == pytest.approx(127 / 127.5 - 1, abs=1e-6) and y[3].item() == pytest.approx(128 / 127.5 - 1, abs=1e-6)
    assert x.tolist() == [0, 255, 127, 128], "input must not be modified"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape", [(64, 3, 6, 6), (64, 1, 4, 5, 6)])
def test_random_flip(shape):
    x = torch.randint(0, 256, shape, generator=_gen(123), dtype=torch.uint8)
    a, b, c = data.random_flip(x, _gen(0)), data.random_flip(x, _gen(0)), data.random_flip(x, _gen(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b), "equal seeds must give equal batches"
    assert not torch.equal(a, c), "other seeds should give other flips"
    axes = list(range(1, len(shape) - 1))  # spatial axes of one sample
    variants_seen = set()
    for i in range(shape[0]):
        matches = []
        for mask in range(2 ** len(axes)):
            dims = [ax for j, ax in enumerate(axes) if mask >> j & 1]
            variant = x[i].flip(dims) if dims else x[i]
            if torch.equal(a[i], variant):
                matches.append(mask)
        assert matches, f"sample {i} is not a flip of its input"
        variants_seen.add(matches[0])
    assert len(variants_seen) == 2 ** len(axes), "with 64 samples every flip combination should occur"


def test_kshot_indices_balanced_and_seeded():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 5)[torch.randperm(22, generator=_gen(5))]
    idx = data.kshot_indices(labels, 5, 3, _gen(0))
    assert idx.dtype == torch.int64 and idx.shape == (15,)
    assert torch.equal(idx, torch.sort(idx).values)
    assert idx.unique().numel() == 15
    assert torch.bincount(labels[idx], minlength=3).tolist() == [5, 5, 5]
    assert torch.equal(idx, data.kshot_indices(labels, 5, 3, _gen(0)))
    assert not torch.equal(data.kshot_indices(labels, 2, 3, _gen(0)), data.kshot_indices(labels, 2, 3, _gen(1)))
    # (N, 1) labels as stored in the files work too
    assert torch.equal(data.kshot_indices(labels[:, None], 5, 3, _gen(0)), idx)


def test_kshot_too_few_samples_names_the_class():
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 5)
    with pytest.raises(StmedfmError, match=r"k=6 .*class 2 has only 5 samples"):
        data.kshot_indices(labels, 6, 3, _gen(0))
    with pytest.raises(StmedfmError, match=r"class 3 has only 0 samples"):
        data.kshot_indices(labels, 1, 4, _gen(0))


def test_stratified_fraction_keeps_every_class():
    labels = torch.tensor([0] * 100 + [1] * 20 + [2] * 1 + [4] * 3)
    idx = data.stratified_fraction_indices(labels, 0.1, _gen(0))
    assert torch.equal(idx, torch.sort(idx).values) and idx.unique().numel() == idx.numel()
    assert torch.bincount(labels[idx], minlength=5).tolist() == [10, 2, 1, 0, 1]
    assert torch.equal(idx, data.stratified_fraction_indices(labels, 0.1, _gen(0)))
    assert data.stratified_fraction_indices(labels, 1.0, _gen(3)).tolist() == list(range(124))
    with pytest.raises(StmedfmError, match=r"\(0, 1\]"):
        data.stratified_fraction_indices(labels, 0.0, _gen(0))


def test_class_weights_hand_computed():
    # counts [8, 2, 0], N = 10, C = 3: raw N/(C n_c) = [10/24, 10/6, inf] -> clip [5/12, 5/3, 5]
    # mean = (5/12 + 20/12 + 60/12) / 3 = 85/36 -> weights [3/17, 12/17, 36/17]
    labels = torch.tensor([0] * 8 + [1] * 2)
    w = data.class_weights(labels, 3)
    assert w.dtype == torch.float32 and w.shape == (3,)
    assert w.tolist() == pytest.approx([3 / 17, 12 / 17, 36 / 17], rel=1e-6)
    assert w.mean().item() == pytest.approx(1.0)
    assert data.class_weights(torch.tensor([0, 1, 2, 0, 1, 2]), 3).tolist() == pytest.approx([1.0, 1.0, 1.0])
    # lower clip: counts [1000, 1] -> raw [0.5005, 500.5] -> clip [0.5005, 5] -> / mean 2.75025
    w = data.class_weights(torch.tensor([0] * 1000 + [1]), 2)
    assert w.tolist() == pytest.approx([0.5005 / 2.75025, 5 / 2.75025], rel=1e-6)


# --------------------------------------------------------------------------------------------------- real data


@pytest.mark.parametrize("flag", ["bloodmnist", "organamnist", "retinamnist"])
def test_real_files_verify_as_official(real_data_dir, flag):
    assert data.verify(real_data_dir / f"{flag}.npz", flag) == "md5"
    assert data.status(flag, data_dir=real_data_dir) == ("official md5", real_data_dir / f"{flag}.npz")
    identity = data.identify(flag, data_dir=real_data_dir)
    assert identity.official and identity.digest == f"md5:{registry.get(flag).md5[28]}"


def test_real_bloodmnist_loads_with_official_sizes(real_data_dir):
    task = data.load_task("bloodmnist", data_dir=real_data_dir)
    assert {s: len(task[s]) for s in ("train", "val", "test")} == {"train": 11959, "val": 1712, "test": 3421}
    assert task["train"].images.shape == (11959, 3, 28, 28) and task["train"].images.dtype == torch.uint8
    assert set(task["test"].labels.unique().tolist()) == set(range(8))


def test_real_organamnist_is_grayscale_repeated_to_rgb(real_data_dir):
    task = data.load_task("organamnist", data_dir=real_data_dir)
    assert {s: len(task[s]) for s in ("train", "val", "test")} == {"train": 34561, "val": 6491, "test": 17778}
    x = task["val"].images
    assert x.shape == (6491, 3, 28, 28)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert task["train"].labels.max().item() == 10


# --------------------------------------------------------------------------------------------------- the .npy cache
def _former_split(path, flag, split):
    """What the former loader held: the whole split read into memory, as contiguous NCHW / NCDHW tensors."""
    info = registry.get(flag)
    arrays = data._read_arrays(Path(path))
    return data._to_split(arrays[f"{split}_images"], arrays[f"{split}_labels"], info, views=False)


@pytest.mark.parametrize("flag", ["bloodmnist", "organamnist", "organmnist3d"])  # RGB, grayscale, 3D
def test_mapped_cache_gives_bit_identical_batches(tmp_path, flag):
    from stmedfm.data import synthetic
    from stmedfm.core.config import StudyConfig
    from stmedfm.run.train import Pool, build_model, generator, predict_logits

    synthetic.write_synthetic(tmp_path, [flag], n={"train": 70, "val": 20, "test": 45}, seed=3)
    task = data.load_task(flag, data_dir=tmp_path)
    cache = data.array_cache_dir(tmp_path / f"{flag}.npz", (tmp_path / f"{flag}.npz").stat(), 28)
    assert cache.parent == paths.cache_dir() / data.ARRAY_CACHE
    assert (cache / "train_images.npy").is_file() and (cache / data.ARRAY_SOURCE).is_file()
    for split in ("train", "val", "test"):
        old, new = _former_split(tmp_path / f"{flag}.npz", flag, split), task[split]
        assert torch.equal(old.images, new.images) and torch.equal(old.labels, new.labels)
    old = _former_split(tmp_path / f"{flag}.npz", flag, "train")
    new = task["train"]
    rows = torch.tensor([1, 4, 5, 9, 30, 31, 60])  # a K-shot-like subset: gathered per batch from the mapping
    for subset in (None, rows):
        ref = Pool(flag, old.images if subset is None else old.images[subset],
                   old.labels if subset is None else old.labels[subset], None, 8)
        got = Pool(flag, new.images, new.labels if subset is None else new.labels[subset], None, 8, rows=subset)
        g1, g2 = generator(11), generator(11)
        for _ in range(5):
            (x1, y1), (x2, y2) = ref.batch(g1, augment=True), got.batch(g2, augment=True)
            assert x1.dtype == x2.dtype == torch.float32
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    # evaluation streams batches from the mapping: the same logits, to the bit
    model = build_model(StudyConfig(), [flag], 0)
    test_old = _former_split(tmp_path / f"{flag}.npz", flag, "test")
    a = predict_logits(model, flag, test_old.images, 16)
    b = predict_logits(model, flag, task["test"].images, 16)
    assert np.array_equal(a, b)


def test_mapped_cache_is_reused_and_follows_the_verified_file(tmp_path):
    from stmedfm.data import synthetic

    synthetic.write_synthetic(tmp_path, ["bloodmnist"], n=20, seed=1)
    path = tmp_path / "bloodmnist.npz"
    first = data.load_task("bloodmnist", data_dir=tmp_path)["train"].images.clone()
    st = path.stat()
    dest = data.array_cache_dir(path, st, 28)
    stamp = (dest / "train_images.npy").stat().st_mtime_ns
    data._load_cached.cache_clear()
    data.load_task("bloodmnist", data_dir=tmp_path)
    assert (dest / "train_images.npy").stat().st_mtime_ns == stamp  # extracted once, then mapped
    # a half-written cache (source.json says otherwise) is extracted again, never used
    with open(dest / "train_images.npy", "r+b") as fh:
        fh.truncate(100)
    data._load_cached.cache_clear()
    assert torch.equal(data.load_task("bloodmnist", data_dir=tmp_path)["train"].images, first)
    # a new file (regenerated: other content, other mtime) gets a new cache; the stale one is removed
    synthetic.write_synthetic(tmp_path, ["bloodmnist"], n=20, seed=2)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    data._load_cached.cache_clear()
    again = data.load_task("bloodmnist", data_dir=tmp_path)["train"].images
    assert not torch.equal(again, first)
    assert data.array_cache_dir(path, path.stat(), 28) != dest and not dest.exists()


def test_mapped_pages_are_dropped_after_release_bytes(tmp_path, monkeypatch):
    from stmedfm.data import synthetic

    synthetic.write_synthetic(tmp_path, ["bloodmnist"], n=20, seed=1)
    images = data.load_task("bloodmnist", data_dir=tmp_path)["train"].images
    calls = []
    monkeypatch.setattr(data, "release_pages", lambda: calls.append(1))
    monkeypatch.setattr(data, "RELEASE_BYTES", 3 * (64 << 10))
    monkeypatch.setattr(data, "_touched", 0)
    data.touched(images[[0, 1]])
    assert not calls
    data.touched(images[[2]])  # 3 gathered rows of at least 64 KiB each
    assert calls == [1] and data._touched == 0
    monkeypatch.undo()  # the real one drops pages; the data reads back the same
    data.release_pages()
    assert torch.equal(images[:2], data.load_task("bloodmnist", data_dir=tmp_path)["train"].images[:2])
