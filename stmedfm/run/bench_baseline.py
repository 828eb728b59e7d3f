"""The slow reference of ``stmedfm bench``: how MedMNIST's own examples train, run on our model and protocol.

A per-item ``torch.utils.data.Dataset`` turns each image into a PIL image and then into a tensor with per-item
transforms (ToTensor, Normalize(0.5, 0.5), random flips; written here with PIL and numpy, no torchvision),
batched by a ``DataLoader`` in the same process, fed to the model in the default contiguous NCHW layout, fp32,
under ``torch.no_grad()`` for evaluation, every run in one process with torch's default threads. 3D volumes
cannot be PIL images, so their per-item transforms are numpy (as MedMNIST's 3D examples do). It trains the same
model with the same batch sizes, budgets, batch indices and evaluation splits as the study; it only differs in
how batches are made and fed.

Only :mod:`stmedfm.run.bench` imports this module (an import-linter ``protected`` contract in ``pyproject.toml``):
it is a yardstick, never a way to compute results.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from stmedfm import data as D
from stmedfm.core import registry
from stmedfm.core.config import StudyConfig
from stmedfm.run.planning import preflight, study_data, unique_runs
from stmedfm.core.records import plan, pretrain_jobs
from stmedfm.run.train import (build_model, derive_seed, downstream_model, eval_subset, generator, make_pool, optimizer,
                           run_metrics, task_schedule)


class PerItem2D(Dataset):
    """MedMNIST's ``__getitem__``: array -> PIL image (grayscale converted to RGB, as ``as_rgb=True``) -> per-item
    random flips (RandomHorizontalFlip / RandomVerticalFlip on the PIL image) -> ToTensor -> Normalize(.5, .5)."""

    def __init__(self, split: D.Split, n_channels: int, flip: bool, seed: int = 0) -> None:
        x = split.images
        # MedMNIST's own layout: (N, H, W) for grayscale, (N, H, W, 3) for RGB
        self.images = x[:, 0].numpy().copy() if n_channels == 1 else x.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = split.labels.numpy()
        self.flip = flip
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.images[i]).convert("RGB")
        if self.flip:
            if self.rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if self.rng.random() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        x = np.asarray(img, dtype=np.float32) / 255.0  # ToTensor: HWC [0, 255] -> CHW [0, 1]
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
        x = (x - 0.5) / 0.5  # Normalize(mean=.5, std=.5)
        return x, int(self.labels[i])


class PerItem3D(Dataset):
    """MedMNIST 3D style: one volume at a time as a numpy array, per-item flips, scaled to [-1, 1]."""

    def __init__(self, split: D.Split, flip: bool, seed: int = 0) -> None:
        self.images = split.images.numpy()  # (N, 1, D, H, W)
        self.labels = split.labels.numpy()
        self.flip = flip
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        x = self.images[i].astype(np.float32) / 255.0
        if self.flip:
            for axis in (1, 2, 3):
                if self.rng.random() < 0.5:
                    x = np.flip(x, axis)
        x = torch.from_numpy(np.ascontiguousarray(x))
        return (x - 0.5) / 0.5, int(self.labels[i])


def per_item_dataset(task: str, split: D.Split, flip: bool, seed: int = 0) -> Dataset:
    """The MedMNIST-style dataset of ``task``'s ``split``: PIL per item for 2D, numpy per item for 3D."""
    info = registry.get(task)
    return PerItem3D(split, flip, seed) if info.dim == 3 else PerItem2D(split, info.n_channels, flip, seed)


class PoolBatches(Sampler):
    """The batch indices our ``Pool.batch`` draws (uniform with replacement; a small pool whole, shuffled), so the
    baseline trains on the same samples and only the pipeline differs."""

    def __init__(self, n: int, batch_size: int, steps: int, g: torch.Generator) -> None:
        self.n, self.batch_size, self.steps, self.g = n, batch_size, steps, g

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            if self.n <= self.batch_size:
                yield torch.randperm(self.n, generator=self.g).tolist()
            else:
                yield torch.randint(self.n, (self.batch_size,), generator=self.g).tolist()


def nchw(model: torch.nn.Module) -> torch.nn.Module:
    """The model with contiguous (NCHW / NCDHW) conv weights, as a default PyTorch model has."""
    model.stem2d.to(memory_format=torch.contiguous_format)
    model.stem3d.to(memory_format=torch.contiguous_format)
    return model


def baseline_forward(model, x: torch.Tensor, task: str) -> torch.Tensor:
    """The model's computation on an NCHW batch, without our channels-last conversion."""
    stem = model.stem3d if x.ndim == 5 else model.stem2d
    return model.heads[task](model.encoder(stem(x)))


