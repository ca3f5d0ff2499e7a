"""Training loop: Adam, hybrid loss with deep supervision, checkpoints, resume, validation.

Writes into ``out_dir``: ``last.pt`` (full state to resume from, every epoch),
``best.pt`` (the weights and settings of the best validation IoU, without the optimizer
and random states, which only resuming needs), ``log.jsonl`` and ``log.csv`` (one row per epoch) and,
via :func:`export_weights`, a compact fp16 inference file.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..core.body import BODY_CROP
from ..core.metrics import TABLE2_KEYS, table2_metrics
from ..engines.hardware import resolve_device
from ..io.files import atomic_output
from ..nets.encoders import trunk_source
from ..nets.fusionlungnet import load_encoder_weights
from ..nets.preprocess import HU_WINDOW, from_network, to_network
from ..nets.registry import ARCHITECTURES, build_model, count_parameters
from .batches import Batches, RunData, load_run_data
from .config import TrainConfig
from .data import (
    SliceSet,
)
from .fov import FOV_CUTS
from .losses import BCELoss, DeepSupervisionLoss, HybridLoss

__all__ = ["TrainConfig", "learning_rate", "train", "export_weights", "predict_slices"]


def arch_options(cfg) -> dict:
    """Constructor options of the architecture (a TrainConfig or its dict in a checkpoint)."""
    get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
    return {} if get("refinement", True) else {"refinement": False}


def default_run_dir(name: str = "fusionlungnet") -> Path:
    """``runs/NAME`` in the user's cache folder (:func:`FusionLungSegLib.resources.cache_dir`, by default
    ``~/.cache/fusionlungseg``): runs survive a new checkout."""
    from ..resources import cache_dir

    return cache_dir() / "runs" / name


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """Adam learning rate for 0-based ``epoch``: ``cfg.lr``, then a cosine decay from
    epoch ``cfg.decay_from`` to ``cfg.min_lr`` at the last epoch."""
    if cfg.decay_from is None or epoch < cfg.decay_from or cfg.epochs <= cfg.decay_from:
        return cfg.lr
    t = (epoch - cfg.decay_from + 1) / (cfg.epochs - cfg.decay_from)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.inference_mode()
def predict_slices(
    model: torch.nn.Module,
    slices: SliceSet,
    size: int,
    device: torch.device,
    window=HU_WINDOW,
    batch_size: int = 8,
) -> np.ndarray:
    """Lung probability on each slice's own pixel grid, (N, H, W) float32."""
    model.eval()
    out = []
    for i in range(0, len(slices), batch_size):
        idx = range(i, min(len(slices), i + batch_size))
        pairs = [to_network(slices.images[j : j + 1], size, slices.spacing_yx[j], window, slices.boxes[j]) for j in idx]
        prob = torch.sigmoid(model(torch.cat([x for x, _ in pairs]).to(device))[0].float()).cpu()
        out.extend(from_network(prob[k : k + 1], frame).numpy() for k, (_, frame) in enumerate(pairs))
    return np.concatenate(out)


def _evaluate(model, val: SliceSet, size, device, window) -> dict[str, float]:
    prob = predict_slices(model, val, size, device, window)
    rows = [table2_metrics(prob[i] > 0.5, val.masks[i]) for i in range(len(val))]
    return {k: float(np.mean([r[k] for r in rows])) for k in TABLE2_KEYS}


def _false_lung_fraction(model, free: SliceSet, size, device, window) -> float:
    """Mean fraction of pixels called lung on slices that hold none."""
    prob = predict_slices(model, free, size, device, window)
    return float(np.mean(prob > 0.5))


