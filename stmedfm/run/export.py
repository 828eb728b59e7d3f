"""``stmedfm export``: one trained model of a result store as a folder in the Hugging Face convention.

``export(store, out, task=, strategy=, seed=)`` writes the downstream model of one transfer run (the model
:func:`stmedfm.run.inference.load_model` returns, re-materialised and checked against the stored metrics when the
store has not kept it); ``export(store, out, pretrained=True, seed=)`` writes the multi-task checkpoint of that
seed with every pretraining head (the backbone to adapt). The folder (:mod:`stmedfm.run.hub`): ``model.safetensors``,
``config.json`` (architecture, strategy, heads and class names, input convention, the study's parameters,
provenance, the weights' sha256) and ``README.md``, a model card written with ``huggingface_hub.ModelCard`` /
``ModelCardData`` whose numbers are read from the store (this run's test metrics; mean ± 95 % CI over the store's
seeds from its tidy ``metrics.csv``), never typed. Read it back with ``load_model(out)`` or
``STMedFMHub.from_pretrained(out)``; share it with ``STMedFMHub.from_pretrained(out).push_to_hub("you/name")``.

The folder is written beside ``out`` and renamed into place, so an interrupted export leaves no half folder; an
``out`` that exists and is not an earlier export is never overwritten.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import torch
from huggingface_hub import ModelCard, ModelCardData

from stmedfm.core import options, registry, strategies
from stmedfm.run import hub
from stmedfm.core.errors import StmedfmError
from stmedfm.run.inference import load_model
from stmedfm.model import STMedFM
from stmedfm.run.planning import job_id, study_data
from stmedfm.core.records import PretrainJob
from stmedfm.core.provenance import software
from stmedfm.run.store import ResultStore, checkpoint_state
from stmedfm.analysis.tables import METRIC_TABLES, summarise

__all__ = ["export", "default_name"]

#: How images enter the model (data.to_float and inference.TrainedModel.inputs), written into config.json.
INPUT = {
    "dtype": "uint8, as in MedMNIST's .npz files",
    "layout_2d": "(N, H, W) grayscale or (N, H, W, 3) RGB -> (N, 3, H, W); grayscale repeated to 3 channels",
    "layout_3d": "(N, D, H, W) -> (N, 1, D, H, W)",
    "normalisation": "x / 127.5 - 1 (uint8 0..255 -> float32 -1..1), no per-channel mean or std",
}
CARD_METRICS = ("accuracy", "macro_f1", "macro_auroc", "ece")


def default_name(cfg, task: str | None, strategy: str | None, seed: int) -> str:
    """``stmedfm-<study>-backbone-seed0`` or ``stmedfm-<study>-<task>-<strategy>-seed0``: the folder (and Hub) name."""
    what = "backbone" if task is None else f"{task}-{strategy}"
    return f"stmedfm-{cfg.study}-{what}-seed{seed}"


def export(results: str | os.PathLike, out: str | os.PathLike, task: str | None = None, strategy: str | None = None,
           seed: int | None = None, pretrained: bool = False) -> Path:
    """Write one model of the store ``results`` into the folder ``out``; returns ``out``. See the module docstring."""
    store = ResultStore(results)
    cfg = store.config()
    seed = cfg.seeds[0] if seed is None else seed
    if seed not in cfg.seeds:
        raise StmedfmError(f"{store.root} has no seed {seed}; its seeds: {cfg.seeds}.")
    software_now = software()
    if pretrained:
        if task is not None or strategy is not None:
            raise StmedfmError("--pretrained exports the multi-task checkpoint with every head: give no --task or "
                               "--strategy.")
        model, config, record = _backbone(store, cfg, seed)
    else:
        trained = load_model(store.root, task=task, strategy=strategy, seed=seed)
        spec = trained.spec
        strategy_ = strategies.get(spec.strategy)
        model = trained.model
        record = store.read_run(trained.run_id)
        config = {"kind": "downstream", "task": spec.task, "strategy": spec.strategy,
                  "strategy_label": strategy_.label, "strategy_description": strategy_.description,
                  "inserts": list(strategy_.inserts), "trains": list(strategy_.trains),
                  "peft": hub.peft_dict(options.peft_method(cfg, spec.strategy)), "run_id": trained.run_id,
                  "spec": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(spec).items()},
                  "metrics": record["metrics"], "trainable_params": record.get("trainable_params")}
    # the sizes of the inserted modules as the run trained them: its own options (strategy_options) over the shared
    # fields, so a study that set e.g. strategy_options: {lora: {r: 8}} exports a model of that shape
    own = options.resolve(cfg, config["strategy"]) if config.get("kind") == "downstream" else {}
    sizes = {"lora_r": own.get("r", cfg.lora_r), "lora_alpha": own.get("alpha", cfg.lora_alpha),
             "adapter_bottleneck": own.get("bottleneck", cfg.adapter_bottleneck)}
    heads = {t: [model.heads[t].out_features, model.task_dims[t]] for t in model.heads}
    config = {"format": hub.FORMAT, **config, "heads": heads,
              "labels": {t: list(registry.get(t).labels) for t in heads},
              "width": model.width, "hidden": model.hidden, "n_blocks": model.n_blocks, "ln_affine": model.ln_affine,
              **sizes,
              "image_size": cfg.image_size, "input": INPUT, "seed": seed, "study": cfg.study,
              "study_config": cfg.to_dict(), "notices": store.notices(),
              "provenance": {"computed_with": record.get("provenance", {}), "exported_with": software_now},
              "data": {t: f"{i.kind}:{i.digest}" for t, i in study_data(cfg).items()
                       if t in {*heads, *cfg.pretrain_tasks}}}
    config.setdefault("inserts", [])
    artefact = hub.STMedFMHub(**config)
    missing = artefact.load_state_dict(model.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    return _write(artefact, lambda digest: _card(store, cfg, config, digest), Path(out))


def _backbone(store: ResultStore, cfg, seed: int):
    tasks = tuple(cfg.pretrain_tasks)
    if not tasks:
        raise StmedfmError(f"{store.root} pretrains nothing (pretrain_tasks is empty): there is no backbone to export.")
    job = job_id(cfg, PretrainJob(seed, tasks), study_data(cfg))
    path = store.checkpoint_path(job)
    if not path.is_file():
        raise StmedfmError(f"{store.root} has no pretrained checkpoint of seed {seed} ({path.name}): run the study "
                           f"first (`stmedfm study PARAMS`).")
    state = checkpoint_state(torch.load(path, map_location="cpu", weights_only=True), job)
    if state is None:
        raise StmedfmError(f"{path} holds another checkpoint than seed {seed}'s: rerun the study to rebuild it.")
    model = STMedFM(list(tasks), width=cfg.width, ln_affine=cfg.ln_affine)
    model.load_state_dict(state)
    losses = {}
    if store.loss_path(job).is_file():
        frame = pd.read_csv(store.loss_path(job))
        losses = {t: float(g["loss"].tail(20).mean()) for t, g in frame.groupby("task", sort=False)}
    config = {"kind": "backbone", "task": None, "strategy": None, "pretrain_job": job,
              "pretrain_loss_last20": losses}
    return model, config, {"provenance": {}}


def _intervals(store: ResultStore, tasks, strategy: str | None) -> pd.DataFrame:
    """Mean ± 95 % CI over the store's seeds of the transfer runs of ``tasks`` (x ``strategy``, or every one)."""
    try:
        tidy = store.table("metrics")
    except StmedfmError:
        return pd.DataFrame()
    tidy = tidy[(tidy["experiment"] == "transfer") & tidy["variant"].fillna("").eq("") & tidy["task"].isin(tasks)
                & tidy["metric"].isin(CARD_METRICS)]
    if strategy is not None:
        tidy = tidy[tidy["strategy"] == strategy]
    return summarise(tidy, ["task", "strategy", "metric"])


