#!/usr/bin/env bash
# VPPO, Qwen2.5-VL-3B-Instruct. VPPO (arXiv 2510.09285) publishes no 3B run: this script uses its
# Qwen2.5-VL-7B settings unchanged (examples/configs/train_vppo_7b.sh and config.yaml in VPPO-RL):
#   token filter p = 0.4, advantage shaping beta_min = 0.9, entropy penalty c = 0.06, rollout n = 8,
#   no reference KL, clip 0.2 / 0.28, online filtering on accuracy (DAPO_ARGS), COMMON_ARGS otherwise.
# No PAPO terms (gamma = eta_ori = eta_aug = 0; the masked pass runs for VPPO). Default GPUs per node
# as the other Qwen2.5-VL-3B scripts. docs/vppo.md.
#
# Usage: [DRY_RUN=1] [SMOKE=1] [MODEL_PATH=...] [N_GPUS_PER_NODE=...] bash scripts/run_qwen2_5_vl_3b_vppo.sh [key=value ...]
# Knobs and shared settings: scripts/common.sh. Trailing key=value overrides win.
set -xeuo pipefail

DEFAULT_MODEL_PATH=Qwen/Qwen2.5-VL-3B-Instruct
DEFAULT_N_GPUS_PER_NODE=2
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
