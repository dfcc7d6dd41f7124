"""Pretraining, LoRA fine-tuning and the from-scratch baseline, all through one training loop.

Why three entry points: ``pretrain`` learns bar dynamics from labels that cost nothing
(the next bar's return bucket), ``finetune_lora`` adapts that backbone to the triple-barrier
labels with few trainable weights, and ``train_from_scratch`` trains the same network on the
same data from random weights, which is the baseline that says whether pretraining helps.

LoRA placement: the adapter wraps the Qwen2Model only. The bar projection, category
embeddings and head stay outside the peft model as ordinary, fully trained modules: they
are small, task-specific and have no pretrained counterpart worth freezing (the head does
not even exist before fine-tuning), so peft's ``modules_to_save`` would add a copy for nothing.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch.nn.parallel import DistributedDataParallel

from smc_core.evaluation.baselines import inverse_frequency_weights
from smc_core.features import FeatureCatalogue
from smc_core.labels import LABELS
from smc_core.model.backbone import BackboneConfig, BarClassifier, batched_logits
from smc_core.model.distributed import current_world, gather_rows, shard, summed
from smc_core.model.encoding import EncoderSpec
from smc_core.model.errors import ModelError

RETURN_BUCKETS = 5
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

Split = tuple  # (numeric windows [N, L, n_num], categorical windows [N, L, n_cat], targets [N])
Progress = Callable[[dict], None]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    patience: int = 3
    """Epochs without a lower validation loss before stopping."""
    seed: int = 0
    threads: int = 1
    """Intra-op threads for the run (training, calibration logits, walk-forward predictions,
    LightGBM), restored afterwards: part of the recipe, never the machine's count. Measured
    on the 2-vCPU box: 2 threads are ~1.4x faster when both cores are idle but 10-30x
    slower whenever the second core is busy (threads spin at every op), so 1 is the safe
    default."""
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    min_train: int = 200
    min_valid: int = 50
    eval_batch_size: int = 1024


@dataclass
class TrainResult:
    model: BarClassifier
    """In eval mode; after ``finetune_lora`` its backbone is the (unmerged) peft model."""
    history: list[dict]
    best_epoch: int
    best_valid_loss: float
    train_seconds: float
    windows_per_second: float
    class_weights: list[float]
    lora: bool
    n_trainable: int = 0


def next_bar_targets(rows: np.ndarray, catalogue: FeatureCatalogue, ends: np.ndarray,
                     edges: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pretraining targets: the bucket of ret_1 at bar end+1 for each window end.

    Pass ``edges=None`` on the training windows to fit quintile edges there, then pass the
    returned edges for validation windows so both use the training distribution. The next
    bar may open a new session; its gap return is still a legitimate thing to predict.
    """
    rows = np.asarray(rows, dtype=np.float64)
    ends = np.asarray(ends, dtype=np.int64).reshape(-1)
    beyond = np.flatnonzero(ends + 1 >= len(rows))
    if len(beyond):
        raise ValueError(f"window ending at row {int(ends[beyond[0]])} has no next bar among the {len(rows)} rows")
    column = catalogue.names.index("ret_1")
    returns = rows[ends + 1, column]
    missing = np.flatnonzero(~np.isfinite(returns))
    if len(missing):
        raise ValueError(f"row {int(ends[missing[0]]) + 1}: feature 'ret_1' is {returns[missing[0]]}")
    if edges is None:
        edges = np.quantile(returns, np.linspace(0, 1, RETURN_BUCKETS + 1)[1:-1])
    return np.searchsorted(edges, returns, side="right").astype(np.int64), np.asarray(edges, dtype=np.float64)


def pretrain(model_or_config: BarClassifier | BackboneConfig | None, numeric, categorical, targets, *,
             spec: EncoderSpec | None = None, valid: Split | None = None, config: TrainConfig | None = None,
             progress: Progress | None = None) -> dict[str, torch.Tensor]:
    """Self-supervised training on next-bar return buckets; returns the body weights (no head).

    ``model_or_config`` is a BarClassifier with a ``RETURN_BUCKETS``-way head, or a backbone
    config (then ``spec`` says the input widths). Without ``valid`` all epochs run.
    """
    config = config or TrainConfig()
    train = _as_split(numeric, categorical, targets)
    valid = _as_split(*valid) if valid is not None else None
    check_training_data(train[2], valid[2] if valid is not None else None,
                        [f"bucket {k}" for k in range(RETURN_BUCKETS)], config)
    with training_context(config):
        if isinstance(model_or_config, BarClassifier):
            model = model_or_config
            if model.head.out_features != RETURN_BUCKETS:
                raise ModelError(f"a pretraining model needs a {RETURN_BUCKETS}-way head, "
                                 f"this one has {model.head.out_features} outputs")
        elif spec is None:
            raise ModelError("pretrain needs the encoder spec to build a model from a backbone config")
        else:
            model = BarClassifier.for_spec(spec, model_or_config, n_classes=RETURN_BUCKETS)
        result = _fit(model, train, valid, config, progress, lora=False)
    return result.model.body_state_dict()


