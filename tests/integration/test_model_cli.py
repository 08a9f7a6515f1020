"""``cm-gateway model`` as a subprocess: stats and the taxonomy tree from the validation
route over real HTTP, --json, and the exit status of each failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.testing import EmulatorHandle

TOKEN = "model-token-4b7d10"
pytestmark = pytest.mark.emulator(token=TOKEN)


def config_for(tmp_path: Path, base_url: str, version: str = "live") -> Path:
    path = tmp_path / "gw.toml"
    path.write_text(
        "[classifier]\n"
        f'base_url = "{base_url}"\nproject = "acme"\ndataset = "inbox"\n'
        f'token_env = "CMGW_MODEL_TOKEN"\nmodel_version = "{version}"\n'
    )
    return path


def model(*args: str, token: str = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CMGW_MODEL_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "gateway", "model", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_model_prints_stats_and_the_taxonomy_tree(tmp_path: Path, emu: EmulatorHandle) -> None:
    """Text output: version and stats, then parents with their children indented."""
    result = model("--config", str(config_for(tmp_path, emu.base_url)))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "communications-mining acme/inbox@live (version 7)" in out
    assert "mean average precision: 0.83" in out
    lines = out.splitlines()
    finance = lines.index("├── Finance")
    assert lines[finance + 1 : finance + 4] == [
        "│   ├── Invoice",
        "│   ├── Payment Reminder",
        "│   └── Refund",
    ]
    assert "└── Urgent" in lines


def test_model_json_lists_every_label(tmp_path: Path, emu: EmulatorHandle) -> None:
    """--json: one object with version, stats and label_names (A > B)."""
    result = model("--config", str(config_for(tmp_path, emu.base_url, "staging")), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["version"] == 8
    assert "Compliance > Payment Card Data" in data["label_names"]
    assert data["num_labels"] == len(data["labels"])


def test_model_with_a_wrong_token_exits_1_with_one_line(
    tmp_path: Path, emu: EmulatorHandle
) -> None:
    """401 from the API: exit 1, one stderr line naming the failure, no token in it."""
    result = model("--config", str(config_for(tmp_path, emu.base_url)), token="bad-token-0000")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "auth" in result.stderr
    assert "bad-token-0000" not in result.stderr


def test_model_with_an_unknown_version_exits_1(tmp_path: Path, emu: EmulatorHandle) -> None:
    """A model version the tenant does not have: 404 -> exit 1 (not-found)."""
    result = model("--config", str(config_for(tmp_path, emu.base_url, "99")))
    assert result.returncode == 1 and "not-found" in result.stderr


def test_model_without_a_token_exits_2(tmp_path: Path, emu: EmulatorHandle) -> None:
    """No token in the environment is a config error: exit 2 naming classifier.token_env."""
    result = model("--config", str(config_for(tmp_path, emu.base_url)), token="")
    assert result.returncode == 2
    assert "classifier.token_env" in result.stderr and "CMGW_MODEL_TOKEN" in result.stderr


def test_model_with_the_embedded_default_reads_the_emulator_taxonomy() -> None:
    """No config: the in-process emulator's taxonomy, clearly labelled as the emulator."""
    result = model()
    assert result.returncode == 0, result.stderr
    assert "emulator" in result.stdout and "├── Finance" in result.stdout