class WeightAverage:
    """Exponential moving average of a model's weights (buffers such as batch-norm statistics are copied)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        import copy

        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for avg, cur in zip(self.model.state_dict().values(), model.state_dict().values()):
            if avg.is_floating_point():
                avg.mul_(self.decay).add_(cur.detach(), alpha=1.0 - self.decay)
            else:
                avg.copy_(cur)


def _initial_model(cfg: TrainConfig, device: torch.device, data: RunData) -> torch.nn.Module:
    """The network, from scratch or ``--init-weights`` (refused if it trained on this run's validation
    slices), with ``--encoder-weights`` loaded into its encoder."""
    model = build_model(cfg.arch, **arch_options(cfg)).to(device)
    if cfg.init_weights:
        from ..nets.weights import load_weights

        state, init_meta = load_weights(None if cfg.init_weights == "bundled" else cfg.init_weights)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        seen = set(data.all_names) - set(init_meta.get("validation") or data.all_names)  # what they trained on
        leaked = sorted(seen & set(data.val_set.names))
        if leaked:
            raise ValueError(
                f"--init-weights {cfg.init_weights} was trained on {len(leaked)} of this run's validation slices "
                f"(e.g. {leaked[0]}), so validation would not be held out: use the split those weights were "
                f"trained with (--seed {init_meta.get('seed')}, --val-fraction {init_meta.get('val_fraction')})"
            )
    if cfg.encoder_weights:
        if not hasattr(model, "encoder"):
            raise ValueError(f"--encoder-weights: the {ARCHITECTURES[cfg.arch]} has no ResNet encoder")
        missing = load_encoder_weights(model.encoder, cfg.encoder_weights)
        if missing:
            print(f"encoder weights: {len(missing)} keys not in file, e.g. {missing[:3]}")
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return model.to(memory_format=memory_format)


def _machine(precision: str, device: torch.device, model: torch.nn.Module) -> dict:
    """Where the run trained, recorded in its checkpoints."""
    from ..engines.hardware import cpu_info

    cpu = cpu_info()
    return {
        "precision": precision,
        "device": str(device),
        "cpu": cpu["name"],
        "cpu_isa": cpu["isa"],
        "cpu_bf16_flags": cpu["bf16_flags"],
        # the ResNet trunk's source decides its initial weights (torchvision's init or PyTorch's defaults)
        "resnet_trunk": trunk_source(getattr(model, "encoder", None)),
    }


def _validate(model: torch.nn.Module, cfg: TrainConfig, data: RunData, device: torch.device) -> dict:
    """Validation metrics of one epoch: IoU and the rest at the training size, IoU at the other sizes and on
    cut fields of view, and the share of lung-free pixels called lung."""
    val_set = data.val_set
    metrics = _evaluate(model, val_set, cfg.input_size, device, cfg.hu_window) if len(val_set) else {}
    for size in sorted({*cfg.val_sizes, *([cfg.min_input_size] if cfg.min_input_size else [])} - {cfg.input_size}):
        if len(val_set):
            metrics[f"iou_{size}"] = _evaluate(model, val_set, size, device, cfg.hu_window)["iou"]
    if "iou" in metrics and (cfg.val_sizes or cfg.min_input_size):
        metrics[f"iou_{cfg.input_size}"] = metrics["iou"]
    if len(data.fov_val):
        metrics["iou_fov"] = _evaluate(model, data.fov_val, cfg.input_size, device, cfg.hu_window)["iou"]
    if len(data.free_val):
        metrics["lung_free_fraction"] = _false_lung_fraction(
            model, data.free_val, cfg.input_size, device, cfg.hu_window
        )
    return metrics


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train ``cfg.arch`` (FusionLungNet by default); returns a summary dict (best metrics, paths, timings)."""
    from tqdm.auto import tqdm

    from ..engines.hardware import resolve_precision

    if not cfg.refinement and cfg.arch != "fusionlungnet":
        raise ValueError("--no-refinement is an ablation of FusionLungNet (--arch fusionlungnet)")
    out = Path(cfg.out_dir) if cfg.out_dir else default_run_dir(cfg.arch)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed_everything(cfg.seed)
    data = load_run_data(cfg, out)
    model = _initial_model(cfg, device, data)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    criterion = DeepSupervisionLoss(
        HybridLoss() if cfg.loss == "hybrid" else BCELoss(), deep_supervision=cfg.deep_supervision
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = Batches(cfg, data, gen)
    ema = WeightAverage(model, cfg.ema) if cfg.ema > 0 else None
    start_epoch, best_iou, history = 0, -1.0, []
    last_path, best_path = out / "last.pt", out / "best.pt"
    if cfg.resume:
        start_epoch, best_iou, history = _resume(last_path, model, optimizer, ema, gen)
    precision = resolve_precision(cfg.precision if cfg.amp else "fp32", device)
    use_amp = precision == "bf16"  # bf16 autocast; weights, optimizer and loss stay fp32
    machine = _machine(precision, device, model)
    print(f"training in {precision} on {device} ({machine['cpu']})", flush=True)
    t_start, stopped_early = time.monotonic(), False
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        lr = learning_rate(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t0 = time.monotonic()
        bar = tqdm(range(batches.steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        train_loss = _train_epoch(model, batches, bar, optimizer, criterion, ema, use_amp, cfg.log_every, epoch)
        judged = ema.model if ema is not None else model  # validation (and best.pt) use the averaged weights
        metrics = _validate(judged, cfg, data, device)
        history.append(
            {
                "epoch": epoch + 1,
                "precision": precision,
                "train_loss": train_loss,
                "lr": lr,
                **{f"val_{k}": v for k, v in metrics.items()},
                "epoch_seconds": time.monotonic() - t0,
            }
        )
        val_iou = metrics.get("iou", -train_loss)  # model choice: Kaggle validation IoU only
        improved = val_iou > best_iou
        best_iou = max(best_iou, val_iou)
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            **_progress_state(epoch, best_iou, history, cfg, gen),
            **data.names_recorded(),
            "ema": ema.model.state_dict() if ema is not None else None,
            "machine": machine,
        }
        _save_epoch(out, state, improved, history)
        print(
            f"epoch {epoch + 1}: loss {train_loss:.4f} "
            + " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            + (" (best)" if improved else ""),
            flush=True,
        )
        if cfg.time_limit_min and (time.monotonic() - t_start) > cfg.time_limit_min * 60:
            stopped_early = True
            break
    return {
        "best_val_iou": best_iou,
        "epochs_done": history[-1]["epoch"] if history else start_epoch,
        "history": history,
        "last": str(last_path),
        "best": str(best_path),
        "parameters": count_parameters(model),
        "stopped_on_time_limit": stopped_early,
        "train_slices": len(data.train_set),
        "lung_free_slices": len(data.free_set),
        "hu_labelled_slices": len(data.base_set),
        "val_slices": len(data.val_set),
    }


def _progress_state(epoch: int, best_iou: float, history: list, cfg: TrainConfig, gen: torch.Generator) -> dict:
    """Where the run is, for ``last.pt``: epoch, best IoU, history, settings and both random generators."""
    return {
        "epoch": epoch + 1,
        "best_iou": best_iou,
        "history": history,
        "config": asdict(cfg),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
    }


def _train_epoch(model, batches: Batches, bar, optimizer, criterion, ema, use_amp: bool, log_every: int, epoch: int):
    """One pass over the lung slices in a fresh order; the mean training loss."""
    device = next(model.parameters()).device
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    perm = torch.randperm(batches.n, generator=batches.gen)
    total = 0.0
    for step in bar:
        x, y = batches.batch(perm, step)
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        y = y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            outputs = model(x)
        loss = criterion([o.float() for o in outputs], y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)
        total += float(loss.detach())
        bar.set_postfix(loss=f"{total / (step + 1):.4f}")
        if log_every and (step + 1) % log_every == 0:
            print(f"epoch {epoch + 1} step {step + 1}/{batches.steps} loss {total / (step + 1):.4f}", flush=True)
    return total / batches.steps


def _resume(last_path: Path, model, optimizer, ema, gen: torch.Generator) -> tuple[int, float, list]:
    """Load ``last.pt`` into the run's model, optimizer, averaged weights and generators; (epoch, best IoU,
    history) to continue from."""
    if not last_path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint {last_path}")
    state = torch.load(last_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        ema.model.load_state_dict(state.get("ema") or state["model"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    print(f"resumed from {last_path} at epoch {state['epoch']} (best IoU {state['best_iou']:.4f})")
    return state["epoch"], state["best_iou"], state["history"]


def _save_epoch(out: Path, state: dict, improved: bool, history: list[dict]) -> None:
    """``last.pt`` every epoch, ``best.pt`` when validation improved, the logs and the curves."""
    from .curves import plot_training_curves

    _atomic_save(state, out / "last.pt")
    if improved:  # resuming reads last.pt only, so best.pt leaves out the optimizer: a third of the size
        _atomic_save({k: v for k, v in state.items() if k not in _RESUME_ONLY}, out / "best.pt")
    _write_logs(out, history)
    plot_training_curves(history, out / "curves.png")


_RESUME_ONLY = ("optimizer", "generator", "torch_rng")


def _atomic_save(obj, path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def _write_logs(out: Path, history: list[dict]) -> None:
    (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    keys = sorted({k for r in history for k in r}, key=lambda k: (k != "epoch", k))
    with open(out / "log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


def export_weights(checkpoint: str | Path, out_path: str | Path, extra_meta: dict | None = None) -> dict:
    """Write a compact inference file: fp16 state dict + JSON-able metadata.

    Returns ``{"path", "sha256", "bytes", "meta"}`` and writes ``FILE.sha256``
    beside it.  The file loads with ``torch.load(..., weights_only=True)``.
    """
    from ..nets.weights import sha256_of

    state = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
    cfg = state.get("config", {})
    hist = state.get("history", [])
    best = max(hist, key=lambda r: r.get("val_iou", -1)) if hist else {}
    meta = {
        "format": "fusionlungseg-weights-v1",
        "architecture": ARCHITECTURES[cfg.get("arch", "fusionlungnet")],
        "arch_options": arch_options(cfg),
        "training_loss": cfg.get("loss", "hybrid")
        + ("" if cfg.get("deep_supervision", True) else ", no deep supervision"),
        "input_size": int(cfg.get("input_size", 320)),
        "min_input_size": cfg.get("min_input_size"),
        "hu_window": list(cfg.get("hu_window", HU_WINDOW)),
        "epochs": int(state.get("epoch", 0)),
        "training_data": "Kaggle 'Finding and Measuring Lungs in CT Data' (kmader), 2D slices",
        "validation_metrics": {k: v for k, v in best.items() if k.startswith("val_")},
        "seed": cfg.get("seed"),
        "val_fraction": cfg.get("val_fraction"),
        "validation": list(state.get("validation", [])),
        "body_crop": dict(BODY_CROP) if cfg.get("body_crop", False) else None,
        "enhancement": bool(cfg.get("enhance", False)),
        "lung_free_training_slices": list(state.get("lung_free_train", [])),
        "hu_labelled_training_slices": list(state.get("hu_labelled_train", [])),
        # the share of lung slices seen through cut fields of view (fov.fov_cut_variants), and copies per slice
        "fov_cuts": {
            "fraction": cfg["fov_fraction"],
            "variants": cfg.get("fov_variants", 2),
            "kinds": cfg.get("fov_kinds", ",".join(FOV_CUTS)),
        }
        if cfg.get("fov_fraction")
        else None,
        "weights_averaged": bool(state.get("ema")),
        "trained_on": state.get("machine"),
        **(extra_meta or {}),
    }
    weights = state.get("ema") or state["model"]
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in weights.items()}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save({"state_dict": half, "meta": meta}, out)
    digest = sha256_of(out)
    out.with_name(out.name + ".sha256").write_text(f"{digest}  {out.name}\n")  # sha256sum -c format
    return {"path": str(out), "sha256": digest, "bytes": out.stat().st_size, "meta": meta}
