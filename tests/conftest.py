"""Shared test fixtures: where the real data lives, and a clear skip when it is absent."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
REDDIT_DIR = SHARED_DATA / "reddit_v2_rankgrpo"
REDIAL_DIR = SHARED_DATA / "redial_official"
AMAZON_DIR = SHARED_DATA / "amazon18_games_llmrank"


def require(path: Path) -> Path:
    """Skip the calling test, with the reason, when a real-data file is not beside the repo."""
    if not path.exists():
        pytest.skip(f"real data not found at {path} (expected ../shared/data beside the repo; see README 'Data')")
    return path


def pytest_configure(config):
    config.addinivalue_line("markers", "multiprocess: launches a real 2-process CPU run with accelerate (gloo)")
    config.addinivalue_line("markers", "dist: slow DeepSpeed (ZeRO-2 / ZeRO-3) CPU runs; `make test` deselects them, "
                                       "`make test-dist` runs them")
    config.addinivalue_line("markers", "pretrained: runs the real SmolLM2-135M through the scripts (tests/test_pretrained.py)")
