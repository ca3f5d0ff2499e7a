"""Training loop: Adam, hybrid loss with deep supervision, checkpoints, resume, validation.

Writes into ``out_dir``: ``last.pt`` (full state, every epoch), ``best.pt``
(best validation IoU), ``log.jsonl`` and ``log.csv`` (one row per epoch) and,
via :func:`export_weights`, a compact fp16 inference file.
"""

from __future__ import annotations

import csv
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import Augment, SliceSet, load_finding_lungs, split_by_case
from .losses import DeepSupervisionLoss, HybridLoss
from .metrics import TABLE2_KEYS, table2_metrics
from .model import FusionLungNet, count_parameters, load_encoder_weights
from .preprocess import HU_WINDOW, from_network, mask_to_network, to_network

__all__ = ["TrainConfig", "learning_rate", "train", "export_weights", "predict_slices", "resolve_device"]


@dataclass
class TrainConfig:
    data: str | None = None  # Kaggle archive/folder; None = default data folder
    out_dir: str = "runs/fusionlungnet"
    epochs: int = 50
    batch_size: int = 4
    input_size: int = 320  # largest training size
    min_input_size: int | None = None  # if set, each batch draws a size in [min, input_size], step 32
    lr: float = 1e-4
    decay_from: int | None = None  # if set: constant lr until this epoch, then cosine to min_lr at `epochs`
    min_lr: float = 1e-6
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA only
    threads: int | None = None
    encoder_weights: str | None = None
    resume: bool = False
    limit: int | None = None  # use only the first N slices (smoke runs)
    time_limit_min: float | None = None  # stop cleanly after this many minutes
    augment: bool = True
    hu_window: tuple[float, float] = HU_WINDOW
    log_every: int = 0
    extra: dict = field(default_factory=dict)


