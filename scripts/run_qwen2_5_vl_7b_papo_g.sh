#!/usr/bin/env bash
# PAPO-G, Qwen2.5-VL-7B-Instruct (published settings of arXiv 2507.06448, row "PAPO-G 7B").
# GRPO (low_var_kl reference-KL loss 0.01, clip 0.2 / 0.3, no dynamic sampling) plus PAPO with
# gamma 0.02 and the double entropy loss eta_ori = eta_aug = 0.05.
#
# Usage: [DRY_RUN=1] [MODEL_PATH=...] [N_GPUS_PER_NODE=...] bash scripts/run_qwen2_5_vl_7b_papo_g.sh [key=value ...]
# Knobs and shared settings: scripts/common.sh. Trailing key=value overrides win.
set -xeuo pipefail

DEFAULT_MODEL_PATH=Qwen/Qwen2.5-VL-7B-Instruct
DEFAULT_N_GPUS_PER_NODE=4
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

papo_main \
    "${COMMON_ARGS[@]}" \
    "${GRPO_ARGS[@]}" \
    papo.kl_prcp_coef=0.02 \
    papo.entropy_ori_coef=0.05 \
    papo.entropy_aug_coef=0.05 \
    "$@"
