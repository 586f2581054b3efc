import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest
from click.testing import CliRunner

from evc import __version__, cli
from tests.helpers import run_evc

COMMANDS = ["broker", "central", "cp-monitor", "cp-engine", "driver", "demo"]


def test_version():
    result = run_evc(["--version"])
    assert result.returncode == 0 and __version__ in result.stdout


def test_help_lists_every_plugin():
    result = run_evc(["--help"])
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help(name):
    result = run_evc([name, "--help"])
    assert result.returncode == 0, result.stderr
    assert "Usage: evc " + name in result.stdout


def test_console_script_installed():
    result = subprocess.run(["evc", "--version"], capture_output=True, text=True,
                            env={"PATH": f"{sys.prefix}/bin"})
    assert result.returncode == 0 and __version__ in result.stdout


def test_broken_plugin_is_reported_by_name(monkeypatch):
    monkeypatch.setattr(cli, "_plugins", lambda: {
        "ghost": EntryPoint("ghost", "evc.does_not_exist:cmd", cli.ENTRY_POINT_GROUP)})
    runner = CliRunner()
    listing = runner.invoke(cli.cli, ["--help"])
    assert "ghost" in listing.output and "BROKEN" in listing.output
    result = runner.invoke(cli.cli, ["ghost"])
    assert result.exit_code == 1
    assert "plugin 'ghost'" in result.output and "evc.does_not_exist" in result.output


def test_options_come_from_environment(tmp_path):
    result = run_evc(["broker", "status"], env={"EVC_BROKER_STATUS_DATA_DIR": str(tmp_path)})
    assert result.returncode == 3
    assert "not running" in result.stdout


def test_unknown_command_is_a_usage_error():
    result = run_evc(["nope"])
    assert result.returncode == 2 and "No such command 'nope'" in result.stderr
