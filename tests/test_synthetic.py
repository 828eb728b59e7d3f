"""stmedfm.data.synthetic: official layout, manifest, verification, and a learnable class signal."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from stmedfm import data
from stmedfm.core import paths, registry
from stmedfm.data import synthetic
from stmedfm.core.errors import StmedfmError


def _arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    out = synthetic.write_synthetic(d, ["pathmnist", "organamnist", "organmnist3d", "chestmnist"], n=24, seed=3)
    out64 = synthetic.write_synthetic(d, ["dermamnist"], n={"train": 14, "val": 7}, size=64)
    return d, {**out, "dermamnist_64": out64["dermamnist"]}


@pytest.mark.parametrize(
    "key, image_shape, label_shape",
    [
        ("pathmnist", (28, 28, 3), (1,)),
        ("organamnist", (28, 28), (1,)),
        ("organmnist3d", (28, 28, 28), (1,)),
        ("chestmnist", (28, 28), (14,)),
    ],
)
def test_official_layout(written, key, image_shape, label_shape):
    d, out = written
    assert out[key] == d / f"{key}.npz"
    arrays = _arrays(out[key])
    assert sorted(arrays) == sorted(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels"))
    n_classes = registry.get(key).n_classes
    for s in ("train", "val", "test"):
        x, y = arrays[f"{s}_images"], arrays[f"{s}_labels"]
        assert x.dtype == np.uint8 and x.shape == (24, *image_shape)
        assert y.dtype == np.uint8 and y.shape == (24, *label_shape)
        if label_shape == (1,):
            assert set(y[:, 0].tolist()) == set(range(n_classes)), "every class appears in every split"
        else:
            assert set(np.unique(y).tolist()) == {0, 1} and (y.sum(0) > 0).all()


def test_size_64_and_per_split_counts(written):
    d, out = written
    assert out["dermamnist_64"] == d / "dermamnist_64.npz"
    arrays = _arrays(out["dermamnist_64"])
    assert arrays["train_images"].shape == (14, 64, 64, 3)
    assert [len(arrays[f"{s}_labels"]) for s in ("train", "val", "test")] == [14, 7, 32]  # test: default
    task = data.load_task("dermamnist", size=64, data_dir=d)
    assert task["train"].images.shape == (14, 3, 64, 64)


def test_manifest_lists_every_file_with_its_checksums(written):
    d, out = written
    doc = json.loads((d / paths.MANIFEST_NAME).read_text())
    entries = {e["name"]: e for e in doc["files"]}
    assert sorted(entries) == sorted(p.name for p in out.values())
    for p in out.values():
        raw = p.read_bytes()
        e = entries[p.name]
        assert e["sha256"] == hashlib.sha256(raw).hexdigest() and e["md5"] == hashlib.md5(raw).hexdigest()
        assert e["bytes"] == len(raw) and e["synthetic"] is True
    assert entries["pathmnist.npz"]["n_samples"] == {"train": 24, "val": 24, "test": 24}
    assert entries["pathmnist.npz"]["flag"] == "pathmnist"


@pytest.mark.parametrize("flag", ["pathmnist", "organamnist", "organmnist3d", "chestmnist"])
def test_load_task_verifies_by_manifest(written, flag):
    d, out = written
    assert data.verify(out[flag], flag) == "manifest"
    assert len(data.load_task(flag, data_dir=d)["val"]) == 24


def test_rewrite_replaces_entry_and_keeps_others(tmp_path):
    (tmp_path / paths.MANIFEST_NAME).write_text(json.dumps({"note": "kept", "files": [{"name": "other.npz"}]}))
    synthetic.write_synthetic(tmp_path, "bloodmnist", n=8)
    synthetic.write_synthetic(tmp_path, ["bloodmnist"], n=10)
    doc = json.loads((tmp_path / paths.MANIFEST_NAME).read_text())
    assert doc["note"] == "kept"
    assert [e["name"] for e in doc["files"]] == ["other.npz", "bloodmnist.npz"]
    assert doc["files"][1]["n_samples"]["train"] == 10
    assert data.verify(tmp_path / "bloodmnist.npz", "bloodmnist") == "manifest"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp files left"


def test_deterministic_in_seed(tmp_path):
    a = _arrays(synthetic.write_synthetic(tmp_path / "a", ["bloodmnist"], n=9, seed=1)["bloodmnist"])
    b = _arrays(synthetic.write_synthetic(tmp_path / "b", ["bloodmnist"], n=9, seed=1)["bloodmnist"])
    c = _arrays(synthetic.write_synthetic(tmp_path / "c", ["bloodmnist"], n=9, seed=2)["bloodmnist"])
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train_images"], c["train_images"])


def test_split_sizes_rules():
    blood = registry.get("bloodmnist")
    assert synthetic.split_sizes(blood) == {"train": 64, "val": 16, "test": 32}
    # scale x official (11959 / 1712 / 3421), rounded, at least n_classes = 8
    assert synthetic.split_sizes(blood, scale=0.001) == {"train": 12, "val": 8, "test": 8}
    with pytest.raises(StmedfmError, match=r"at least 8 samples"):
        synthetic.split_sizes(blood, n=5)
    with pytest.raises(StmedfmError, match=r"either n .* or scale"):
        synthetic.split_sizes(blood, n=10, scale=0.1)


def test_refuses_to_overwrite_an_official_file(tmp_path, monkeypatch):
    path = synthetic.write_synthetic(tmp_path, ["bloodmnist"], n=8)["bloodmnist"]
    monkeypatch.setitem(registry.get("bloodmnist").md5, 28, hashlib.md5(path.read_bytes()).hexdigest())
    before = path.read_bytes()
    with pytest.raises(StmedfmError, match="refusing to overwrite"):
        synthetic.write_synthetic(tmp_path, ["bloodmnist"], n=8)
    assert path.read_bytes() == before


@pytest.mark.parametrize("flag", ["pathmnist", "organmnist3d"])
def test_class_signal_is_learnable(synthetic_dir, flag):
    """Nearest class mean of the training split classifies the test split far above chance."""
    task = data.load_task(flag, data_dir=synthetic_dir)
    x, y = data.to_float(task["train"].images).flatten(1), task["train"].labels
    xt, yt = data.to_float(task["test"].images).flatten(1), task["test"].labels
    means = torch.stack([x[y == c].mean(0) for c in range(task.info.n_classes)])
    accuracy = (torch.cdist(xt, means).argmin(1) == yt).float().mean().item()
    assert accuracy > 0.9 > 3 / task.info.n_classes
