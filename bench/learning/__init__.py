"""The learning benchmark: train and evaluate every method on CPU, write RESULTS.md and its PNG figures.

    make results                                 # python -m bench.results  (3 seeds, >= 500 test samples)
    python -m bench.results --quick              # 1 seed, short runs, fewer samples (labelled as such)
    python -m bench.results --only sft grpo      # rerun some parts (the others are read from their caches)
    python -m bench.results --seeds 0 1 --force  # ignore the caches of the parts run

Every part runs the repository's own scripts (train_*.py, eval_test.py, eval_val.py) as subprocesses, so what is
measured here is what a user gets from the command line. Each part caches its outcome in
results/results_run/<mode>/<part>/part.json (and its runs / evaluations in that folder): a finished part is
skipped unless --force, a part killed midway resumes from the evaluations and trainings it finished. Every part
starts as soon as the parts it reads from are done; their commands take turns (first asked, first run) on --jobs
command slots (default: one per core, one thread each), so no core idles while any part has work left. CPU
time is each command's own user+system time (os.wait4): on a shared machine it is the cost that does not depend
on how many other jobs run; the wall time is reported next to it.

Layout: ``schedule`` (settings, command slots, the part scheduler, the command line), ``parts`` (one module per
part or method, each registering itself with ``bench.learning.parts.part``: discovered, not listed) and
``report`` (RESULTS.md rendered from the parts' rows).

Tuning rule: every choice in the settings and parts (steps, learning rates, temperatures) was made on the VALIDATION
split (eval_val.py curves); the test split is only scored, once per run, for the tables.
"""
