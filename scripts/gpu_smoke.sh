#!/usr/bin/env bash
# GPU smoke check: ONE command for a machine with one NVIDIA GPU (docs/scaling.md "GPU smoke check").
#   bash scripts/gpu_smoke.sh [gpu_smoke.py options, e.g. --steps 5 --backends hf]
# bf16; SFT, Rank-GRPO, RecPO and DeepRec a few steps each on a tiny random model (and SmolLM2-135M-Instruct when
# its wheel is installed), with transformers generation and, when vllm imports, TRL's colocated vLLM; every result
# evaluated; results/gpu_smoke/gpu_smoke.json and a table (what ran, seconds, peak GPU memory).
# The interpreter: $PY, else .venv/bin/python (bash INSTALL.sh), else python3 (e.g. a CUDA PyTorch image with the
# wheels of docs/install.md "No internet on the GPU machine" installed).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_smoke.sh: no NVIDIA GPU (nvidia-smi -L failed). The driver's CPU check: $PY scripts/gpu_smoke.py --device cpu --only sft" >&2
  exit 1
fi
nvidia-smi -L
"$PY" - <<'PY'
import importlib.util, torch, transformers, trl, accelerate
vllm = importlib.util.find_spec("vllm")
print(f"gpu_smoke.sh: torch {torch.__version__} (CUDA {torch.version.cuda}, available {torch.cuda.is_available()}), "
      f"transformers {transformers.__version__}, trl {trl.__version__}, accelerate {accelerate.__version__}, "
      f"vllm {'installed' if vllm else 'not installed (HF generation only)'}")
PY
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" scripts/gpu_smoke.py --python "$PY" "$@"
