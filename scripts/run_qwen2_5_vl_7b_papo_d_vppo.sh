#!/usr/bin/env bash
# PAPO-D + VPPO, Qwen2.5-VL-7B-Instruct: both methods on one masked pass. No published run combines
# them: PAPO-D's published settings (arXiv 2507.06448: DAPO, gamma 0.01, eta_ori = eta_aug = 0.03,
# rollout n = 5) plus VPPO's token filter p = 0.4 and advantage shaping beta_min = 0.9 (arXiv
# 2510.09285, VPPO-RL examples/configs/train_vppo_7b.sh). VPPO's entropy penalty stays off: it is the
# same term as PAPO's H_ori, which PAPO-D already weights by eta_ori = 0.03. docs/vppo.md.
#
# Usage: [DRY_RUN=1] [SMOKE=1] [MODEL_PATH=...] [N_GPUS_PER_NODE=...] bash scripts/run_qwen2_5_vl_7b_papo_d_vppo.sh [key=value ...]
# Knobs and shared settings: scripts/common.sh. Trailing key=value overrides win.
set -xeuo pipefail

DEFAULT_MODEL_PATH=Qwen/Qwen2.5-VL-7B-Instruct
DEFAULT_N_GPUS_PER_NODE=4
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

papo_main \
    "${COMMON_ARGS[@]}" \
    "${DAPO_ARGS[@]}" \
    papo.kl_prcp_coef=0.01 \
    papo.entropy_ori_coef=0.03 \
    papo.entropy_aug_coef=0.03 \
    papo.vppo_token_fraction=0.4 \
    papo.vppo_beta_min=0.9 \
    "$@"
