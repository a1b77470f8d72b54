"""The GPU stack's recorded dependency constraints (tests/fixtures/gpu_stack_constraints.json), and the check of a set
of pins against them.

vLLM is a GPU package: its real metadata is not on a CPU machine. So the constraints that decide whether the pins of
requirements-gpu.txt can be installed together are recorded once from a real resolution and checked offline:

    pip install --dry-run --ignore-installed --report report.json -r requirements-gpu.txt   # on a connected machine
    python scripts/gpu_stack_constraints.py record report.json                                 # rewrites the fixture

Every entry is one resolved wheel's METADATA ``Requires-Dist``, markers evaluated for the report's environment (Linux
x86_64, CPython 3.11) and the extras it was installed with, kept where it names a package that requirements*.txt pins
(or torch, which vLLM pins). tests/test_requirements.py checks the pins against the table, and against the real wheels
where they are available offline (``RECRL_WHEELS``).
"""
from __future__ import annotations

import datetime
import json
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "gpu_stack_constraints.json"
REQUIREMENTS = REPO / "requirements.txt"
REQUIREMENTS_GPU = REPO / "requirements-gpu.txt"


def read_pins(path: Path) -> dict[str, str]:
    """{canonical name: version} of a requirements file whose every requirement is ``name==version``; anything else
    (ranges, options, includes) is an error naming the file and line."""
    pins: dict[str, str] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9_.-]*)==([0-9][0-9A-Za-z.+!-]*)", text)
        if m is None:
            raise ValueError(f"{path.name}:{lineno}: {text!r} is not an exact pin name==version")
        name = canonicalize_name(m.group(1))
        if name in pins:
            raise ValueError(f"{path.name}:{lineno}: {m.group(1)} is pinned twice")
        pins[name] = m.group(2)
    return pins


def kept_requirements(requires_dist: list[str], environment: dict, extras: list[str], names: set[str]) -> list[str]:
    """The entries of a Requires-Dist list that apply in ``environment`` (with ``extras``) and name one of ``names``."""
    kept = []
    for text in requires_dist or []:
        req = Requirement(text)
        if canonicalize_name(req.name) not in names:
            continue
        if req.marker is not None and not any(req.marker.evaluate({**environment, "extra": e})
                                              for e in (extras or [""])):
            continue
        kept.append(str(req))
    return kept


def conflicts(pins: dict[str, str], table: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """(conflicts, unrecorded): every recorded requirement that a pin breaks, as 'A==x requires R; pinned y', and the
    pinned packages whose pinned version has no recorded metadata (its requirements cannot be checked)."""
    found, recorded_versions = [], {}
    for dist in table:
        name, version = dist.split("==")
        recorded_versions.setdefault(name, set()).add(version)
    for dist, requirements in table.items():
        name, version = dist.split("==")
        if name in pins and pins[name] != version:
            continue  # another version of this package is pinned: these are not its requirements
        for text in requirements:
            req = Requirement(text)
            other = canonicalize_name(req.name)
            if other in pins and not req.specifier.contains(Version(pins[other]), prereleases=True):
                found.append(f"{dist} requires {req}; pinned {other}=={pins[other]}")
    unrecorded = sorted(f"{n}=={v}" for n, v in pins.items() if v not in recorded_versions.get(n, {v}))
    return found, unrecorded


def record(report_path: Path) -> dict:
    """The fixture's content from a ``pip install --dry-run --report`` JSON of requirements-gpu.txt."""
    report = json.loads(report_path.read_text())
    environment = report["environment"]
    names = set(read_pins(REQUIREMENTS)) | set(read_pins(REQUIREMENTS_GPU)) | {"torch"}
    requires = {}
    for item in report["install"]:
        meta = item["metadata"]
        kept = kept_requirements(meta.get("requires_dist") or [], environment, item.get("requested_extras") or [],
                                 names)
        if kept:
            requires[f"{canonicalize_name(meta['name'])}=={meta['version']}"] = kept
    return {"source": f"pip {report.get('pip_version')} `pip install --dry-run --ignore-installed --report` of "
                      "requirements-gpu.txt against PyPI (each entry: that wheel's METADATA Requires-Dist, markers "
                      "evaluated for the environment below, kept where it names a package pinned in requirements*.txt "
                      "or torch)",
            "recorded": datetime.date.today().isoformat(),
            "environment": {k: environment[k] for k in ("python_version", "python_full_version", "platform_machine",
                                                        "sys_platform", "platform_system", "implementation_name",
                                                        "platform_python_implementation", "os_name")},
            "requires": requires}


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "record":
        sys.exit(__doc__)
    FIXTURE.write_text(json.dumps(record(Path(sys.argv[2])), indent=1) + "\n")
    print(f"wrote {FIXTURE.relative_to(REPO)}")
