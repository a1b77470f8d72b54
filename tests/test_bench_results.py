"""bench.learning's report: mean +- std over seeds, the list / next-item split, targets, figures, caches."""
import json
import statistics
from pathlib import Path

from bench.learning import parts as registry
from bench.learning import report, schedule
from bench.learning.parts import rank_grpo


def _row(method, seed, ndcg10, target_only=False):
    row = {k: ndcg10 / 2 for k in schedule.METRICS} | {"ndcg@10": ndcg10, "valid_item_ratio": 0.5,
                                                     "num_samples": 500, "method": method, "seed": seed,
                                                     "protocol": "packed"}
    if target_only:
        row["groundtruth"] = "target"
    return row


def _parts():
    return {
        "popularity": {"rows": [_row("Popularity", None, 0.03), _row("Popularity", None, 0.02, True)], "cpu_s": 60},
        "sft": {"rows": [_row("SFT", 0, 0.010), _row("SFT", 1, 0.014)], "cpu_s": 600,
                "curves": {"0": {"val": [{"step": 200.0, "ndcg@10": 0.01}], "val_final": _row("SFT", 0, 0.012)}}},
        "grpo": {"rows": [_row("GRPO", 0, 0.013), _row("GRPO", 1, 0.015)], "cpu_s": 120},
        "rank_grpo_exp_inf": {"rows": [_row("Rank-GRPO (exp_inf)", 0, 0.016), _row("Rank-GRPO (exp_inf)", 1, 0.018)],
                              "cpu_s": 120, "curves": {"0": {"val": [{"step": 10.0, "ndcg@10": 0.02}],
                                                             "reward": [[1, 0.2], [2, 0.3]]}}},
        "trm": {"rows": [_row("TRM alone", None, 0.05, True)], "cpu_s": 90},
        "deeprec": {"rows": [_row("DeepRec stage 2", 0, 0.04, True)], "cpu_s": 90},
    }


def test_report_tables_targets_and_figures(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "DOCS_FIGURES", tmp_path / "figs")
    out = tmp_path / "RESULTS.md"
    report.write_results(_parts(), "quick", schedule.QUICK, "2026-01-01 00:00", (1.0, 1.0, 1.0), out,
                          {"recpo": "exit 1: boom\ntail"})
    text = out.read_text()
    sft_line = next(line for line in text.splitlines() if line.startswith("| SFT |"))
    cells = [c.strip() for c in sft_line.strip("|").split("|")]
    ndcg10 = cells[2 + schedule.METRICS.index("ndcg@10")]
    assert ndcg10 == f"{statistics.mean([0.010, 0.014]):.4f} ± {statistics.stdev([0.010, 0.014]):.4f}"
    assert cells[1] == "2" and cells[-1] == "10.0"  # seeds, CPU minutes (600 s)
    # the target-only rows sit in the next-item table only
    list_part, next_part = text.split("## ML-100k, next-item protocol")
    assert "TRM alone" not in list_part and "TRM alone" in next_part.split("## ReDial")[0]
    assert "+41.7% relative" in text and "**met**" in text  # 0.017 vs 0.012
    assert "Rank-GRPO >= GRPO >= SFT" in text and "**holds**" in text
    assert "DeepRec stage 2 vs its TRM alone (next item, NDCG@10): 0.0400 vs 0.0500: **does not beat**" in text
    assert "`recpo`: exit 1: boom" in text
    assert "![validation curves](figs/quick_val_ndcg10.png)" in text
    assert (tmp_path / "figs" / "quick_val_ndcg10.png").stat().st_size > 0
    assert (tmp_path / "figs" / "quick_train_reward.png").stat().st_size > 0


