#!/usr/bin/env bash
# PAPO-G, Qwen3-VL-8B-Instruct. Qwen3-VL has NO published PAPO settings: this script reuses the
# PAPO-G 7B row of PAPO spec section 3 unchanged (GRPO with low_var_kl reference-KL loss 0.01,
# clip 0.2 / 0.3; gamma 0.02, eta_ori = eta_aug = 0.05) and the common settings, including the
# pixel bounds 200704..1003520 (Qwen3-VL's 16-px patches make that 196..980 visual tokens per
# image instead of 256..1280). data.image_patch_size=16 matches Qwen3-VL's processor.
#
# Usage: [DRY_RUN=1] [MODEL_PATH=...] [N_GPUS_PER_NODE=...] bash scripts/run_qwen3_vl_8b_papo_g.sh [key=value ...]
# Knobs and shared settings: scripts/common.sh. Trailing key=value overrides win.
set -xeuo pipefail

DEFAULT_MODEL_PATH=Qwen/Qwen3-VL-8B-Instruct
DEFAULT_N_GPUS_PER_NODE=4
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

papo_main \
    "${COMMON_ARGS[@]}" \
    "${GRPO_ARGS[@]}" \
    data.image_patch_size=16 \
    papo.kl_prcp_coef=0.02 \
    papo.entropy_ori_coef=0.05 \
    papo.entropy_aug_coef=0.05 \
    "$@"
