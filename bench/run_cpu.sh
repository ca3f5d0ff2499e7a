#!/usr/bin/env bash
# The CPU figures in bench/README.md, in one run (nothing else running; 25-40 minutes on 2 cores).
# Needs the bench and onnx extras: pip install -e ".[bench,onnx]"
#   bash bench/run_cpu.sh                                   # AVX2-only CPU: fp32, ONNX Runtime vs PyTorch
#   PREFIX=bf16cpu SIZES="160 224 320" ALT="--precision fp32" ALT_NAME=fp32 bash bench/run_cpu.sh  # bf16 units
set -euo pipefail
cd "$(dirname "$0")/.."
B=".venv/bin/fusionlungseg bench --device cpu --threads 2"
DEV=${DEV:-../shared/data/dev}
P=${PREFIX:-cpu}
# Results go in a dated folder named by the CPU, e.g. bench/results/2026-11-30_amd-epyc-avx512bf16/
OUT=${OUT:-bench/results/$(date +%F)_$(.venv/bin/python -c "from FusionLungSegLib.engines.hardware import cpu_slug; print(cpu_slug())")}
mkdir -p "$OUT"
SIZES=${SIZES:-160 224}
ALT=${ALT:---backend torch}  # the second 160 px row: plain PyTorch (fp32 CPUs) or fp32 (CPUs with bf16 units)
ALT_NAME=${ALT_NAME:-torch}
# Real volumes, abdomen to neck, side by side with lungmask in the same run (ratio = lungmask seconds / ours):
# the bundled model at each size with the engine and precision auto picks, then the ALT row.
for vol in C3N-00247_chest_ct NSCLCRadiomics_LUNG1-001_CT; do
  f="$DEV/$vol.nii.gz"
  [ -e "$f" ] || continue
  for s in $SIZES; do
    $B --input "$f" --input-size "$s" --compare-lungmask --json "$OUT/${P}_${s}_${vol%%_*}_vs_lungmask.json"
  done
  $B --input "$f" --input-size 160 $ALT --json "$OUT/${P}_160_${vol%%_*}_${ALT_NAME}.json"
done
# Whole 300-slice synthetic volume: time and peak memory.
for s in $SIZES; do
  $B --input-size "$s" --slices 300 --json "$OUT/${P}_${s}.json"
done
# The best these runs could be on this CPU: convolution peak per precision, operations per slice, ratio bounds.
.venv/bin/python bench/cpu_ceiling.py "$OUT/${P}"_*_vs_lungmask.json --json "$OUT/${P}_ceiling.json"
