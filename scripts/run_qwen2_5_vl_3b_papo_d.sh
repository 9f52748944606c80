#!/usr/bin/env bash
# PAPO-D, Qwen2.5-VL-3B-Instruct (published settings of arXiv 2507.06448, row "PAPO-D").
# DAPO (no reference KL, clip 0.2 / 0.28, dynamic sampling on acc) plus PAPO with gamma 0.01 and
# the double entropy loss eta_ori = eta_aug = 0.03.
#
# Usage: [DRY_RUN=1] [MODEL_PATH=...] [N_GPUS_PER_NODE=...] bash scripts/run_qwen2_5_vl_3b_papo_d.sh [key=value ...]
# Knobs and shared settings: scripts/common.sh. Trailing key=value overrides win.
set -xeuo pipefail

DEFAULT_MODEL_PATH=Qwen/Qwen2.5-VL-3B-Instruct
DEFAULT_N_GPUS_PER_NODE=2
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

papo_main \
    "${COMMON_ARGS[@]}" \
    "${DAPO_ARGS[@]}" \
    papo.kl_prcp_coef=0.01 \
    papo.entropy_ori_coef=0.03 \
    papo.entropy_aug_coef=0.03 \
    "$@"
