# Every target installs first (INSTALL.sh is idempotent and takes seconds when nothing changed).
PY := .venv/bin/python
export TOKENIZERS_PARALLELISM := false
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE := 1

.PHONY: install demo test test-dist bench results clean

install:
	bash INSTALL.sh

## demo: ML-100k -> tiny model -> SFT -> Rank-GRPO, RecPO, DeepRec -> evaluation tables (CPU, ~10 min)
demo: install
	bash scripts/demo.sh

## test: the CPU test suite without the slow DeepSpeed runs (CI runs it, then test-dist)
test: install
	$(PY) -m pytest tests -q -p no:cacheprovider -m "not dist"

## test-dist: the DeepSpeed ZeRO-2 / ZeRO-3 2-process CPU runs (tests marked `dist`)
test-dist: install
	$(PY) -m pytest tests -q -p no:cacheprovider -m dist

## bench: speed benchmarks; writes BENCHMARKS.md
bench: install
	$(PY) -m bench.run_all

## results: the learning benchmark (every method, 3 seeds, CPU, two commands at a time; under 2 h from scratch on 2 cores, docs/results/NOTES.md item 14); writes RESULTS.md + docs/results/*.png
##          (`python -m bench.results --quick` for the short version; parts are cached in results/results_run/)
results: install
	$(PY) -m bench.results $(RESULTS_ARGS)

clean:
	rm -rf processed_datasets results logs models wandb