def finetune_lora(base_state: dict[str, torch.Tensor], encoder_spec: EncoderSpec, train: Split, valid: Split,
                  config: TrainConfig | None = None, *, backbone_config: BackboneConfig | None = None,
                  progress: Progress | None = None) -> TrainResult:
    """LoRA on the pretrained backbone; projection, embeddings and a new head trained fully."""
    return _train_classifier(encoder_spec, train, valid, config, backbone_config, progress, base_state)


def train_from_scratch(encoder_spec: EncoderSpec, train: Split, valid: Split, config: TrainConfig | None = None, *,
                       backbone_config: BackboneConfig | None = None,
                       progress: Progress | None = None) -> TrainResult:
    """The baseline: same network and data, random initialisation, every weight trained."""
    return _train_classifier(encoder_spec, train, valid, config, backbone_config, progress, None)


def _train_classifier(encoder_spec: EncoderSpec, train: Split, valid: Split, config: TrainConfig | None,
                      backbone_config: BackboneConfig | None, progress: Progress | None,
                      base_state: dict[str, torch.Tensor] | None) -> TrainResult:
    """Checks first, then one classifier run: LoRA on ``base_state`` when given, else from scratch."""
    config = config or TrainConfig()
    train, valid = _as_split(*train), _as_split(*valid)
    check_training_data(train[2], valid[2], LABELS, config)
    with training_context(config):
        model = BarClassifier.for_spec(encoder_spec, backbone_config, n_classes=len(LABELS))
        if base_state is not None:
            _load_body(model, base_state)
            model.backbone = get_peft_model(model.backbone, lora_config(config))
        return _fit(model, train, valid, config, progress, lora=base_state is not None)


def lora_config(config: TrainConfig | None = None) -> LoraConfig:
    config = config or TrainConfig()
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(LORA_TARGETS))


