"""Training and evaluation loops: multi-task pretraining, one downstream run, evaluation.

Everything is a pure function of its inputs and an integer seed, so a run gives the same numbers in any
process and with any number of workers (each run uses one torch thread; see :mod:`stmedfm.run.study`).
Batches are drawn from in-memory uint8 tensors, converted and flipped as whole batches; evaluation runs
under ``torch.inference_mode()`` once per split, and temperature scaling reuses the validation logits.

Decisions the paper leaves open, written down here:

* A step draws ``batch`` indices uniformly *with replacement* from the training pool (no epochs: the budgets
  are in steps, Table 3). A pool smaller than the batch (few-shot) is used whole, in random order.
* Class weights come from the labels of the pool actually trained on (a balanced K-shot pool gets weights 1).
* A downstream run on a task that was pretrained starts from the pretrained head; otherwise a fresh head.
  Downstream models keep one head only, which is how Table 4 counts parameters.
* No learning-rate schedule, no gradient clipping: the paper names none.
* ``precision`` (:mod:`stmedfm.model.precision`): with bf16/fp16 only the forward pass (and hence its backward) runs
  under autocast; the loss is computed in fp32 from the logits, and weights, optimiser state and metrics stay
  fp32. fp32 adds no code path at all (the context is a no-op), so its numbers are unchanged to the bit.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from stmedfm import data as D
from stmedfm.core import options, registry, strategies
from stmedfm.model.calibration import apply_temperature, fit_temperature, softmax
from stmedfm.core.config import StudyConfig
from stmedfm.model.metrics import brier, classification_metrics, confusion, ece, nll, per_class_report, reliability_bins
from stmedfm.model import STMedFM
from stmedfm.model.peft import count_parameters, prepare
from stmedfm.model.precision import Precision
from stmedfm.model.precision import resolve as resolve_precision
from stmedfm.core.records import RunResult, RunSpec, sampling_probabilities

#: Names of the phases of a run, as torch.profiler annotations (what ``stmedfm bench --profile`` sums).
#: ``record_function`` costs about a microsecond when no profiler is running, and there are a few per run.
PHASE_PRETRAIN, PHASE_TRAIN, PHASE_EVALUATE, PHASE_METRICS = ("phase: pretrain", "phase: train", "phase: evaluate",
                                                              "phase: metrics")


#: Metrics of the validation split carry this prefix (``val_macro_auroc``); selection reads only these.
VAL_PREFIX = "val_"


def derive_seed(*parts) -> int:
    """A stable 63-bit seed from any parts (unlike ``hash``, identical in every process)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Pool:
    """What one task trains on: a split (or a subset of it) plus the loss weights derived from it."""

    task: str
    images: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor | None
    batch_size: int
    flips: bool = True  #: False for label-unsafe flips (flip_policy 'label_safe' on a lateral flag)
    #: rows of ``images`` in the pool (a subset: K-shot, data fraction), None = all; ``labels`` are the pool's own.
    #: The subset's images are gathered per batch from the (memory-mapped) split, never copied as a whole.
    rows: torch.Tensor | None = None

    def batch(self, g: torch.Generator, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.labels)
        if n <= self.batch_size:
            idx = torch.randperm(n, generator=g)
        else:
            idx = torch.randint(n, (self.batch_size,), generator=g)
        raw = self.images[idx if self.rows is None else self.rows[idx]]
        D.touched(raw)
        x = D.to_float(raw)
        if augment and self.flips:
            x = D.random_flip(x, g)
        return x, self.labels[idx]


def make_pool(cfg: StudyConfig, task: str, indices: torch.Tensor | None = None, class_weights: bool | None = None) -> Pool:
    """Training pool of ``task`` (optionally a subset), with clipped inverse-frequency weights when enabled."""
    split = D.load_task(task, size=cfg.image_size, data_dir=cfg.data_dir)["train"]
    images, labels = split.images, split.labels
    if indices is not None:
        labels = labels[indices]
    use_weights = cfg.class_weights if class_weights is None else class_weights
    n_classes = registry.get(task).n_classes
    weights = D.class_weights(labels, n_classes, clip=tuple(cfg.class_weight_clip)) if use_weights else None
    flips = not (cfg.flip_policy == "label_safe" and registry.get(task).lateral)
    return Pool(task, images, labels, weights, cfg.batch_size(task), flips, rows=indices)