def test_cached_parts_are_reused_and_report_only_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(schedule, "REPO", tmp_path)
    monkeypatch.setattr(report, "DOCS_FIGURES", tmp_path / "figs")
    part = tmp_path / "results" / "results_run" / "quick" / "sft"
    part.mkdir(parents=True)
    (part / "part.json").write_text(json.dumps(_parts()["sft"] | {"settings": schedule.QUICK.key()}))
    called = []
    monkeypatch.setattr(registry, "PART_FUNCS", {k: (lambda ctx, k=k: called.append(k)) for k in registry.PARTS})
    assert schedule.main(["--quick", "--report", "--output", str(tmp_path / "R.md")]) == 0
    assert called == []
    assert "| SFT | 2 |" in (tmp_path / "R.md").read_text()


def test_an_rl_part_cached_with_other_overrides_is_rerun(tmp_path, monkeypatch):
    monkeypatch.setattr(schedule, "REPO", tmp_path)
    monkeypatch.setattr(report, "DOCS_FIGURES", tmp_path / "figs")
    monkeypatch.setattr(rank_grpo, "RL_OVERRIDES", {"full": [], "quick": ["--learning_rate", "1e-4"]})
    for name, overrides in (("grpo", []), ("gspo", ["--learning_rate", "1e-4"])):
        part = tmp_path / "results" / "results_run" / "quick" / name
        part.mkdir(parents=True)
        (part / "part.json").write_text(json.dumps({"rows": [], "settings": schedule.QUICK.key(),
                                                    "rl_overrides": overrides}))
    called = []
    monkeypatch.setattr(registry, "PART_FUNCS", {k: (lambda ctx, k=k: called.append(k) or {}) for k in registry.PARTS})
    schedule.main(["--quick", "--only", "grpo", "gspo", "--output", str(tmp_path / "R.md")])
    assert called == ["grpo"]  # gspo's cache ran with today's overrides, grpo's without
    saved = json.loads((tmp_path / "results" / "results_run" / "quick" / "grpo" / "part.json").read_text())
    assert saved["rl_overrides"] == ["--learning_rate", "1e-4"]
    monkeypatch.undo()
    assert registry.overrides_of("grpo", "full-sft_steps400") == rank_grpo.RL_OVERRIDES["full"] != []
    assert registry.overrides_of("grpo", "quick") == [] and registry.overrides_of("recpo", "full") == []


def test_set_overrides_budgets_and_rejects_unknown_keys(tmp_path, monkeypatch, capsys):
    import pytest

    monkeypatch.setattr(schedule, "REPO", tmp_path)
    monkeypatch.setattr(report, "DOCS_FIGURES", tmp_path / "figs")
    seen = {}
    monkeypatch.setattr(registry, "PART_FUNCS", {k: (lambda ctx, k=k: seen.setdefault(k, ctx) and {})
                                                for k in registry.PARTS})
    schedule.main(["--quick", "--set", "sft_steps=7", "--only", "sft", "--output", str(tmp_path / "R.md")])
    assert seen["sft"].settings.sft_steps == 7 and seen["sft"].root.parent.name == "quick-sft_steps7"
    with pytest.raises(SystemExit):
        schedule.main(["--quick", "--set", "sft_stepz=7"])
    assert "sft_stepz" in capsys.readouterr().err


def test_scheduler_respects_dependencies_runs_two_commands_at_once_and_skips_after_a_failure():
    import threading
    import time

    slots = schedule.CommandSlots(2)
    lock, in_slot, peak_cmds, in_part, peak_parts, order = threading.Lock(), [0], [0], [0], [0], []
    failures = {}

    def command():
        with slots.slot():
            with lock:
                in_slot[0] += 1
                peak_cmds[0] = max(peak_cmds[0], in_slot[0])
            time.sleep(0.03)
            with lock:
                in_slot[0] -= 1

    def run_part(name):
        with lock:
            in_part[0] += 1
            peak_parts[0] = max(peak_parts[0], in_part[0])
            order.append(("start", name))
        for _ in range(3):  # a part is several commands
            command()
        with lock:
            in_part[0] -= 1
            order.append(("end", name))
        if name == "trm":
            failures[name] = "exit 1"

    todo = ["data", "popularity", "trm", "sft", "grpo", "gspo", "recpo", "deeprec"]
    schedule.run_scheduled(todo, run_part, failures)
    started = [n for e, n in order if e == "start"]
    ended = [n for e, n in order if e == "end"]
    assert peak_cmds[0] == 2  # never more commands than slots
    assert peak_parts[0] >= 3  # but every ready part is in flight, its commands queued for the slots
    for name in started:  # every part starts after the parts it reads from ended
        for dep in registry.DEPENDS_ON.get(name, []):
            assert order.index(("end", dep)) < order.index(("start", name)), (dep, name)
    assert "deeprec" not in started and "trm" in failures["deeprec"]  # it needs the failed TRM
    assert set(ended) == set(todo) - {"deeprec"}


