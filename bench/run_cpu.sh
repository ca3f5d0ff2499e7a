#!/usr/bin/env bash
# The CPU figures in bench/README.md, in one run (nothing else running; about 30 minutes on 2 cores).
# Needs the bench extra for the lungmask comparison: pip install -e ".[bench]"
set -euo pipefail
cd "$(dirname "$0")/.."
B=".venv/bin/fusionlungseg bench --device cpu"
C3N=${C3N:-../shared/data/dev/C3N-00247_chest_ct.nii.gz}
# Side by side with lungmask on the same volumes (the ratio is lungmask seconds / ours).
$B --input-size 160 --slices 60 --compare-lungmask --json bench/cpu_160_vs_lungmask.json
$B --input-size 320 --slices 60 --compare-lungmask --json bench/cpu_320_vs_lungmask.json
if [ -e "$C3N" ]; then
  $B --input-size 160 --input "$C3N" --compare-lungmask --json bench/cpu_160_c3n_vs_lungmask.json
fi
# Whole 300-slice volume: time and peak memory.
$B --input-size 160 --slices 300 --json bench/cpu_160.json
$B --input-size 320 --slices 300 --json bench/cpu_320.json
