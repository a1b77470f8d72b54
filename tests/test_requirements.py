"""The pinned stacks install together: requirements.txt (CPU) and requirements-gpu.txt (GPU, with vLLM).

vLLM 0.31.0 requires transformers>=5.10.4,<5.18, so the CPU stack (transformers 5.23.0) plus vLLM cannot be installed
(pip reports the conflict and used to exit 0). requirements-gpu.txt is therefore a second, complete stack that
INSTALL.sh installs INSTEAD of requirements.txt on an NVIDIA machine. Checked here with real dependency metadata:

* the CPU pins against the installed distributions' own METADATA (the running interpreter is the pinned stack);
* the GPU pins against tests/fixtures/gpu_stack_constraints.json, recorded from a real ``pip install --dry-run
  --report`` of requirements-gpu.txt (source and date in the file; ``scripts/gpu_stack_constraints.py record``);
* where the GPU wheels are on this machine (``RECRL_WHEELS=folder``, or ``wheels/`` in the checkout: the offline
  install folder of docs/install.md), pip's own resolver over them, offline; skipped with the reason
  otherwise (vLLM's metadata is not on a CPU machine).

Each check is also run on the stack this commit replaced (requirements.txt + vllm==0.31.0) and must find its conflict.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from conftest import REPO
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from scripts.gpu_stack_constraints import FIXTURE, conflicts, kept_requirements, read_pins

CPU = read_pins(REPO / "requirements.txt")
GPU = read_pins(REPO / "requirements-gpu.txt")
TABLE = json.loads(FIXTURE.read_text())
# What an NVIDIA machine gets: both files together, requirements-gpu.txt's pins winning (INSTALL.sh installs the GPU
# file alone, which pins every package of requirements.txt: checked below)
GPU_STACK = {**CPU, **GPU}
OLD = {**CPU, "vllm": GPU["vllm"]}  # the replaced install: requirements-gpu.txt (vllm) then requirements.txt on top
# the pins requirements-gpu.txt changes, and why (each forced by a requirement in the recorded table)
GPU_ONLY = {"transformers", "huggingface-hub", "numpy"}


def torch_pin() -> str:
    return re.search(r"^TORCH_CPU_VERSION=(\S+)", (REPO / "INSTALL.sh").read_text(), re.M).group(1)


def test_pin_reader_refuses_what_is_not_an_exact_pin(tmp_path):
    bad = tmp_path / "requirements.txt"
    bad.write_text("trl==1.16.0\n# comment\ntransformers>=5.17\n")
    with pytest.raises(ValueError, match=r"requirements.txt:3: 'transformers>=5.17' is not an exact pin"):
        read_pins(bad)
    bad.write_text("trl==1.16.0\nTRL==1.16.0\n")
    with pytest.raises(ValueError, match="requirements.txt:2: TRL is pinned twice"):
        read_pins(bad)


def test_gpu_file_is_the_cpu_file_except_where_vllm_forces_it():
    """One stack with two flavours: the same pins, except the three vLLM forces (each line says why) and vLLM."""
    assert set(GPU) - set(CPU) == {"vllm"}, set(GPU) ^ set(CPU)
    assert set(CPU) <= set(GPU)
    differ = {name for name in CPU if CPU[name] != GPU[name]}
    assert differ == GPU_ONLY, differ
    lines = (REPO / "requirements-gpu.txt").read_text().splitlines()
    for name in differ:
        line = next(ln for ln in lines if canonicalize_name(ln.split("==")[0]) == name)
        assert "# GPU:" in line, f"requirements-gpu.txt: {line!r} differs from requirements.txt and says not why"


def test_gpu_pins_satisfy_the_recorded_metadata():
    """Every recorded requirement of every wheel of the resolved GPU stack holds for the GPU pins, the recorded
    versions are the pinned ones, and the recorded torch pin is INSTALL.sh's torch (one torch for both flavours)."""
    assert TABLE["source"] and TABLE["recorded"] and TABLE["environment"]["python_version"] == "3.11"
    requires = TABLE["requires"]
    assert any(d.startswith("vllm==") for d in requires) and "mistral-common" in {d.split("==")[0] for d in requires}
    for name, version in GPU.items():
        recorded = [d for d in requires if d.split("==")[0] == name]
        assert not recorded or recorded == [f"{name}=={version}"], \
            f"{FIXTURE.name} records {recorded}, requirements-gpu.txt pins {name}=={version}: re-record it " \
            "(scripts/gpu_stack_constraints.py)"
    found, unrecorded = conflicts({**GPU_STACK, "torch": torch_pin()}, requires)
    assert found == [] and unrecorded == [], (found, unrecorded)
    assert f"vllm=={GPU['vllm']}" in requires
    vllm_torch = [Requirement(r) for r in requires[f"vllm=={GPU['vllm']}"] if Requirement(r).name == "torch"]
    assert [str(r.specifier) for r in vllm_torch] == [f"=={torch_pin()}"], vllm_torch


def test_the_cpu_stack_plus_vllm_conflicts_in_the_recorded_metadata():
    """The check above can fail: the replaced install (requirements.txt + vllm) breaks vLLM's transformers bound, and
    keeping numpy 2.4 breaks mistral-common's (a vLLM requirement)."""
    found, _ = conflicts({**OLD, "torch": torch_pin()}, TABLE["requires"])
    assert any(c.startswith("vllm==0.31.0 requires transformers") and "pinned transformers==5.23.0" in c
               for c in found), found
    found, _ = conflicts({**GPU, "numpy": CPU["numpy"], "torch": torch_pin()}, TABLE["requires"])
    assert any(c.startswith("mistral-common==") and "numpy<2.4" in c for c in found), found
    found, _ = conflicts({**GPU, "huggingface-hub": CPU["huggingface-hub"], "torch": torch_pin()}, TABLE["requires"])
    assert any(c.startswith("transformers==5.17.0 requires huggingface-hub<2.0") for c in found), found