def loss_fn(logits: torch.Tensor, y: torch.Tensor, pool: Pool, log_normalise: bool = False) -> torch.Tensor:
    w = None if pool.weights is None else pool.weights.to(logits.device)
    loss = F.cross_entropy(logits, y.to(logits.device), weight=w)
    if log_normalise:  # UMedPT: a task's loss is divided by log(C), so tasks with many classes do not dominate
        loss = loss / math.log(max(logits.shape[1], 2))
    return loss


def optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters only (Table 3; no schedule): frozen weights get no optimiser state, so
    a PEFT run holds moments for its few trainable tensors. Public because the benchmark's baseline must train
    with the very same optimiser."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)


def precision_of(cfg: StudyConfig, dev: torch.device) -> Precision:
    """The precision ``cfg`` asks for, resolved on ``dev`` (``auto`` picks; see :mod:`stmedfm.model.precision`)."""
    return resolve_precision(cfg.precision, dev)


def _backward(loss: torch.Tensor, scaler) -> None:
    (loss if scaler is None else scaler.scale(loss)).backward()


def _step(opt: torch.optim.Optimizer, scaler) -> None:
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()


def train_steps(model: STMedFM, pool: Pool, steps: int, lr: float, cfg: StudyConfig, g: torch.Generator) -> list[float]:
    """Single-task training: ``steps`` AdamW updates of the trainable parameters; returns the loss of each step."""
    dev = next(model.parameters()).device
    prec = precision_of(cfg, dev)
    scaler = prec.scaler()
    opt = optimizer(model, lr, cfg.weight_decay)
    model.train()
    losses = []
    for _ in range(steps):
        x, y = pool.batch(g, cfg.augment)
        with prec.autocast():
            logits = model(x.to(dev), pool.task)
        loss = loss_fn(logits.float(), y, pool)  # .float(): a no-op in fp32; fp32 loss under autocast
        opt.zero_grad(set_to_none=True)
        _backward(loss, scaler)
        _step(opt, scaler)
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------------------------------------------------
def task_schedule(cfg: StudyConfig, tasks: list[str], steps: int, g: torch.Generator) -> list[list[str]]:
    """The tasks of every pretraining step: one drawn task per step, or every task (``all_tasks``)."""
    if cfg.task_sampling == "all_tasks":
        return [list(tasks) for _ in range(steps)]
    probs = sampling_probabilities(cfg, tasks)
    p = torch.tensor([probs[t] for t in tasks], dtype=torch.float64)
    draws = torch.multinomial(p, steps, replacement=True, generator=g)
    return [[tasks[int(i)]] for i in draws]


def build_model(cfg: StudyConfig, tasks: list[str], seed: int) -> STMedFM:
    torch.manual_seed(seed)
    return STMedFM(tasks, width=cfg.width, ln_affine=cfg.ln_affine)


def pretrain(cfg: StudyConfig, tasks: list[str], seed: int) -> tuple[dict, pd.DataFrame]:
    """Multi-task pretraining (Section III.D); returns the state dict and the loss of every step with its task.

    ``proportional``/``uniform``/``temperature`` draw one task per step and update the shared backbone and that
    task's head; ``all_tasks`` (UMedPT) accumulates one batch of every task before each optimiser step.
    """
    tasks = list(tasks)
    model = build_model(cfg, tasks, derive_seed(seed, "pretrain-init", *tasks)).to(device())
    dev = next(model.parameters()).device
    pools = {t: make_pool(cfg, t) for t in tasks}
    g = generator(derive_seed(seed, "pretrain-data", *tasks))
    prec = precision_of(cfg, dev)
    scaler = prec.scaler()
    opt = optimizer(model, cfg.pretrain_lr, cfg.weight_decay)
    model.train()
    rows = []
    with torch.profiler.record_function(PHASE_PRETRAIN):
        for step, step_tasks in enumerate(task_schedule(cfg, tasks, cfg.pretrain_steps, g)):
            opt.zero_grad(set_to_none=True)
            for t in step_tasks:
                x, y = pools[t].batch(g, cfg.augment)
                with prec.autocast():
                    logits = model(x.to(dev), t)
                loss = loss_fn(logits.float(), y, pools[t], cfg.loss_log_normalise)
                _backward(loss, scaler)
                rows.append((step, t, loss.item()))
            _step(opt, scaler)
    losses = pd.DataFrame(rows, columns=["step", "task", "loss"])
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, losses


