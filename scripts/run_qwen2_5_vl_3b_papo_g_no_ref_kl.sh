#!/usr/bin/env bash
# PAPO-G without reference KL, Qwen2.5-VL-3B-Instruct (published settings of arXiv 2507.06448, row "PAPO-G no-ref-KL").
# GRPO clip 0.2 / 0.3 and no dynamic sampling, reference-KL loss off; PAPO gamma 0.01 and the
# double entropy loss eta_ori = eta_aug = 0.03.
#
# Usage: [DRY_RUN=1] [MODEL_PATH=...] [N_GPUS_PER_NODE=...] bash scripts/run_qwen2_5_vl_3b_papo_g_no_ref_kl.sh [key=value ...]
# Knobs and shared settings: scripts/common.sh. Trailing key=value overrides win.
set -xeuo pipefail

DEFAULT_MODEL_PATH=Qwen/Qwen2.5-VL-3B-Instruct
DEFAULT_N_GPUS_PER_NODE=2
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

papo_main \
    "${COMMON_ARGS[@]}" \
    "${GRPO_ARGS[@]}" \
    actor_rollout_ref.actor.use_kl_loss=False \
    papo.kl_prcp_coef=0.01 \
    papo.entropy_ori_coef=0.03 \
    papo.entropy_aug_coef=0.03 \
    "$@"
