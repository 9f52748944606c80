#!/usr/bin/env bash
# VPPO, Qwen2.5-VL-7B-Instruct: the published VPPO settings (arXiv 2510.09285; its code's
# examples/configs/train_vppo_7b.sh and examples/configs/config.yaml in VPPO-RL) on this recipe's
# trainer, no PAPO terms (gamma = eta_ori = eta_aug = 0; the masked pass runs for VPPO). docs/vppo.md.
#   token filter p = 0.4, advantage shaping beta_min = 0.9, entropy penalty c = 0.06   (train_vppo_7b.sh)
#   rollout n = 8                                                                         (train_vppo_7b.sh)
#   no reference KL (disable_kl), clip 0.2 / 0.28, online filtering on accuracy in
#   (0.01, 0.99) = DAPO_ARGS                                                              (config.yaml)
#   384 prompts per step, mini-batches of 128, lr 1e-6, weight decay 0.01, 2 epochs,
#   response 2048, 200704..1003520 pixels, temperature 1.0 / top_p 0.99 = COMMON_ARGS   (both files)
# The published run trains on its own ViRL39K split (chamber111/VPPO_ViRL39K_train) with its own
# prompt template; this script uses data_prep's ViRL39K and prompt like the PAPO scripts (docs/vppo.md).
#
# Usage: [DRY_RUN=1] [SMOKE=1] [MODEL_PATH=...] [N_GPUS_PER_NODE=...] bash scripts/run_qwen2_5_vl_7b_vppo.sh [key=value ...]
# Knobs and shared settings: scripts/common.sh. Trailing key=value overrides win.
set -xeuo pipefail

DEFAULT_MODEL_PATH=Qwen/Qwen2.5-VL-7B-Instruct
DEFAULT_N_GPUS_PER_NODE=4
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

papo_main \
    "${COMMON_ARGS[@]}" \
    "${DAPO_ARGS[@]}" \
    "${PAPO_OFF_ARGS[@]}" \
    actor_rollout_ref.rollout.n=8 \
    papo.vppo_token_fraction=0.4 \
    papo.vppo_beta_min=0.9 \
    papo.vppo_entropy_coef=0.06 \
    "$@"