def resolve_device(device: str = "auto") -> torch.device:
    """ "auto" -> CUDA when available, else CPU.  Raises for an unavailable CUDA request."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA was requested but no CUDA device is available (use --device cpu)")
    return dev


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


def _to_network_set(slices: SliceSet, size: int, window) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ms = [], []
    for i in range(len(slices)):
        x, frame = to_network(slices.images[i : i + 1], size, slices.spacing_yx[i], window)
        xs.append(x)
        ms.append(mask_to_network(slices.masks[i : i + 1], frame))
    return torch.cat(xs), (torch.cat(ms) > 0.5).float()


@torch.inference_mode()
def predict_slices(
    model: FusionLungNet,
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
        x, frame = to_network(slices.images[i : i + batch_size], size, slices.spacing_yx[i], window)
        logits = model(x.to(device))[0]
        out.append(from_network(torch.sigmoid(logits.float()).cpu(), frame).numpy())
    return np.concatenate(out)


def _evaluate(model, val: SliceSet, size, device, window) -> dict[str, float]:
    prob = predict_slices(model, val, size, device, window)
    rows = [table2_metrics(prob[i] > 0.5, val.masks[i]) for i in range(len(val))]
    return {k: float(np.mean([r[k] for r in rows])) for k in TABLE2_KEYS}


def train(cfg: TrainConfig, progress: bool = True) -> dict:
    """Train FusionLungNet; returns a summary dict (best metrics, paths, timings)."""
    from tqdm.auto import tqdm

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _seed_everything(cfg.seed)

    data = load_finding_lungs(cfg.data, limit=cfg.limit)
    train_idx, val_idx = split_by_case(data.cases, cfg.val_fraction, cfg.seed)
    train_set, val_set = data.subset(train_idx), data.subset(val_idx)
    (out / "split.json").write_text(
        json.dumps({"seed": cfg.seed, "train": train_set.names, "validation": val_set.names}, indent=1)
    )
    images, masks = _to_network_set(train_set, cfg.input_size, cfg.hu_window)

    model = FusionLungNet().to(device)
    if cfg.encoder_weights:
        missing = load_encoder_weights(model.encoder, cfg.encoder_weights)
        if missing:
            print(f"encoder weights: {len(missing)} keys not in file, e.g. {missing[:3]}")
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    criterion = DeepSupervisionLoss(HybridLoss())
    gen = torch.Generator().manual_seed(cfg.seed)
    augment = Augment(generator=gen) if cfg.augment else None

    start_epoch, best_iou, history = 0, -1.0, []
    last_path, best_path = out / "last.pt", out / "best.pt"
    if cfg.resume:
        if not last_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint {last_path}")
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_iou, history = state["epoch"], state["best_iou"], state["history"]
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        print(f"resumed from {last_path} at epoch {start_epoch} (best IoU {best_iou:.4f})")

    use_amp = cfg.amp and device.type == "cuda"
    sizes = [cfg.input_size]
    if cfg.min_input_size:
        sizes = list(range(cfg.min_input_size, cfg.input_size + 1, 32)) or [cfg.input_size]
    t_start = time.monotonic()
    n = len(images)
    steps = math.ceil(n / cfg.batch_size)
    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        lr = learning_rate(cfg, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        perm = torch.randperm(n, generator=gen)
        t0, total = time.monotonic(), 0.0
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for step in bar:
            idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x, y = images[idx], masks[idx]
            if augment is not None:
                x, y = augment(x, y)
            size = sizes[int(torch.randint(len(sizes), (1,), generator=gen))]
            if size != x.shape[-1]:
                x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
                y = (torch.nn.functional.interpolate(y, size=(size, size), mode="bilinear") > 0.5).float()
            x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                outputs = model(x)
            loss = criterion([o.float() for o in outputs], y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            bar.set_postfix(loss=f"{total / (step + 1):.4f}")
            if cfg.log_every and (step + 1) % cfg.log_every == 0:
                print(f"epoch {epoch + 1} step {step + 1}/{steps} loss {total / (step + 1):.4f}", flush=True)
        train_loss = total / steps
        metrics = _evaluate(model, val_set, cfg.input_size, device, cfg.hu_window) if len(val_set) else {}
        row = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "lr": lr,
            **{f"val_{k}": v for k, v in metrics.items()},
            "epoch_seconds": time.monotonic() - t0,
        }
        history.append(row)
        val_iou = metrics.get("iou", -train_loss)
        improved = val_iou > best_iou
        best_iou = max(best_iou, val_iou)
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "best_iou": best_iou,
            "history": history,
            "config": asdict(cfg),
            "generator": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "validation": val_set.names,
        }
        _atomic_save(state, last_path)
        if improved:
            _atomic_save(state, best_path)
        _write_logs(out, history)
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
        "train_slices": len(train_set),
        "val_slices": len(val_set),
    }


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


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
    from .weights import sha256_of

    state = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
    cfg = state.get("config", {})
    hist = state.get("history", [])
    best = max(hist, key=lambda r: r.get("val_iou", -1)) if hist else {}
    meta = {
        "format": "fusionlungseg-weights-v1",
        "architecture": "FusionLungNet",
        "input_size": int(cfg.get("input_size", 320)),
        "min_input_size": cfg.get("min_input_size"),
        "hu_window": list(cfg.get("hu_window", HU_WINDOW)),
        "epochs": int(state.get("epoch", 0)),
        "training_data": "Kaggle 'Finding and Measuring Lungs in CT Data' (kmader), 2D slices",
        "validation_metrics": {k: v for k, v in best.items() if k.startswith("val_")},
        "seed": cfg.get("seed"),
        "val_fraction": cfg.get("val_fraction"),
        "validation": list(state.get("validation", [])),
        **(extra_meta or {}),
    }
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in state["model"].items()}
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save({"state_dict": half, "meta": meta}, out)
    digest = sha256_of(out)
    out.with_name(out.name + ".sha256").write_text(f"{digest}  {out.name}\n")  # sha256sum -c format
    return {"path": str(out), "sha256": digest, "bytes": out.stat().st_size, "meta": meta}
