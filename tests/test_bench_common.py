"""bench.common.StepClock: one clock for the step-time benchmarks (bench_recpo, bench_deeprec)."""
import time

from bench.common import StepClock


def test_step_clock_times_steps_and_the_phases_inside_them():
    clock = StepClock()
    for step in range(2):
        clock.on_step_begin(None, None, None)
        clock.timed("busy", lambda: sum(i * i for i in range(200_000)))
        clock.add("tokens", 0.0, 10.0 * (step + 1))
        clock.add("tokens", 0.0, 1.0)  # added up within a step
        time.sleep(0.05)  # wall, not CPU
        clock.on_step_end(None, None, None)
    assert len(clock.cpu) == len(clock.wall) == len(clock.steps) == 2
    assert [s["tokens"][1] for s in clock.steps] == [11.0, 21.0]  # each step has its own dict
    for s, cpu, wall in zip(clock.steps, clock.cpu, clock.wall):
        assert s["step"] == (cpu, wall)
        assert 0 < s["busy"][0] <= cpu and wall >= cpu + 0.04  # the sleep counts in wall only
