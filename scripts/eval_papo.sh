#!/usr/bin/env bash
# PAPO evaluation (arXiv 2507.06448, Table 1): verl validation only over the prepared evaluation parquets,
# avg@8 (8 samples per question at temperature 1.0, top_p 0.99), then the per-benchmark table (each
# benchmark, general, vision-dependent and overall) as Markdown and JSON.
#
# Usage: MODEL_PATH=<HF model dir or merged checkpoint> [DRY_RUN=1 | SMOKE=1] bash scripts/eval_papo.sh [key=value ...]
# SMOKE=1 evaluates MODEL_PATH on the prepared benchmarks at the smoke sizes on this machine (CPU included):
# SMOKE_DATA and SMOKE_MODEL default to "script" here (docs/smoke.md).
# Knobs (besides those of scripts/common.sh that apply to the model, rollout and cluster):
#   MODEL_PATH   required: a Hugging Face model (id or folder), e.g. a checkpoint merged with
#                `python -m verl.model_merger merge --backend fsdp ...`
#   EVAL_DIR     folder holding <benchmark>.parquet from data_prep (default $DATA_DIR/eval)
#   BENCHMARKS   space-separated subset of the nine benchmarks (default: all nine)
#   EVAL_N       samples per question (default 8, the paper's avg@8)
#   OUT_DIR      results: metrics.jsonl, eval_table.md, eval_table.json, generations/, checkpoint.txt
#                (default eval_results/<name>, <name> being the last two components of MODEL_PATH
#                that are not hf, huggingface, actor or merged, joined by "__": a checkpoint merged
#                into checkpoints/papo/<experiment>/global_step_200/hf evaluates into
#                eval_results/<experiment>__global_step_200). checkpoint.txt records the MODEL_PATH
#                (absolute) that wrote the folder; a run for another MODEL_PATH refuses to write there.
#   LOGGER       must include "file" (the table is read from verl's file logger); default console+file
# Prompt/response lengths, pixel bounds and sampling are the training scripts' (scripts/common.sh).
set -xeuo pipefail

: "${MODEL_PATH:?set MODEL_PATH to the Hugging Face model or merged checkpoint to evaluate}"
DEFAULT_MODEL_PATH=$MODEL_PATH
DEFAULT_N_GPUS_PER_NODE=4
DEFAULT_SMOKE_DATA=script
DEFAULT_SMOKE_MODEL=script

# The checkpoint as recorded in OUT_DIR/checkpoint.txt: an existing folder as its absolute physical
# path, anything else (a hub id) as given.
checkpoint_id() {
    if [ -d "$1" ]; then (cd "$1" && pwd -P); else printf '%s\n' "${1%/}"; fi
}
# The default results name of a checkpoint: its last two path components that name it (generic leaf
# folders of verl's checkpoint and merger layouts skipped), joined by "__".
checkpoint_name() {
    local part kept=()
    local -a parts
    IFS=/ read -ra parts <<<"$1"
    for part in "${parts[@]}"; do
        case "$part" in
        "" | . | hf | huggingface | actor | merged) ;;
        *) kept+=("$part") ;;
        esac
    done
    if [ "${#kept[@]}" -eq 0 ]; then
        echo "cannot name results for MODEL_PATH=$1; set OUT_DIR" >&2
        return 2
    fi
    local start=$((${#kept[@]} > 2 ? ${#kept[@]} - 2 : 0)) name
    name=$(printf '%s__' "${kept[@]:start}")
    printf '%s\n' "${name%__}"
}
CHECKPOINT=$(checkpoint_id "$MODEL_PATH")
CHECKPOINT_NAME=$(checkpoint_name "$CHECKPOINT")
EXPERIMENT_NAME=${EXPERIMENT_NAME:-eval_$CHECKPOINT_NAME}
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

EVAL_DIR=${EVAL_DIR:-$DATA_DIR/eval}
BENCHMARKS=${BENCHMARKS:-$("$PYTHON" -c 'from recipe.papo.prompt import EVAL_BENCHMARKS; print(" ".join(EVAL_BENCHMARKS))')}
EVAL_N=${EVAL_N:-8}
OUT_DIR=${OUT_DIR:-eval_results/$CHECKPOINT_NAME}
case "$OUT_DIR" in
/*) ;;
*) OUT_DIR=$PWD/$OUT_DIR ;;
esac
case "$LOGGER" in
*file*) ;;
*)
    echo "LOGGER=$LOGGER lacks the file logger, which the evaluation table is read from" >&2
    exit 2
    ;;
esac

eval_files=()
for benchmark in $BENCHMARKS; do
    eval_files+=("$EVAL_DIR/$benchmark.parquet")
    if [ "$DRY_RUN" = 0 ] && [ ! -f "$EVAL_DIR/$benchmark.parquet" ]; then
        echo "missing $EVAL_DIR/$benchmark.parquet: run python -m data_prep.papo_eval --out $EVAL_DIR (or set EVAL_DIR / BENCHMARKS)" >&2
        exit 2
    fi
done
if [ "${#eval_files[@]}" -eq 0 ]; then
    echo "BENCHMARKS is empty" >&2
    exit 2
fi
val_files=$(printf "'%s'," "${eval_files[@]}")

metrics=$OUT_DIR/metrics.jsonl
owner_file=$OUT_DIR/checkpoint.txt
if [ -f "$owner_file" ]; then
    owner=$(cat "$owner_file")
    if [ "$owner" != "$CHECKPOINT" ]; then
        echo "OUT_DIR $OUT_DIR holds the results of MODEL_PATH $owner (see $owner_file), not $CHECKPOINT;" \
            "set OUT_DIR to another folder, or delete $OUT_DIR to replace them" >&2
        exit 2
    fi
elif [ -e "$metrics" ] || [ -e "$OUT_DIR/eval_table.json" ] || [ -e "$OUT_DIR/generations" ]; then
    echo "OUT_DIR $OUT_DIR holds evaluation results without $owner_file (written by an unknown checkpoint);" \
        "set OUT_DIR to another folder, or delete $OUT_DIR to replace them" >&2
    exit 2
fi
if [ "$DRY_RUN" = 0 ]; then
    mkdir -p "$OUT_DIR"
    printf '%s\n' "$CHECKPOINT" >"$owner_file"
    rm -f "$metrics" # never build the table from an earlier run's metrics
fi

# verl builds the training dataset even with trainer.val_only=True: the first evaluation file is the
# cheapest valid data.train_files (read once, never trained on; no length filter, so no processing).
# The length filter is off so that every question counts (a prompt over budget scores 0, not dropped).
# No reference model, no checkpoint resume, PAPO off (validation never uses its terms).
papo_main \
    "${COMMON_ARGS[@]}" \
    "${PAPO_OFF_ARGS[@]}" \
    data.train_files="'${eval_files[0]}'" \
    data.val_files="[${val_files%,}]" \
    data.filter_overlong_prompts=False \
    actor_rollout_ref.actor.use_kl_loss=False \
    actor_rollout_ref.rollout.val_kwargs.n="$EVAL_N" \
    trainer.val_only=True \
    trainer.val_before_train=True \
    trainer.resume_mode=disable \
    trainer.validation_data_dir="$OUT_DIR/generations" \
    ++ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH="$metrics" \
    "$@"

if [ "$DRY_RUN" = 1 ]; then
    exit 0
fi
"$PYTHON" -m recipe.papo.eval_table --metrics "$metrics" --out "$OUT_DIR" --n "$EVAL_N"
