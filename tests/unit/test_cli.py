import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import EntryPoint
from types import SimpleNamespace

from click.testing import CliRunner

from evc import __version__, cli
from tests.helpers import one_clear_line, run_evc

COMMANDS = ["broker", "central", "cp-monitor", "cp-engine", "driver", "demo", "status", "web",
            "ocpp", "ocpp-charger"]


def test_version():
    result = run_evc(["--version"])
    assert result.returncode == 0 and __version__ in result.stdout


def test_help_lists_every_plugin():
    result = run_evc(["--help"])
    assert result.returncode == 0
    for name in COMMANDS:
        assert name in result.stdout
    assert "BROKEN" not in result.stdout


def test_every_command_has_help():
    """Every subcommand's --help (in this process: `evc --help` above runs the program)."""
    for name in COMMANDS:
        result = CliRunner().invoke(cli.cli, [name, "--help"], prog_name="evc")
        assert result.exit_code == 0, result.output
        assert "Usage: evc " + name in result.stdout


SEED_PROGRAMS = {  # the assignment's program names, with its positional arguments
    "EV_Central": "Usage: EV_Central [OPTIONS] SOCKET_PORT KAFKA [DB_PATH]",
    "EV_CP_M": "Usage: EV_CP_M [OPTIONS] ENGINE CENTRAL CP_ID",
    "EV_CP_E": "Usage: EV_CP_E [OPTIONS] KAFKA",
    "EV_Driver": "Usage: EV_Driver [OPTIONS] KAFKA DRIVER_ID",
}


def seed_program(args: list[str], env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([f"{sys.prefix}/bin/{args[0]}", *args[1:]], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def test_the_seed_program_names_are_installed_with_their_help():
    with ThreadPoolExecutor(4) as pool:
        results = dict(zip(SEED_PROGRAMS, pool.map(lambda name: seed_program([name, "--help"]),
                                                   SEED_PROGRAMS), strict=True))
    for program, result in results.items():
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(SEED_PROGRAMS[program]), (program, result.stdout)


def test_a_seed_program_is_its_subcommand_errors_and_environment_too():
    bad = seed_program(["EV_Driver", "127.0.0.1:9092", "D 1", "--file", "x"])
    one_clear_line(bad, "bad driver id 'D 1'")
    env = seed_program(["EV_CP_E", "127.0.0.1:9092", "--listen", "6001"],
                       env={"EVC_CP_ENGINE_MAX_KW": "abc"})  # evc cp-engine's variable
    assert env.returncode == 2 and "'--max-kw': 'abc'" in env.stderr


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


BAD_ARGUMENTS = [
    (["central", "5000", "nohost"], "bad Kafka address 'nohost'"),
    (["central", "5000", "h:99999"], "port must be 1-65535"),
    (["cp-engine", "h:x", "--listen", "6000"], "bad Kafka address"),
    (["cp-engine", "127.0.0.1:9092", "--listen", "a:b:c"], "bad --listen address"),
    (["cp-monitor", "engine", "127.0.0.1:5000", "CP-01"], "bad engine address 'engine'"),
    (["cp-monitor", "127.0.0.1:6000", "central:", "CP-01"], "bad central address"),
    (["cp-monitor", "127.0.0.1:6000", "127.0.0.1:5000", "CP 01"], "bad cp id"),
    (["driver", "127.0.0.1:9092", "D 1", "--file", "x"], "bad driver id"),
]


def test_bad_arguments_get_one_clear_line():
    """Each component, given a bad address or id, says so in one line, exit code 1 (no
    broker needed: the arguments are checked first; in this process, as the seed
    programs' test below runs one as a program)."""
    for args, needle in BAD_ARGUMENTS:
        result = CliRunner().invoke(cli.cli, args, prog_name="evc")
        one_clear_line(SimpleNamespace(returncode=result.exit_code, stdout=result.stdout,
                                       stderr=result.stderr), needle)