def test_command_slots_are_granted_first_asked_first_served():
    """A part that frees a slot and asks again at once queues behind the parts already waiting (a plain Semaphore
    lets it take the slot straight back)."""
    import threading
    import time

    slots = schedule.CommandSlots(1)
    granted, lock = [], threading.Lock()
    holding, release_a = threading.Event(), threading.Event()

    def part_a():
        with slots.slot():
            granted.append("a1")
            holding.set()
            release_a.wait(5)
        with slots.slot():  # asks again straight after releasing
            granted.append("a2")

    def waiter(name):
        with slots.slot():
            with lock:
                granted.append(name)

    a = threading.Thread(target=part_a)
    a.start()
    holding.wait(5)
    others = []
    for name in ("b", "c"):
        others.append(threading.Thread(target=waiter, args=(name,)))
        others[-1].start()
        deadline = time.time() + 5
        while len(slots._queue) < len(others) and time.time() < deadline:  # b is queued before c asks
            time.sleep(0.005)
    release_a.set()
    for t in (a, *others):
        t.join(5)
    assert granted == ["a1", "b", "c", "a2"]


def test_ctx_run_counts_each_commands_own_cpu_time(tmp_path):
    import sys
    import threading

    ctxs = [schedule.Ctx(settings=schedule.QUICK, mode="quick", root=tmp_path / str(i), force=False) for i in range(2)]
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < {}: pass"
    threads = [threading.Thread(target=c.run, args=([sys.executable, "-c", busy.format(sec)], tmp_path / f"{i}.log"))
               for i, (c, sec) in enumerate(zip(ctxs, (0.3, 1.2)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # each context holds its own child's time, not the sum of both (which RUSAGE_CHILDREN would give)
    assert 0.3 <= ctxs[0].cpu_s < 1.0 and 1.2 <= ctxs[1].cpu_s < 1.9


def test_evaluate_keeps_the_training_seed_of_a_row(tmp_path):
    ctx = schedule.Ctx(settings=schedule.QUICK, mode="quick", root=tmp_path, force=False)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps({"ndcg@10": 0.1, "seed": 42}))
    row = {"method": "SFT", "seed": 2, **ctx.evaluate(tmp_path / "eval", [])}  # cached: nothing runs
    assert row["seed"] == 2 and row["eval_seed"] == 42


def test_rl_part_scores_the_checkpoint_best_on_validation(tmp_path, monkeypatch):
    """The test split is scored at the validation-best checkpoint, per seed; the test rows choose nothing."""
    settings = schedule.Settings(**schedule.QUICK.key())
    settings.seeds, settings.rl_steps, settings.rl_save_steps = [0, 1], 20, 10
    (tmp_path / "sft" / "seed0" / "model").mkdir(parents=True)
    (tmp_path / "sft" / "seed0" / "model" / "config.json").write_text("{}")
    val_by_seed = {0: {10: 0.05, 20: 0.04}, 1: {10: 0.03, 20: 0.03}}  # seed 1: a tie -> the earlier step
    evaluated = []

    def fake_run(self, args, log, done=None):
        if "train_rank_grpo.py" in args[1]:
            out = Path(args[args.index("--output_dir") + 1])
            (out / "checkpoint-10").mkdir(parents=True)
            (out / "config.json").write_text("{}")
        elif "eval_val.py" in args[1]:
            run_dir = Path(args[args.index("--run_dir") + 1])
            seed = int(run_dir.parent.name.removeprefix("seed"))
            lines = ["step,ndcg@10"] + [f"{k},{v}" for k, v in val_by_seed[seed].items()]
            (run_dir / "eval_validation.csv").write_text("\n".join(lines) + "\n")
        else:  # eval_test.py
            model = args[args.index("--model_path") + 1]
            evaluated.append(model)
            out = Path(args[args.index("--output_dir") + 1])
            out.mkdir(parents=True)
            (out / "metrics.json").write_text(json.dumps({"ndcg@10": 0.1}))

    monkeypatch.setattr(schedule.Ctx, "run", fake_run)
    ctx = schedule.Ctx(settings=settings, mode="quick", root=tmp_path / "grpo", force=False, tag="grpo")
    part = registry.PART_FUNCS["grpo"](ctx)
    assert [r["selected_step"] for r in part["rows"]] == [10, 10]
    assert evaluated == [str(tmp_path / "grpo" / f"seed{s}" / "model" / "checkpoint-10") for s in (0, 1)]
    assert rank_grpo.best_checkpoint([{"step": 10.0, "ndcg@10": 0.01}, {"step": 20.0, "ndcg@10": 0.02}], 20) == 20
    assert rank_grpo.best_checkpoint([], 20) == 20
    lines = report._selection_lines(part["rows"], settings)
    assert "Steps picked, by seed: GRPO 10/10." in lines[0]


def test_report_names_each_run_the_cached_parts_came_from(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "DOCS_FIGURES", tmp_path / "figs")
    stamp = lambda a, b: {"started": f"2026-12-01 {a}", "finished": f"2026-12-01 {b}",  # noqa: E731
                          "load_start": [1, 1, 1], "load_end": [2, 2, 2]}
    parts = _parts()
    parts["sft"] |= stamp("15:24", "16:03")
    parts["popularity"] |= stamp("15:26", "15:27")
    parts["grpo"] |= stamp("18:44", "19:14") | {"run_started": "2026-12-01 18:44"}
    parts["rank_grpo_exp_inf"] |= stamp("19:20", "19:44") | {"run_started": "2026-12-01 18:44"}  # a gap, same run
    parts["deeprec"] |= stamp("16:29", "16:35")  # no run_started, no overlap: a run of its own
    assert [(w[0][-5:], w[1][-5:], w[2]) for w in report._run_windows(parts)] == [
        ("15:24", "16:03", ["sft", "popularity"]), ("16:29", "16:35", ["deeprec"]),
        ("18:44", "19:44", ["grpo", "rank_grpo_exp_inf"])]
    out = tmp_path / "R.md"
    report.write_results(parts, "full", schedule.FULL, "2026-12-01 20:00", (1.0, 1.0, 1.0), out, {})
    text = out.read_text()
    assert "its parts from 3 runs" in text
    assert ("the parts come from 3 runs (2026-12-01 15:24-16:03 UTC, 39 min: sft, popularity; 2026-12-01 "
            "16:29-16:35 UTC, 6 min: deeprec; 2026-12-01 18:44-19:44 UTC, 60 min: grpo, rank_grpo_exp_inf); ") in text
    del parts["grpo"], parts["rank_grpo_exp_inf"], parts["deeprec"]
    report.write_results(parts, "full", schedule.FULL, "2026-12-01 20:00", (1.0, 1.0, 1.0), out, {})
    assert "39 min from the first part's start to the last part's end" in out.read_text()


def test_report_prints_the_overrides_the_rl_parts_ran_with():
    parts = _parts()
    parts["grpo"]["rl_overrides"] = ["--learning_rate", "1e-4"]
    parts["rank_grpo_exp_inf"]["rl_overrides"] = ["--learning_rate", "1e-4"]
    assert report._overrides_text(parts) == "--learning_rate 1e-4"
    parts["rank_grpo_exp_inf"]["rl_overrides"] = []  # a cache from before a change: both are named
    assert report._overrides_text(parts) == "grpo: --learning_rate 1e-4; rank_grpo_exp_inf: none"