def _fmt(row) -> str:
    ci = "" if pd.isna(row["ci95"]) else f" ± {row['ci95']:.3f}"
    return f"{row['mean']:.3f}{ci} (n = {int(row['n'])})"


def _card(store: ResultStore, cfg, config: dict, digest: str) -> ModelCard:
    """The model card: front matter by ``ModelCardData``, the text by us, every number read from the store."""
    tasks = list(config["heads"])
    flags = [registry.get(t) for t in dict.fromkeys([*cfg.pretrain_tasks, *tasks])]
    noncommercial = any("NC" in f.license for f in flags)
    data = ModelCardData(library_name="stmedfm", license="cc-by-nc-4.0" if noncommercial else "cc-by-4.0",
                         tags=["medmnist", "medical-imaging", "image-classification", "stmedfm", "research-only"],
                         pipeline_tag="image-classification")
    name = default_name(cfg, config["task"], config["strategy"], config["seed"])
    what = (f"the multi-task pretrained STMedFM backbone of seed {config['seed']}, with one head per pretraining task"
            if config["kind"] == "backbone" else
            f"STMedFM adapted to **{config['task']}** by **{config['strategy_label']}** "
            f"({config['strategy_description']}), seed {config['seed']}, run `{config['run_id']}`")
    lines = [f"# {name}", "", f"This folder holds {what}, exported by `stmedfm export` from the study "
             f"`{cfg.study}` of the stmedfm repository.", ""]
    for notice in config["notices"]:
        lines += [f"> **{notice}**", ""]
    lines += ["## Intended use", "",
              "Research and education: reproducing and extending a study of small multi-task backbones on MedMNIST. "
              "**Not for clinical use**: it was trained on 28-pixel research images, at small budgets, and is "
              "validated for nothing but the metrics below.", "",
              "```python", "from stmedfm.run.inference import load_model", f'm = load_model("{name}")   # this folder',
              "probabilities = m.predict(images)   # uint8 images in MedMNIST's layout", "```", "",
              "or `stmedfm.run.hub.STMedFMHub.from_pretrained(folder)` for the `torch.nn.Module` (forward(x, task)).", "",
              "## Training data and budgets", "",
              "| flag | role | classes | official split sizes (train / val / test) | licence | file used |", "|---|---|---|---|---|---|"]
    for f in flags:
        role = " + ".join(r for r, on in (("pretraining", f.flag in cfg.pretrain_tasks), ("downstream", f.flag in tasks))
                          if on)
        n = f.n_samples
        lines.append(f"| {f.flag} | {role} | {f.n_classes} | {n['train']} / {n['val']} / {n['test']} | {f.license} | "
                     f"`{config['data'].get(f.flag, '')}` |")
    lines += ["", f"Images {cfg.image_size} px. Pretraining: {cfg.pretrain_steps} steps, lr {cfg.pretrain_lr}, "
              f"{cfg.task_sampling} task sampling, AdamW (weight decay {cfg.weight_decay}), class weights "
              f"{'on' if cfg.class_weights else 'off'}."]
    if config["kind"] == "downstream":
        spec = config["spec"]
        lines += [f"Adaptation: {spec['steps']} steps at lr {spec['lr']} from the checkpoint of "
                  f"{' + '.join(spec['pretrain']) or 'no pretraining (scratch)'}; "
                  f"{config['trainable_params']} trainable parameters."]
    lines += ["", "## Metrics", ""]
    if config["kind"] == "downstream":
        lines += [f"This model on the test split of {config['task']}: " + ", ".join(
            f"{m} {config['metrics'][m]:.3f}" for m in CARD_METRICS if m in config["metrics"]) + ".", ""]
    summary = _intervals(store, tasks, config["strategy"])
    if summary.empty:
        lines += ["The store holds no tidy metrics table for intervals.", ""]
    else:
        wide = summary.assign(value=summary.apply(_fmt, axis=1)).pivot_table(
            index=["task", "strategy"], columns="metric", values="value", aggfunc="first", sort=False)
        cols = [m for m in CARD_METRICS if m in wide.columns]
        lines += [f"The same task(s) and strategy over the study's seeds: mean ± 95 % t-interval half-width "
                  f"(n seeds), test split, from `{store.root.name}/metrics.csv`:", "",
                  "| task | strategy | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
        for (t, s), row in wide.iterrows():
            lines.append(f"| {t} | {s} | " + " | ".join(str(row[c]) for c in cols) + " |")
        lines.append("")
    if config.get("pretrain_loss_last20"):
        lines += ["Pretraining loss, mean of the last 20 steps of each task: " + ", ".join(
            f"{t} {v:.3f}" for t, v in config["pretrain_loss_last20"].items()) + ".", ""]
    prov = config["provenance"]
    computed = prov["computed_with"]
    lines += ["## Provenance", "",
              f"- run: `{config.get('run_id') or config.get('pretrain_job')}` of study `{cfg.study}`; its parameters "
              f"are `study_config` in `config.json`",
              f"- computed with stmedfm {computed.get('stmedfm', '?')} (commit {computed.get('git_commit', '?')}), "
              f"torch {computed.get('torch', '?')}, on {computed.get('machine', '?')}" if computed else
              "- computed by the study's workers (checkpoint of the store)",
              f"- exported with stmedfm {prov['exported_with']['stmedfm']} (commit "
              f"{prov['exported_with']['git_commit'] or '?'}), torch {prov['exported_with']['torch']}",
              f"- weights: `model.safetensors`, sha256 `{digest}` (checked on every load)", "",
              "## Limitations", "",
              "- 28-pixel MedMNIST images; one seed of a study whose conclusions rest on intervals over seeds (a "
              "single model can sit anywhere in the interval above).",
              "- Probabilities are the softmax of the logits; the study reports temperature scaling but does not "
              "apply it, and neither does this model.",
              "- Trained on one public benchmark per task; no external validation, no subgroup analysis.", "",
              "## Licence", "",
              "Code: Apache-2.0. Data: MedMNIST v2 (Yang et al., Scientific Data 2023), CC BY 4.0 — DermaMNIST CC "
              "BY-NC 4.0. These weights are derived from the data above and carry its licence "
              f"({data.license}).", "",
              "## Sharing", "",
              f"`huggingface_hub.upload_folder(repo_id=\"you/{name}\", folder_path=\"{name}\")` uploads this folder "
              "as it is, card included (after `hf auth login`; needs network); then "
              f"`STMedFMHub.from_pretrained(\"you/{name}\")` loads it anywhere, digest checked. "
              "`STMedFMHub.push_to_hub` (the mixin's) uploads the weights and config.json with a generic card.", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _write(artefact: hub.STMedFMHub, card, out: Path) -> Path:
    if out.exists() and any(out.iterdir()) and not hub.is_export(out):
        raise StmedfmError(f"{out} exists and is not an exported model: choose a new folder (nothing was written).")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (tmp / "README.md").touch()  # the card is ours (written below): the mixin writes one only where none is
        artefact.save_pretrained(tmp)  # weights + config.json (with the sha256)
        card(hub.read_config(tmp)["weights_sha256"]).save(tmp / "README.md")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
