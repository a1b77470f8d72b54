"""``python -m bench.results`` (``make results``): the learning benchmark's command line; the benchmark is the
``bench.learning`` package (scheduler, discovered parts, report)."""
from bench.learning.schedule import main

if __name__ == "__main__":
    raise SystemExit(main())
