#!/usr/bin/env bash
# DAPO baseline, Qwen2.5-VL-3B-Instruct (published settings of arXiv 2507.06448, row "DAPO").
# Plain DAPO: PAPO off (gamma = eta_ori = eta_aug = 0); no reference KL, clip 0.2 / 0.28,
# dynamic sampling on the reward's acc (algorithm.filter_groups).
#
# Usage: [DRY_RUN=1] [MODEL_PATH=...] [N_GPUS_PER_NODE=...] bash scripts/run_qwen2_5_vl_3b_dapo.sh [key=value ...]
# Knobs and shared settings: scripts/common.sh. Trailing key=value overrides win.
set -xeuo pipefail

DEFAULT_MODEL_PATH=Qwen/Qwen2.5-VL-3B-Instruct
DEFAULT_N_GPUS_PER_NODE=2
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

papo_main \
    "${COMMON_ARGS[@]}" \
    "${DAPO_ARGS[@]}" \
    "${PAPO_OFF_ARGS[@]}" \
    "$@"
