#!/usr/bin/env bash
# PAPO-G, Qwen3-VL-4B-Instruct. Qwen3-VL-4B-Instruct has NO published PAPO settings: this script
# uses the Qwen2.5-VL-7B PAPO-G settings of the paper (arXiv 2507.06448) unchanged: GRPO with the
# low_var_kl reference-KL loss 0.01, clip 0.2 / 0.3; gamma 0.02, eta_ori = eta_aug = 0.05.
# Only the vision settings follow the family: 16-px patches, so the paper's 256..1280 visual tokens
# per image are 262144..1310720 pixels (PATCH16_ARGS in common.sh). Default GPUs per node as the
# Qwen2.5-VL scripts of the nearest size (3B: 2, 7B: 4).
#
# Usage: [DRY_RUN=1] [SMOKE=1] [MODEL_PATH=...] [N_GPUS_PER_NODE=...] bash scripts/run_qwen3_vl_4b_papo_g.sh [key=value ...]
# Knobs and shared settings: scripts/common.sh. Trailing key=value overrides win.
set -xeuo pipefail

DEFAULT_MODEL_PATH=Qwen/Qwen3-VL-4B-Instruct
DEFAULT_N_GPUS_PER_NODE=2
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

papo_main \
    "${COMMON_ARGS[@]}" \
    "${GRPO_ARGS[@]}" \
    "${PATCH16_ARGS[@]}" \
    papo.kl_prcp_coef=0.02 \
    papo.entropy_ori_coef=0.05 \
    papo.entropy_aug_coef=0.05 \
    "$@"
