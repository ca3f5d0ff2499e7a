"""The options of a training run, light to import (no torch): the CLI builds its ``train`` flags from them."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.body import HU_WINDOW
from ..core.options import option
from ..engines.hardware import PRECISIONS

__all__ = ["TrainConfig"]


@dataclass
class TrainConfig:
    """Everything a training run is set up with; each field is also its ``train`` flag (see
    :mod:`FusionLungSegLib.core.options`), so the CLI and the Python API take the same options."""

    data: str | None = option(
        None, "Kaggle 'finding-lungs' archive (.tar.gz) or folder (default: ../shared/data)", type=str
    )
    out_dir: str = option(
        "",
        "folder for checkpoints, logs and curves.png (default: ~/.cache/fusionlungseg/runs/fusionlungnet, "
        "outside the work tree, so a run survives a new checkout)",
        flag="--out",
    )
    epochs: int = option(50, "epochs to train (the last one of the cosine decay)")
    batch_size: int = option(4, "slices per step")
    input_size: int = option(320, "training size in pixels (paper: 320); the largest with --min-input-size")
    min_input_size: int | None = option(
        None, "multi-scale: draw each batch's size in [min, input-size], step 32", type=int
    )
    val_sizes: tuple[int, ...] = option(
        (), "also validate at these input sizes each epoch (the multi-scale minimum is added)", type=int
    )
    lr: float = option(1e-4, "Adam learning rate (paper: 1e-4)")
    decay_from: int | None = option(
        None, "keep --lr until this epoch, then cosine decay to --min-lr at the last epoch", type=int
    )
    min_lr: float = option(1e-6, "final learning rate of the cosine decay")
    val_fraction: float = option(0.1, "fraction of cases held out for validation")
    seed: int = option(0, "seed of the split, initialisation and augmentation")
    device: str = option("auto", "auto (CUDA if available, else CPU), cpu, cuda or cuda:N")
    amp: bool = option(True, "same as --precision fp32", flag="--no-amp", negate=True)
    precision: str = option(
        "auto",
        "auto: bf16 autocast on CUDA and on CPUs with bf16 matrix units (AMX, AVX-512 BF16), else fp32; "
        "weights, optimizer and loss stay fp32",
        choices=PRECISIONS,
    )
    threads: int | None = option(None, "CPU threads for torch", type=int)
    encoder_weights: str | None = option(
        None,
        "local torchvision ResNet-50 (ResNet-18 for --arch resunet18) state dict to start the encoder from",
        type=str,
    )
    resume: bool = option(False, "continue from OUT/last.pt (bit-for-bit the same schedule)")
    limit: int | None = option(None, "use only the first N slices (smoke runs)", type=int)
    time_limit_min: float | None = option(
        None, "stop after the epoch that passes this many minutes", flag="--time-limit", type=float
    )
    augment: bool = option(True, "no augmentation", flag="--no-augment", negate=True)
    hu_window: tuple[float, float] = option(HU_WINDOW, cli=False)
    log_every: int = option(0, "print the running loss every N steps")
    body_crop: bool = option(True, "feed whole slices instead of the body's box", flag="--no-body-crop", negate=True)
    lung_free_fraction: float = option(
        0.25, "share of each batch drawn from the recorded lung-free slices of real volumes (0 = none)"
    )
    lung_free_data: str | None = option(
        None, "data folder holding the dev/ volumes (default: ../shared/data)", type=str
    )
    init_weights: str | None = option(None, "start from this weights file ('bundled' = the bundled model)", type=str)
    hu_labelled: bool = option(
        True,
        "leave out the lung-base slices of real volumes with HU-derived masks (hu_labelled_slices.json)",
        flag="--no-hu-labelled",
        negate=True,
    )
    ema: float = option(0.0, "decay of a moving average of the weights, e.g. 0.99 (0 = off)")
    fov_fraction: float = option(
        0.0,
        "share of each batch's lung slices seen through a cut field of view (zoomed reconstructions, "
        "Crop Volume ROIs, halves, cut rectangles), e.g. 0.25; validation then also reports iou_fov",
    )
    fov_variants: int = option(2, "cut fields of view drawn per lung slice (fixed for the run, from the seed)")
    fov_kinds: str = option(
        "zoom,half,depth,lung_roi,rectangle",
        "kinds of cut field of view the training copies draw from with equal odds, comma-separated (a kind named "
        "twice is drawn twice as often); validation's cut copies always draw from all five",
    )
    arch: str = option(
        "fusionlungnet",
        "network: fusionlungnet (default), unet (U-Net, classic 4-level, 31 M parameters) or resunet18 "
        "(ResUNet-18: U-Net decoder on a ResNet-18 encoder, 14 M); stored in the weights, so segment, evaluate "
        "and bench need no flag",
    )
    refinement: bool = option(
        True,
        "ablation: FusionLungNet without its residual refinement module",
        flag="--no-refinement",
        negate=True,
    )
    deep_supervision: bool = option(
        True, "ablation: loss on the refined output only, not the sides", flag="--no-deep-supervision", negate=True
    )
    loss: str = option("hybrid", "hybrid: 0.3 focal + 0.4 SSIM + 0.3 IoU (paper); bce", choices=("hybrid", "bce"))
    enhance: bool = option(
        False,
        "ablation: the paper's optional enhancement stage (median filter, local thresholding, removal of "
        "table and artifacts outside the body) before the network; stored in the weights and applied at inference",
    )
    extra: dict = option(cli=False, default_factory=dict)