# ---------------------------------------------------------------------------------------------------------------
class _Replay(torch.nn.Module):
    """Stands in for a stem during evaluation: returns the stem's recorded output batches, in order."""

    def __init__(self, outputs: list[torch.Tensor]) -> None:
        super().__init__()
        self._outputs = iter(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = next(self._outputs)
        if z.shape[0] != x.shape[0]:
            raise RuntimeError("replayed stem features do not match the evaluation batches")
        return z


#: Stem outputs of evaluation splits, per (stem weights, split, batching): see :func:`predict_logits`.
_STEM_CACHE: OrderedDict[tuple, tuple[torch.Tensor, list[torch.Tensor]]] = OrderedDict()
STEM_CACHE_SIZE = 32


def _weights_digest(module: torch.nn.Module) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for name, t in module.state_dict().items():
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()


@torch.inference_mode()
def predict_logits(model: STMedFM, task: str, images: torch.Tensor, batch_size: int,
                   reuse: tuple | None = None, precision: Precision | None = None) -> np.ndarray:
    """Logits of a whole split, in evaluation batches, without autograd bookkeeping.

    ``reuse`` = ``(split images, *names)``, the loaded split ``images`` come from and what names the rows taken
    from it (task, split, subset digest), lets runs whose stem is frozen share its work: LoRA, adapters and the linear probe never change the convolutional stem, so every such run from the
    same checkpoint would compute the same stem outputs on the same batches. They are recorded once per process,
    keyed by a digest of the stem's weights, the split and the batching, and replayed through the model's own
    forward (the stem module is swapped for a replay of its outputs), so the logits are bit-identical. Evaluating
    the stem is most of the cost of evaluation, and evaluation most of the cost of a few-shot run.

    ``precision`` (default fp32) runs the forward pass under its autocast; logits come back as float64.
    Batches are converted one at a time from ``images`` (which may be memory-mapped), so memory does not grow
    with the split.
    """
    model.eval()
    dev = next(model.parameters()).device
    prec = precision or resolve_precision("fp32", dev)
    starts = range(0, len(images), batch_size)
    name = "stem3d" if model.task_dims.get(task) == 3 else "stem2d"
    stem = getattr(model, name)
    key = source = None
    if reuse is not None and not any(p.requires_grad for p in stem.parameters()):
        source, *names = reuse
        key = (_weights_digest(stem), id(source), tuple(names), len(images), batch_size, str(dev),
               torch.get_num_threads(), prec.name)
    hit = _STEM_CACHE.get(key) if key is not None else None
    if hit is not None and hit[0] is source:  # the very split recorded (a reloaded file is another tensor)
        _STEM_CACHE.move_to_end(key)
        setattr(model, name, _Replay(hit[1]))
        try:
            out = [_forward(model, images[i:i + batch_size], task, dev, prec) for i in starts]
        finally:
            setattr(model, name, stem)
        return torch.cat(out).double().numpy()
    recorded: list[torch.Tensor] = []
    handle = stem.register_forward_hook(lambda m, a, z: recorded.append(z.clone())) if key is not None else None
    try:
        out = [_forward(model, images[i:i + batch_size], task, dev, prec) for i in starts]
    finally:
        if handle is not None:
            handle.remove()
    if key is not None:
        _STEM_CACHE[key] = (source, recorded)  # holding source keeps its id from being reused
        while len(_STEM_CACHE) > STEM_CACHE_SIZE:
            _STEM_CACHE.popitem(last=False)
    return torch.cat(out).double().numpy()


def _forward(model: STMedFM, batch: torch.Tensor, task: str, dev: torch.device, prec: Precision) -> torch.Tensor:
    D.touched(batch, gathered=False)
    with prec.autocast():
        return model(D.to_float(batch).to(dev), task).float().cpu()


#: Evaluation batches hold at most this much of first-layer activations (2D: 32 channels, 3D: 16, fp32). At 28 px
#: (and 2D at 64 px) the configured batch sizes stay far below it, so nothing changes there; at 224 px a 2D batch of
#: 256 would need 1.6 GB per activation tensor, so it is split into batches of 40: memory stays flat in image size.
EVAL_ACTIVATION_BYTES = 256 << 20


def eval_batch_size(cfg: StudyConfig, task: str, image_shape: tuple[int, ...]) -> int:
    """The evaluation batch of ``task``: the configured one, capped by :data:`EVAL_ACTIVATION_BYTES`."""
    channels = 16 if registry.get(task).dim == 3 else 32
    per_sample = channels * math.prod(image_shape[-3:] if registry.get(task).dim == 3 else image_shape[-2:]) * 4
    return max(1, min(cfg.eval_batch_size(task), EVAL_ACTIVATION_BYTES // per_sample))


def eval_subset(n: int, cfg: StudyConfig, task: str, split: str) -> torch.Tensor | None:
    """The fixed evaluation subset of smoke runs (``eval_max_samples``); None = the whole split."""
    if cfg.eval_max_samples is None or n <= cfg.eval_max_samples:
        return None
    g = generator(derive_seed("eval-subset", task, split))
    return torch.randperm(n, generator=g)[: cfg.eval_max_samples].sort().values


def downstream_model(cfg: StudyConfig, spec: RunSpec, pretrained: dict | None) -> STMedFM:
    """A single-head model for ``spec``: fresh (scratch) or from the checkpoint, prepared for the strategy."""
    init_seed = derive_seed(spec.seed, "head-init", spec.task, spec.k, spec.fewshot_split)
    if not strategies.get(spec.strategy).pretrained:
        model = build_model(cfg, [spec.task], init_seed)
    else:
        if pretrained is None:
            raise ValueError(f"strategy {spec.strategy} needs a pretrained checkpoint")
        model = build_model(cfg, list(spec.pretrain), init_seed)
        model.load_state_dict(pretrained)
        if spec.task not in model.heads:
            torch.manual_seed(init_seed)
            model.add_head(spec.task)
        model.keep_heads([spec.task])
    own = options.resolve(cfg, spec.strategy)  # its own options (stmedfm.core.options), the shared fields by default
    return prepare(model, spec.strategy, spec.task, options=own, method=options.peft_method(cfg, spec.strategy))


def run_downstream(cfg: StudyConfig, spec: RunSpec, pretrained: dict | None) -> RunResult:
    """Adapt, then evaluate on the test split; temperature is fitted on the validation split."""
    t0 = time.perf_counter()
    model, task_data, (total, trainable) = adapt(cfg, spec, pretrained)
    metrics, extras, predictions = evaluate(cfg, spec, model, task_data, with_predictions=True)
    return RunResult(spec, metrics, total, trainable, time.perf_counter() - t0, extras, predictions=predictions)


def adapt(cfg: StudyConfig, spec: RunSpec, pretrained: dict | None) -> tuple[STMedFM, D.TaskData, tuple[int, int]]:
    """The training half of a run: ``(trained model, task data, (total, trainable) parameter counts)``.
    Deterministic for a spec, a checkpoint and a torch thread count (:mod:`stmedfm.run.inference` relies on it)."""
    task_data = D.load_task(spec.task, size=cfg.image_size, data_dir=cfg.data_dir)
    info = task_data.info
    indices = None
    if spec.k:
        g_k = generator(derive_seed(spec.seed, "kshot", spec.task, spec.k, spec.fewshot_split))
        indices = D.kshot_indices(task_data["train"].labels, spec.k, info.n_classes, g_k)
    elif spec.fraction != 1.0:  # data efficiency: a stratified subset seeded by (seed, task, fraction, repeat)
        g_f = generator(derive_seed(spec.seed, "fraction", spec.task, spec.fraction, spec.fewshot_split))
        indices = D.stratified_fraction_indices(task_data["train"].labels, spec.fraction, g_f)
    pool = make_pool(cfg, spec.task, indices, spec.class_weights)
    model = downstream_model(cfg, spec, pretrained).to(device())
    counts = count_parameters(model)
    g = generator(derive_seed(spec.seed, "train-data", spec.task, spec.k, spec.fewshot_split))
    with torch.profiler.record_function(PHASE_TRAIN):
        train_steps(model, pool, spec.steps, spec.lr, cfg, g)
    return model, task_data, counts


def evaluate(cfg: StudyConfig, spec: RunSpec, model: STMedFM, task_data: D.TaskData,
             with_predictions: bool = False) -> tuple:
    """The evaluation half of a run: its metrics and details (:func:`run_metrics`) on the test and validation
    splits (validation: ``val_*`` metrics for model selection, and the temperature), on the fixed subsets of
    ``eval_max_samples``. ``with_predictions`` adds a third item: the test probabilities as float16."""
    logits = {}
    labels = {}
    for split in ("val", "test"):
        s = task_data[split]
        sub = eval_subset(len(s), cfg, spec.task, split)
        images, y = (s.images, s.labels) if sub is None else (s.images[sub], s.labels[sub])
        # runs with a frozen stem from the same checkpoint share the stem's outputs (see predict_logits)
        rows = None if sub is None else hashlib.sha1(sub.numpy().tobytes()).hexdigest()
        reuse = (s.images, spec.task, split, rows)
        with torch.profiler.record_function(PHASE_EVALUATE):
            ebs = eval_batch_size(cfg, spec.task, tuple(images.shape[1:]))
            logits[split] = predict_logits(model, spec.task, images, ebs, reuse=reuse,
                                           precision=precision_of(cfg, next(model.parameters()).device))
        labels[split] = y.numpy()
    with torch.profiler.record_function(PHASE_METRICS):
        metrics, extras = run_metrics(cfg, spec, task_data.info, logits, labels)
    if not with_predictions:
        return metrics, extras
    return metrics, extras, softmax(logits["test"]).astype(np.float16)


def run_metrics(cfg: StudyConfig, spec: RunSpec, info, logits: dict, labels: dict) -> tuple[dict, dict]:
    """Test metrics, temperature-scaled ones (temperature fitted on the validation logits) and the details."""

    probs = softmax(logits["test"])
    metrics = classification_metrics(labels["test"], probs)
    if "val" in logits:  # the same metrics on the validation split: what hyperparameters are selected on
        val = classification_metrics(labels["val"], softmax(logits["val"]))
        metrics.update({f"{VAL_PREFIX}{m}": v for m, v in val.items()})
    if cfg.temperature_scaling:
        temperature = fit_temperature(logits["val"], labels["val"])
        scaled = apply_temperature(logits["test"], temperature)  # only what is reported after scaling:
        metrics.update({"ece_ts": ece(labels["test"], scaled), "brier_ts": brier(labels["test"], scaled),
                        "nll_ts": nll(labels["test"], scaled)})  # the same functions classification_metrics uses
        metrics["temperature"] = temperature
    extras = {}
    if spec.detail:
        extras = {
            "per_class": per_class_report(labels["test"], probs, list(info.labels)),
            "confusion": _confusion_frame(confusion(labels["test"], probs)),
            "reliability": reliability_bins(labels["test"], probs),
        }
    return metrics, extras


def _confusion_frame(matrix: np.ndarray) -> pd.DataFrame:
    true, pred = np.indices(matrix.shape)
    return pd.DataFrame({"true": true.ravel(), "pred": pred.ravel(), "count": matrix.ravel()})
