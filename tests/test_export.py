"""Issue 31: a trained model as an artefact — `stmedfm export` writes a Hugging Face folder (safetensors, config.json,
model card) that `load_model(folder)` and `STMedFMHub.from_pretrained(folder)` read without training, verified by
the sha256 in config.json."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from stmedfm import cli
from stmedfm import data as D
from stmedfm.core.errors import StmedfmError
from stmedfm.run.hub import STMedFMHub, sha256_file
from stmedfm.run.inference import load_model


@pytest.fixture(scope="module")
def exported(tiny_store, tmp_path_factory):
    """A copy of the shared tiny store (export writes its models/), its LoRA model of seed 0 and backbone exported."""
    root = tmp_path_factory.mktemp("export")
    store = shutil.copytree(tiny_store.root, root / "tiny")
    assert cli.main(["export", str(store), str(root / "lora"), "--task", "bloodmnist", "--strategy", "lora",
                     "--seed", "0"]) == 0
    assert cli.main(["export", str(store), str(root / "backbone"), "--pretrained", "--seed", "0"]) == 0
    return store, root / "lora", root / "backbone"


def _raw(synthetic_dir, task="bloodmnist"):
    test = D.load_task(task, data_dir=synthetic_dir)["test"]
    return test.images.permute(0, 2, 3, 1).numpy(), test.labels.numpy()


def test_exported_model_predicts_bit_for_bit_as_the_stores_and_loads_fast(exported, synthetic_dir):
    store, folder, _ = exported
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["weights_sha256"] == sha256_file(folder / "model.safetensors")
    assert config["heads"] == {"bloodmnist": [8, 2]} and config["strategy"] == "lora"
    assert config["inserts"] == ["lora"] and config["labels"]["bloodmnist"][0] == "basophil"
    assert config["study_config"]["study"] == "tiny" and "x / 127.5 - 1" in config["input"]["normalisation"]
    raw, labels = _raw(synthetic_dir)
    t0 = time.perf_counter()
    loaded = load_model(folder)
    seconds = time.perf_counter() - t0
    assert loaded.source == "exported" and seconds < 5
    original = load_model(store, task="bloodmnist", strategy="lora", seed=0)  # the store's model (saved by export)
    assert original.run_id == loaded.run_id == config["run_id"]
    assert np.array_equal(loaded.logits(raw), original.logits(raw))  # bit for bit
    accuracy = float((loaded.predict(raw).argmax(1) == labels).mean())
    assert accuracy == pytest.approx(config["metrics"]["accuracy"])
    # the same folder through the Hugging Face mixin: the same module, the strategy's modules included
    module = STMedFMHub.from_pretrained(folder)
    assert {n for n, _ in module.named_modules()} == {n for n, _ in original.model.named_modules()}
    x = loaded.inputs(raw[:4])
    with torch.no_grad():
        assert torch.equal(module(D.to_float(x), "bloodmnist"), original.model(D.to_float(x), "bloodmnist"))


def test_the_model_card_reads_its_numbers_from_the_store(exported):
    store, folder, _ = exported
    card = (folder / "README.md").read_text()
    config = json.loads((folder / "config.json").read_text())
    assert card.startswith("---\n") and "library_name: stmedfm" in card and "license: cc-by-nc-4.0" in card  # derma
    for words in ("Not for clinical use", "synthetic data — not results", config["run_id"], "Limitations",
                  config["weights_sha256"], "push_to_hub", "CC BY 4.0", "DermaMNIST CC BY-NC"):
        assert words in card, words
    assert f"accuracy {config['metrics']['accuracy']:.3f}" in card
    assert "| bloodmnist | lora |" in card and "(n = 1)" in card


def test_a_changed_weights_file_is_refused_in_one_line(exported, tmp_path, capsys):
    _, folder, _ = exported
    copy = shutil.copytree(folder, tmp_path / "m")
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(StmedfmError, match="is not the exported file") as err:
        load_model(copy)
    assert "\n" not in str(err.value)
    with pytest.raises(StmedfmError, match="is not the exported file"):
        STMedFMHub.from_pretrained(copy)


def test_the_backbone_has_every_pretraining_head_and_adapts(exported, synthetic_dir):
    store, _, folder = exported
    config = json.loads((folder / "config.json").read_text())
    assert config["kind"] == "backbone" and set(config["heads"]) == {"bloodmnist", "dermamnist"}
    assert config["inserts"] == [] and set(config["pretrain_loss_last20"]) == {"bloodmnist", "dermamnist"}
    m = load_model(folder, task="dermamnist")
    raw, _ = _raw(synthetic_dir, "dermamnist")
    assert m.predict(raw).shape == (len(raw), 7)
    from stmedfm.model.peft import prepare

    prepare(STMedFMHub.from_pretrained(folder), "lora", "bloodmnist")  # a user adapts it like the study does


def test_export_refuses_what_it_cannot_write(exported, tmp_path, capsys):
    store, _, _ = exported
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert cli.main(["export", str(store), str(tmp_path / "mine"), "--seed", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not an exported model" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert cli.main(["export", str(store), str(tmp_path / "x"), "--seed", "7"]) == 2
    assert "has no seed 7" in capsys.readouterr().err and not (tmp_path / "x").exists()


COMMITTED = sorted(p.parent for p in (Path(__file__).resolve().parents[1] / "models").glob("*/config.json"))


@pytest.mark.skipif(not COMMITTED, reason="no exported model committed under models/ yet (make export-reference)")
@pytest.mark.parametrize("folder", COMMITTED, ids=[p.name for p in COMMITTED])
def test_every_committed_model_loads_in_seconds_without_data(folder, no_default_data):
    """The models a reader finds in models/: loaded (digest checked) in under 5 s with no data file anywhere, and
    predicting class probabilities for images in MedMNIST's layout."""
    t0 = time.perf_counter()
    m = load_model(folder)
    assert time.perf_counter() - t0 < 5 and m.source == "exported"
    size = json.loads((folder / "config.json").read_text())["image_size"]
    shape = (2, size, size, size) if m.info.dim == 3 else (2, size, size) if m.info.n_channels == 1 else (2, size, size, 3)
    probs = m.predict(np.zeros(shape, dtype=np.uint8))
    assert probs.shape == (2, m.info.n_classes) and np.allclose(probs.sum(1), 1)
    assert "Not for clinical use" in (folder / "README.md").read_text()