def per_item_loader(task: str, split: D.Split, indices, batch_size: int, steps: int, g: torch.Generator,
                    flip: bool, seed: int) -> DataLoader:
    """A ``DataLoader`` over the per-item dataset of ``split`` (rows ``indices``, None = all) that yields the very
    batch indices our pools draw (:class:`PoolBatches`), so the two pipelines train on the same samples."""
    if indices is not None:
        split = D.Split(split.images[indices], split.labels[indices])
    ds = per_item_dataset(task, split, flip, seed)
    return DataLoader(ds, batch_sampler=PoolBatches(len(ds), batch_size, steps, g), num_workers=0)


def baseline_train(model, task: str, loader, weights, lr: float, cfg: StudyConfig) -> None:
    """The training loop of MedMNIST's examples: one batch of the loader per step, the study's optimiser."""
    opt = optimizer(model, lr, cfg.weight_decay)
    model.train()
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(baseline_forward(model, x, task), y, weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()


def baseline_logits(model, task: str, split: D.Split, batch_size: int) -> np.ndarray:
    """Logits of a whole split through the per-item pipeline under ``torch.no_grad()`` (float64, as ours)."""
    loader = DataLoader(per_item_dataset(task, split, flip=False), batch_size=batch_size, shuffle=False)
    model.eval()
    with torch.no_grad():
        out = [baseline_forward(model, x, task) for x, _ in loader]
    return torch.cat(out).double().numpy()


def baseline_pretrain(cfg: StudyConfig, tasks: list[str], seed: int) -> dict:
    """Multi-task pretraining through per-item loaders, on the task schedule and seeds of ours; the state dict."""
    model = nchw(build_model(cfg, tasks, derive_seed(seed, "pretrain-init", *tasks)))
    g = generator(derive_seed(seed, "pretrain-data", *tasks))
    schedule = task_schedule(cfg, tasks, cfg.pretrain_steps, g)
    steps = {t: sum(t in s for s in schedule) for t in tasks}
    pools = {t: make_pool(cfg, t) for t in tasks}
    loaders = {t: iter(per_item_loader(t, D.load_task(t, cfg.image_size, cfg.data_dir)["train"], None,
                                       cfg.batch_size(t), steps[t], g, cfg.augment, seed)) for t in tasks}
    opt = optimizer(model, cfg.pretrain_lr, cfg.weight_decay)
    model.train()
    for step_tasks in schedule:
        opt.zero_grad()
        for t in step_tasks:
            x, y = next(loaders[t])
            torch.nn.functional.cross_entropy(baseline_forward(model, x, t), y, weight=pools[t].weights).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def baseline_run(cfg: StudyConfig, spec, pretrained: dict | None) -> dict[str, float]:
    """One downstream run through the baseline pipeline; the same metrics as ours."""
    task_data = D.load_task(spec.task, size=cfg.image_size, data_dir=cfg.data_dir)
    indices = None
    if spec.k:
        g_k = generator(derive_seed(spec.seed, "kshot", spec.task, spec.k, spec.fewshot_split))
        indices = D.kshot_indices(task_data["train"].labels, spec.k, task_data.info.n_classes, g_k)
    pool = make_pool(cfg, spec.task, indices, spec.class_weights)
    model = nchw(downstream_model(cfg, spec, pretrained))
    g = generator(derive_seed(spec.seed, "train-data", spec.task, spec.k, spec.fewshot_split))
    loader = per_item_loader(spec.task, task_data["train"], indices, cfg.batch_size(spec.task), spec.steps, g,
                             cfg.augment, spec.seed)
    baseline_train(model, spec.task, loader, pool.weights, spec.lr, cfg)
    logits, labels = {}, {}
    for split in ("val", "test") if cfg.temperature_scaling else ("test",):
        s = task_data[split]
        sub = eval_subset(len(s), cfg, spec.task, split)
        s = s if sub is None else D.Split(s.images[sub], s.labels[sub])
        logits[split] = baseline_logits(model, spec.task, s, cfg.eval_batch_size(spec.task))
        labels[split] = s.labels.numpy()
    return run_metrics(cfg, spec, task_data.info, logits, labels)[0]


def baseline_study(cfg: StudyConfig) -> int:
    """Every unique run of the protocol through the baseline pipeline, one after the other, in this process.
    Nothing is stored (only the time matters); returns the number of runs."""
    preflight(cfg)
    planned = plan(cfg)
    unique = unique_runs(cfg, planned, study_data(cfg))
    states = {}
    for job in pretrain_jobs(planned):
        states[job] = baseline_pretrain(cfg, list(job.tasks), job.seed)
    for p in unique.values():
        baseline_run(cfg, p.spec, states.get(p.pretrain_job))
    return len(unique)
