"""What a board copies, ``search/__init__.py`` and ``search/board/``, runs without torch.

The agent is started from a copy of exactly those files, in a Python where importing
torch (or any other heavy dependency of the search host) fails, and measures a model.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from conftest import ROOT
from search.board.client import AgentMeasurer
from search.board.timing import TimingPlan
from search.stages.export import export_onnx
from search.targets import get_target
from test_agent import start_agent

HOST_ONLY = ("torch", "torchvision", "optuna", "sqlalchemy", "sklearn", "matplotlib", "onnx", "torch_pruning", "spaces")


def _python_without_host_packages(tmp_path: Path) -> Path:
    """A folder whose ``sitecustomize`` makes every host-only import fail, in every process."""
    folder = tmp_path / "blocker"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {HOST_ONLY!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not on a board)")
                return None

        sys.meta_path.insert(0, Blocker())
    """))
    return folder


def test_the_board_wing_imports_without_torch(tmp_path):
    env = {"PYTHONPATH": f"{_python_without_host_packages(tmp_path)}:{ROOT}"}
    code = "import search.board.agent, search.board.client, search.board.timing; print('imported'); import torch"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.stdout == "imported\n", result.stderr
    assert "No module named 'torch' (blocked" in result.stderr  # the blocker itself works


def test_the_agent_runs_from_a_copy_of_the_board_files_alone(tmp_path):
    board = tmp_path / "board"
    (board / "search").mkdir(parents=True)
    shutil.copy(ROOT / "search" / "__init__.py", board / "search")
    shutil.copytree(ROOT / "search" / "board", board / "search" / "board", ignore=shutil.ignore_patterns("__pycache__"))
    env = {"PYTHONPATH": f"{_python_without_host_packages(tmp_path)}:{board}"}
    proc, port = start_agent(
        tmp_path / "agent.log", "--token", "t", command=["-m", "search.board.agent"], cwd=board, env=env
    )
    try:
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(144, 10)).eval()
        measurer = AgentMeasurer(get_target("host", f"127.0.0.1:{port}"), "t", TimingPlan(min_runs=5, min_seconds=0))
        measurement = measurer.measure(export_onnx(net, torch.zeros(1, 1, 8, 8)))
        assert measurement.stats.runs >= 5 and measurement.stats.p50_ms > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    log = (tmp_path / "agent.log").read_text()
    assert "blocked" not in log, log
