"""``python -m bench.results``: see the package docstring."""
from bench.results.schedule import main

raise SystemExit(main())