def class_weights(targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse class frequency, mean 1 over the classes present (absent classes weigh 0)."""
    return torch.from_numpy(inverse_frequency_weights(np.asarray(targets), n_classes)).float()


def add_logit_offsets(model: BarClassifier, offsets) -> BarClassifier:
    """Fold per-class logit offsets into the head bias (in place), so served logits carry them."""
    with torch.no_grad():
        model.head.bias += torch.as_tensor(offsets, dtype=model.head.bias.dtype, device=model.head.bias.device)
    return model


def weighted_nll(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> float:
    """Class-weighted mean cross entropy, the loss training minimises and early stopping watches."""
    return float(F.cross_entropy(logits.float(), targets, weight=weights.to(logits.device)))


# --- internals -------------------------------------------------------------------------

def _as_split(numeric, categorical, targets) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    numeric = torch.as_tensor(numeric, dtype=torch.float32)
    categorical = torch.as_tensor(categorical, dtype=torch.int64)
    targets = torch.as_tensor(targets, dtype=torch.int64).reshape(-1)
    if not len(numeric) == len(categorical) == len(targets):
        raise ModelError(f"split sizes differ: {len(numeric)} numeric windows, {len(categorical)} categorical "
                         f"windows, {len(targets)} targets")
    return numeric, categorical, targets


def check_training_data(train_targets, valid_targets, class_names, config: TrainConfig) -> None:
    """Everything that would make training pointless, refused before a weight is built."""
    train = torch.as_tensor(np.asarray(train_targets), dtype=torch.int64).reshape(-1)
    valid = None if valid_targets is None else torch.as_tensor(np.asarray(valid_targets), dtype=torch.int64).reshape(-1)
    n_train, n_valid = len(train), (len(valid) if valid is not None else None)
    if n_train < config.min_train or (valid is not None and n_valid < config.min_valid):
        raise ModelError(f"too few windows to train: {n_train} training (minimum {config.min_train})"
                         + (f" and {n_valid} validation (minimum {config.min_valid})" if valid is not None else ""))
    for name, y in (("training", train), ("validation", valid)):
        if y is None:
            continue
        bad = torch.nonzero((y < 0) | (y >= len(class_names))).flatten()
        if len(bad):
            raise ModelError(f"{name} target {int(y[bad[0]])} at window {int(bad[0])} is not a class code "
                             f"0..{len(class_names) - 1} (unknown labels must be dropped first)")
    present = torch.unique(train)
    if len(present) == 1:
        raise ModelError(f"the training set has a single class: all {n_train} windows are "
                         f"{class_names[int(present[0])]!r}; a classifier needs at least two")


@contextlib.contextmanager
def pinned_threads(threads: int):
    """Torch's intra-op thread count for a block, restored afterwards: set deliberately, never the machine's."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def training_context(config: TrainConfig):
    """Seeds, deterministic kernels and the thread count for one run, all restored afterwards.

    Why each part (two processes given the same data must produce the same bytes):
    - the global RNG is forked, then seeded: weight initialisation, LoRA's initial A
      matrices and dropout never depend on what the process drew before (this torch seeds
      each process randomly, so an unseeded draw differs on every run);
    - deterministic algorithms are enforced on CPU (an op without a deterministic kernel
      raises rather than silently varying); on CUDA some kernels have none, so there they
      only warn;
    - the intra-op thread count is the config's, not the machine's.
    """
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cuda = torch.cuda.is_available()
    if cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else []), \
            pinned_threads(config.threads):
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        torch.use_deterministic_algorithms(True, warn_only=cuda)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
            np.random.set_state(numpy_state)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(device: torch.device):
    """bf16 on CUDA, plain float32 on CPU: the same loop runs on both."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _load_body(model: BarClassifier, state: dict[str, torch.Tensor]) -> None:
    """Load pretrained body weights; anything but the head missing, or extra, is an error."""
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatch: another backbone or encoder
        raise ModelError(f"pretrained weights do not fit this model: {error}") from None
    missing = [k for k in result.missing_keys
               if not k.startswith(BarClassifier.HEAD) and k != BarClassifier.TOKEN_TABLE]
    if missing or result.unexpected_keys:
        raise ModelError(f"pretrained weights do not fit this model: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")


def _data_parallel(model: BarClassifier) -> DistributedDataParallel:
    """DDP around the model. Bars arrive as embeddings, so the backbone's token table never gets a
    gradient (AdamW skips it on one process too); DDP must not wait for one, so it is left out."""
    table = dict(model.named_parameters()).get(BarClassifier.TOKEN_TABLE)
    if table is None:  # under peft: frozen already
        return DistributedDataParallel(model)
    table.requires_grad_(False)
    try:
        return DistributedDataParallel(model)
    finally:
        table.requires_grad_(True)


def _fit(model: BarClassifier, train: Split, valid: Split | None, config: TrainConfig,
         progress: Progress | None, lora: bool) -> TrainResult:
    device = _device()
    model.to(device)
    n_classes = model.head.out_features
    weights = class_weights(train[2], n_classes).to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    world = current_world()  # torchrun's processes: each takes its part of every batch (smc_core.model.distributed)
    trained = _data_parallel(model) if world.distributed else model
    shuffle = np.random.default_rng(config.seed)
    history, best_loss, best_epoch, best_state, stale = [], float("inf"), 0, None, 0
    started, seen = time.perf_counter(), 0
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        order = torch.from_numpy(shuffle.permutation(len(train[2])))
        total = 0.0
        for batch in order.split(config.batch_size):
            numeric, categorical, y = (part[shard(batch, world)].to(device) for part in train)
            with _autocast(device):
                logits = trained(numeric, categorical)
            if world.distributed:  # the global batch's weighted mean once DDP has averaged over ranks
                loss = F.cross_entropy(logits.float(), y, weight=weights, reduction="sum") * (
                    world.size / weights[train[2][batch].to(device)].sum())
            else:
                loss = F.cross_entropy(logits.float(), y, weight=weights)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch) / world.size
        total = summed(total, world)
        seen += len(order)
        model.eval()
        valid_loss = None
        if valid is not None:
            mine = shard(torch.arange(len(valid[2])), world)
            with torch.no_grad(), _autocast(device):
                logits = gather_rows(batched_logits(model, valid[0][mine], valid[1][mine], config.eval_batch_size),
                                     len(valid[2]), world)
            valid_loss = weighted_nll(logits, valid[2], weights.cpu())
        history.append({"epoch": epoch, "train_loss": total / len(order), "valid_loss": valid_loss,
                        "seconds": time.perf_counter() - epoch_start})
        if progress is not None:
            progress(dict(history[-1]))
        score = valid_loss if valid_loss is not None else -epoch  # no validation: the last epoch is best
        if score < best_loss:
            best_loss, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    seconds = time.perf_counter() - started
    return TrainResult(model=model, history=history, best_epoch=best_epoch,
                       best_valid_loss=best_loss if valid is not None else float("nan"),
                       train_seconds=seconds, windows_per_second=seen / seconds,
                       class_weights=[float(w) for w in weights.cpu()], lora=lora,
                       n_trainable=sum(p.numel() for p in parameters))
