"""Shared fixtures of the operations tests (charts, dashboards, Prometheus).

Run by scripts/test.sh after the cargo tests, with the .venv of scripts/setup-python.sh:
    .venv/bin/python -m pytest -q tests/ops
A test whose peer (promtool, prometheus, Chromium, the llmd binary) is missing fails when CI is
set, as the Rust interop tests do; scripts/test.sh sets it, after installing every peer
(scripts/setup.sh). Run by hand without CI, such a test is skipped, saying why.
"""

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def require(ok: bool, why: str) -> None:
    """Skips the test when `ok` is false, or fails it in CI, where every peer must exist."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"required in CI: {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def llmd_bin() -> Path:
    """The `llmd` binary: $LLMD_BIN, or the one the cargo tests built (target/debug/llmd)."""
    path = Path(os.environ.get("LLMD_BIN", ROOT / "target" / "debug" / "llmd"))
    require(path.is_file() and os.access(path, os.X_OK), f"no llmd binary at {path} (cargo build -p llmd)")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    require(path is not None, "promtool not on PATH (scripts/setup-system.sh installs Debian prometheus)")
    return str(path)


@pytest.fixture(scope="session")
def prometheus() -> str:
    path = shutil.which("prometheus")
    require(path is not None, "prometheus not on PATH (scripts/setup-system.sh installs Debian prometheus)")
    return str(path)
