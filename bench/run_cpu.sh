#!/usr/bin/env bash
# The CPU figures in bench/README.md, in one run (nothing else running; about 40 minutes on 2 cores).
# Needs the bench and onnx extras: pip install -e ".[bench,onnx]"
set -euo pipefail
cd "$(dirname "$0")/.."
B=".venv/bin/fusionlungseg bench --device cpu --threads 2"
DEV=${DEV:-../shared/data/dev}
# Real volumes, abdomen to neck, side by side with lungmask in the same run (ratio = lungmask seconds / ours):
# the bundled model at its default size (224 px) and in fast mode (160 px), with the engine auto picks
# (ONNX Runtime where it is installed and faster) and with plain PyTorch.
for vol in C3N-00247_chest_ct NSCLCRadiomics_LUNG1-001_CT; do
  f="$DEV/$vol.nii.gz"
  [ -e "$f" ] || continue
  $B --input "$f" --input-size 160 --compare-lungmask --json "bench/cpu_160_${vol%%_*}_vs_lungmask.json"
  $B --input "$f" --input-size 224 --compare-lungmask --json "bench/cpu_224_${vol%%_*}_vs_lungmask.json"
  $B --input "$f" --input-size 160 --backend torch --json "bench/cpu_160_${vol%%_*}_torch.json"
done
# Whole 300-slice synthetic volume: time and peak memory.
$B --input-size 160 --slices 300 --json bench/cpu_160.json
$B --input-size 224 --slices 300 --json bench/cpu_224.json