def _running_flavour() -> tuple[str, dict[str, str]]:
    installed = metadata.version("transformers")
    for name, pins in (("requirements.txt", CPU), ("requirements-gpu.txt", GPU)):
        if pins["transformers"] == installed:
            return name, pins
    pytest.fail(f"transformers {installed} is installed, but requirements.txt pins {CPU['transformers']} and "
                f"requirements-gpu.txt {GPU['transformers']}: run bash INSTALL.sh")


def test_the_installed_stack_is_its_pins_and_consistent_by_its_own_metadata():
    """The interpreter running the tests is one flavour: every pin installed at its version, and every installed
    pinned distribution's real Requires-Dist (markers evaluated here) satisfied by the pins."""
    name, pins = _running_flavour()
    env = {**default_environment(), "extra": ""}
    wrong, broken = [], []
    pins = {k: v for k, v in pins.items() if k != "vllm" or name == "requirements-gpu.txt"}
    for dist_name, version in pins.items():
        try:
            got = metadata.version(dist_name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{dist_name} not installed")
            continue
        if Version(got) != Version(version):
            wrong.append(f"{dist_name} {got} installed, {name} pins {version}")
            continue
        for text in kept_requirements(metadata.requires(dist_name) or [], env, [], set(pins) | {"torch"}):
            req = Requirement(text)
            other = canonicalize_name(req.name)
            have = pins.get(other) or metadata.version(other).split("+")[0]
            if not req.specifier.contains(Version(have), prereleases=True):
                broken.append(f"{dist_name}=={version} requires {req}; {other} {have}")
    assert wrong == [] and broken == [], (name, wrong, broken)


# ---------------------------------------------------------------------------------------------- pip's resolver
def _wheel_folder() -> Path | None:
    for folder in (os.environ.get("RECRL_WHEELS"), REPO / "wheels"):
        if folder and Path(folder).is_dir() and list(Path(folder).glob(f"vllm-{GPU['vllm']}-*.whl")):
            return Path(folder)
    return None


def _pip_dry_run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--find-links",
                           str(folder), "--quiet", *args], capture_output=True, text=True, env=env, timeout=600)


def test_pip_resolves_the_gpu_stack_from_the_real_wheels(tmp_path):
    folder = _wheel_folder()
    if folder is None:
        pytest.skip(f"vllm {GPU['vllm']}'s real metadata is not on this machine (no vllm-{GPU['vllm']}-*.whl in "
                    "RECRL_WHEELS or ./wheels; docs/install.md says how to fill that folder); the GPU pins "
                    f"are checked against the recorded table ({FIXTURE.relative_to(REPO)}) instead")
    report, stack = tmp_path / "report.json", tmp_path / "gpu_stack.txt"
    stack.write_text("".join(f"{name}=={version}\n" for name, version in GPU_STACK.items()))
    done = _pip_dry_run(folder, "--ignore-installed", "--report", str(report), "-r", str(stack))
    assert done.returncode == 0, done.stderr[-3000:]
    resolved = {canonicalize_name(i["metadata"]["name"]): i["metadata"] for i in json.loads(report.read_text())["install"]}
    for name, version in GPU_STACK.items():
        assert resolved[name]["version"] == version, (name, resolved[name]["version"], version)
    assert resolved["torch"]["version"].split("+")[0] == torch_pin()
    # the recorded table is what these wheels say
    for dist, recorded in TABLE["requires"].items():
        name, version = dist.split("==")
        if name in resolved and resolved[name]["version"] == version:
            wheel = next(folder.glob(f"{name.replace('-', '_')}-{version}-*.whl"), None) or \
                next(folder.glob(f"{name}-{version}-*.whl"), None)
            if wheel is None:
                continue
            with zipfile.ZipFile(wheel) as zf:
                text = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
            requires_dist = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("Requires-Dist:")]
            names = {canonicalize_name(Requirement(r).name) for r in recorded}
            extras = next((i.get("requested_extras") or [] for i in json.loads(report.read_text())["install"]
                           if canonicalize_name(i["metadata"]["name"]) == name), [])
            got = kept_requirements(requires_dist, TABLE["environment"], extras, names)
            assert sorted(got) == sorted(recorded), (dist, got, recorded)


def test_pip_finds_the_conflict_of_the_cpu_stack_plus_vllm(tmp_path):
    folder = _wheel_folder()
    if folder is None:
        pytest.skip("vllm's real metadata is not on this machine (see the test above)")
    if metadata.version("transformers") != CPU["transformers"]:
        pytest.skip(f"needs the CPU stack's transformers {CPU['transformers']} installed (its metadata)")
    both = tmp_path / "cpu_plus_vllm.txt"
    both.write_text((REPO / "requirements.txt").read_text() + f"vllm=={GPU['vllm']}\n")
    done = _pip_dry_run(folder, "-r", str(both))  # the installed transformers 5.23.0 stands for its wheel
    assert done.returncode != 0 and "ResolutionImpossible" in done.stderr, done.stderr[-3000:]
    assert "transformers" in done.stderr
