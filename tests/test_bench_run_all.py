"""bench.run_all --report: BENCHMARKS.md rebuilt from bench/out/*.json, with no figure that no benchmark wrote."""
import json
import sys

import bench.run_all as run_all


def test_report_rebuilds_from_saved_results_and_drops_hand_written_sections(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    saved = {
        "token_map": {"shape": "2 x 3", "source": "fake", "slow_s": 0.5, "fast_s": 0.01, "parse_s": 0.002,
                      "speedup": 50.0, "identical": True, "machine": "box A", "run_at": "2026-12-02 00:18"},
        "step_time": {"setup": "tiny", "rank_grpo_s": 1.2, "grpo_s": 1.25, "ratio": 0.96, "machine": "box A",
                      "run_at": "2026-12-02 00:18"},
        "demo_rss": {"cpu_s": 600.0, "wall_s": 480.0, "peak_rss_gb": 1.7, "target_gb": 3, "machine": "box A",
                     "run_at": "2026-12-02 00:18"},
    }
    for name, result in saved.items():
        (out / f"{name}.json").write_text(json.dumps(result))
    (tmp_path / "BENCHMARKS.md").write_text(
        "# Benchmarks\n\nRun: 2020-01-01 on box Z.\n\n"
        "## Numbers typed in by hand\n\nsomething 99 s\n\n"
        f"{run_all.OWN_SECTIONS['recpo']}\n\nrecpo section of an earlier run\n")
    monkeypatch.setattr(run_all, "REPO", tmp_path)
    monkeypatch.setattr(run_all, "RESULTS_DIR", out)
    monkeypatch.setattr(sys, "argv", ["run_all", "--report"])
    run_all.main()
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "Run: 2026-12-02 00:18 on box A." in text  # the saved results' own time, not now
    assert "**50.0x** faster" in text and "**0.960x**" in text and "| 1.70 GB |" in text
    assert "Numbers typed in by hand" not in text and "99 s" not in text
    assert "recpo section of an earlier run" in text  # a benchmark's own section from its last run is kept
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.json" for n in saved)  # --report ran nothing
