#!/usr/bin/env bash
# PAPO-D, Qwen3.5-9B. Qwen3.5-9B has NO published PAPO settings: this script uses the Qwen2.5-VL-7B
# PAPO-D settings of the paper (arXiv 2507.06448) unchanged: DAPO (no reference KL, clip 0.2 / 0.28,
# dynamic sampling on acc); gamma 0.01, eta_ori = eta_aug = 0.03.
# Only the vision settings follow the family: 16-px patches, so the paper's 256..1280 visual tokens
# per image are 262144..1310720 pixels (PATCH16_ARGS in common.sh). Qwen3.5 comes in dense 0.8B, 2B,
# 4B, 9B and 27B sizes and MoE sizes (model_type qwen3_5_moe, not supported yet); 9B is the dense
# size closest to the 7B the settings come from and trains on one 8-GPU node (4 GPUs by default, as
# the 7B scripts). Qwen/Qwen3.5-9B is the post-trained checkpoint; its chat template thinks by
# default, so responses may hit data.max_response_length=2048 more often than Qwen2.5-VL's.
#
# Usage: [DRY_RUN=1] [SMOKE=1] [MODEL_PATH=...] [N_GPUS_PER_NODE=...] bash scripts/run_qwen3_5_9b_papo_d.sh [key=value ...]
# Knobs and shared settings: scripts/common.sh. Trailing key=value overrides win.
set -xeuo pipefail

DEFAULT_MODEL_PATH=Qwen/Qwen3.5-9B
DEFAULT_N_GPUS_PER_NODE=4
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

papo_main \
    "${COMMON_ARGS[@]}" \
    "${DAPO_ARGS[@]}" \
    "${PATCH16_ARGS[@]}" \
    papo.kl_prcp_coef=0.01 \
    papo.entropy_ori_coef=0.03 \
    papo.entropy_aug_coef=0.03 \
    "$@"
