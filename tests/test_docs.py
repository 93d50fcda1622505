"""The documentation runs as written, as a new user would run it: every ```python block of README.md and
docs/*.md in its own fresh interpreter (no conftest state, JAX's default float32, no x64 fixture), and every
documented ``python -m jaxmat...`` line: its flags against the command's --help, the cheap ones for real.

A user's files named in the docs are replaced by small stand-ins (PLACEHOLDERS). A block or command line that
cannot run here says so in the docs, visibly, in the paragraph just before it: "(Not run by the doc tests:
REASON.)"; those are reported as skips with that reason.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, shared_file

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.M | re.S)
NOT_RUN = re.compile(r"\(Not run by the doc tests: ([^)]+)\)")
TIMEOUT = 600

# A user's file named in the docs -> the stand-in the test makes (see `stand_ins`).
PLACEHOLDERS = {
    "encoder.pt": "reference checkpoint",  # a published PolySRL encoder: ../shared/reference
    "runs/polysrl": "trained run",  # a tiny float64 run trained once per module
    "mace.model": "mace model",  # a small random mace-torch model
    "frames.extxyz": "frames",  # two 8-atom rock-salt HEO cells
}

# Documented command lines run for real (prefixes); the others are checked against their --help.
RUN_FOR_REAL = (
    "python -m jaxmat.embed ",
    "python -m jaxmat.relax frames.extxyz --model mace.model --out relaxed.extxyz --optimizer",
    "python -m jaxmat.heo.generate ",
)


def fenced_blocks(language: str, paths=DOCS):
    """(id, text, reason not to run or None) of every ```language block of the docs."""
    found = []
    for path in paths:
        text = path.read_text()
        previous_end = 0
        for match in FENCE.finditer(text):
            if match.group(1) == language:
                line = text.count("\n", 0, match.start()) + 1
                before = text[previous_end : match.start()].strip().split("\n\n")[-1]
                reason = NOT_RUN.search(before)
                name = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
                found.append((f"{name}:{line}", match.group(2), reason and reason.group(1)))
            previous_end = match.end()
    return found


def jaxmat_command_lines():
    """(id, line, reason) of every ``python -m jaxmat...`` command in the ```bash blocks (continuations joined,
    ``a && b`` split, leading VAR=value assignments dropped)."""
    found = []
    for block_id, text, reason in fenced_blocks("bash"):
        for line in text.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                while words and re.match(r"^[A-Z_]+=", words[0]):
                    words = words[1:]
                if words[:2] == ["python", "-m"] and words[2].startswith("jaxmat"):
                    found.append((f"{block_id} {words[2]}", " ".join(words), reason))
    return found


def clean_env() -> dict:
    """The environment of a user's shell: no JAX precision switch inherited from the test process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(argv, cwd, timeout=TIMEOUT):
    result = subprocess.run(argv, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, argv))} exited {result.returncode}:\n{result.stderr[-4000:]}"
    return result


def train_tiny_run(workdir: Path) -> Path:
    """One epoch of a float64 model with 8 hidden units on 16 embedded HEO frames (the command a user runs)."""
    sets = ["data.source=embedded:heo", "data.limit=16", "train.batch_size=8", "train.epochs=1", "model.hidden=8",
            "model.n_samples=2", "model.stoichiometry_layers=1", "model.structure_layers=1", "model.dtype=float64"]
    run([sys.executable, "-m", "jaxmat.train", "--config", str(REPO / "configs/polysrl.yaml"), "--workdir", str(workdir),
         "--no-progress"] + [w for item in sets for w in ("--set", item)], cwd=workdir.parent)
    return workdir


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """Placeholder -> path of its stand-in, made on first use."""
    root = tmp_path_factory.mktemp("docs_inputs")

    def reference_checkpoint():
        return shared_file("reference/polysrl_Infomax_stoich_encoder.pt")

    def mace_model():
        import mace.modules  # noqa: F401  (before e3nn: mace lets torch.load read e3nn's constants)
        import torch

        from jaxmat.testing import build_small_mace

        path = root / "small.model"
        torch.save(build_small_mace([8, 12, 27, 28, 29, 30], hidden_irreps="8x0e", max_ell=1, correlation=1,
                                    num_interactions=1, radial_mlp=(16,)), path)
        return path

    def frames():
        import ase.io

        from jaxmat.heo.generate import rocksalt_heo

        path = root / "frames.extxyz"
        ase.io.write(path, [rocksalt_heo(1, seed=seed) for seed in range(2)])
        return path

    makers = {"reference checkpoint": reference_checkpoint, "trained run": lambda: train_tiny_run(root / "run"),
              "mace model": mace_model, "frames": frames}
    made = {}

    def substitute(text: str) -> str:
        for placeholder, name in PLACEHOLDERS.items():
            if placeholder in text:
                if name not in made:
                    made[name] = makers[name]()
                text = text.replace(placeholder, str(made[name]))
        return text

    return substitute


@pytest.mark.parametrize("block_id, code, reason", fenced_blocks("python"), ids=[b[0] for b in fenced_blocks("python")])
def test_python_block_runs_in_a_fresh_interpreter(block_id, code, reason, stand_ins, tmp_path):
    if reason:
        pytest.skip(reason)
    script = tmp_path / "block.py"
    script.write_text(stand_ins(code))
    run([sys.executable, str(script)], cwd=tmp_path)


@functools.cache
def help_text(module: str) -> str:
    return run([sys.executable, "-m", module, "--help"], cwd=REPO, timeout=120).stdout


COMMANDS = jaxmat_command_lines()


@pytest.mark.parametrize("line_id, line, reason", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_documented_flags_exist(line_id, line, reason):
    """Every documented line, also one not run here: its flags are the command's (--help always runs)."""
    words = shlex.split(line)
    known = set(re.findall(r"--[\w-]+", help_text(words[2])))
    unknown = [w.split("=")[0] for w in words if w.startswith("--") and w.split("=")[0] not in known]
    assert not unknown, f"{line_id}: {line!r} uses flags python -m {words[2]} does not have: {unknown}"


REAL = [c for c in COMMANDS if c[1].startswith(RUN_FOR_REAL)]


@pytest.mark.parametrize("line_id, line, reason", REAL, ids=[c[0] for c in REAL])
def test_cheap_command_runs(line_id, line, reason, stand_ins, tmp_path):
    if reason:
        pytest.skip(reason)
    words = shlex.split(stand_ins(line))
    run([sys.executable] + words[1:], cwd=tmp_path)


def test_every_real_run_is_documented():
    """The RUN_FOR_REAL table names lines that still exist (a renamed command must not drop out silently)."""
    for prefix in RUN_FOR_REAL:
        assert any(line.startswith(prefix) for _, line, _ in COMMANDS), prefix


def test_a_block_marked_not_run_is_skipped_with_its_reason(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("Text.\n\n```python\nprint(1)\n```\n\nNeeds a key (Not run by the doc tests: needs a network.)\n\n"
                    "```python\nimport mp_api\n```\n")
    assert [(b[0], b[2]) for b in fenced_blocks("python", [page])] == [("page.md:3", None), ("page.md:9", "needs a network.")]