@pytest.mark.slow
def test_a_method_trained_with_its_own_options_exports_at_that_shape(make_config, tmp_path, synthetic_dir):
    """strategy_options: {lora: {r: 2}} trains LoRA at rank 2; its export must carry rank 2 (config.json said the
    shared lora_r = 4 before, so the folder could not be loaded) and predict as the store's model."""
    from stmedfm.run.study import run_study

    cfg = make_config({"study": "rank2", "strategies": ["lora"], "strategy_options": {"lora": {"r": 2}}})
    store = run_study(cfg, out=tmp_path / "rank2", progress=False)
    assert cli.main(["export", str(store.root), str(tmp_path / "lora2"), "--task", "bloodmnist", "--strategy", "lora",
                     "--seed", str(cfg.seeds[0])]) == 0
    config = json.loads((tmp_path / "lora2" / "config.json").read_text())
    assert config["lora_r"] == 2
    loaded = load_model(tmp_path / "lora2")
    assert {p.shape[0] for n, p in loaded.model.named_parameters() if n.endswith("lora_A")} == {2}  # rank 2
    raw, _ = _raw(synthetic_dir)
    original = load_model(store.root, task="bloodmnist", strategy="lora", seed=cfg.seeds[0])
    assert np.array_equal(loaded.logits(raw), original.logits(raw))
