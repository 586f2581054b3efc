"""The root ``evc`` command.

Subcommands are plugins: setup.cfg declares them in the ``evc.commands``
entry-point group (name -> ``module:attr``). The group lists them without
importing them, loads one only when it runs, and reports a plugin that fails
to load by name instead of leaving it silently missing.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

import click

from evc import __version__
from evc.errors import EvcError

ENTRY_POINT_GROUP = "evc.commands"


def _plugins() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


class PluginGroup(click.Group):
    """A click group whose commands come from entry points, loaded lazily.

    It is also the one place where an ``EvcError`` from any command becomes the
    user's one clear line (``Error: …``, exit 1), with no traceback.
    """

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except EvcError as exc:
            raise click.ClickException(str(exc)) from exc

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_plugins()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        entry = _plugins().get(cmd_name)
        if entry is None:
            return None
        try:
            loaded = entry.load()
        except Exception as exc:  # noqa: BLE001 - any import failure is reported by name
            return _broken(cmd_name, f"{entry.value} failed to load: {type(exc).__name__}: {exc}")
        if not isinstance(loaded, click.Command):
            return _broken(cmd_name, f"{entry.value} is not a click command")
        return loaded


def _broken(name: str, problem: str) -> click.Command:
    """Stands in for a plugin that cannot load: listed in --help, fails clearly when run."""

    def _run() -> None:
        raise click.ClickException(f"plugin {name!r}: {problem}")

    return click.Command(
        name,
        callback=_run,
        help=f"(BROKEN PLUGIN) {problem}",
        short_help=f"BROKEN: {problem}"[:120],
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


@click.group(
    cls=PluginGroup,
    context_settings={"auto_envvar_prefix": "EVC", "help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="evc")
def cli() -> None:
    """EVCharging: central, charge points and drivers over Apache Kafka and TCP.

    Every option can also be given as an environment variable EVC_<COMMAND>_<OPTION>,
    for example EVC_CENTRAL_HEARTBEAT_TIMEOUT=5.
    """


def main() -> None:
    cli(prog_name="evc")


# ---------------------------------------------------------------------- the seed's names
# The assignment names its four programs EV_Central, EV_CP_M, EV_CP_E and EV_Driver, with
# the same positional arguments as evc's subcommands: each runs that subcommand itself.

def _seed_program(name: str, prog: str) -> None:
    """Run the plugin ``name`` as the program ``prog`` (its options, help and errors)."""
    command = cli.get_command(click.Context(cli, info_name="evc"), name)
    assert command is not None and command.callback is not None
    callback = command.callback

    def run(**kwargs: object) -> object:
        try:
            return callback(**kwargs)
        except EvcError as exc:
            raise click.ClickException(str(exc)) from exc

    program = click.Command(prog, params=command.params, callback=run, help=command.help,
                            epilog=command.epilog, context_settings={
                                **command.context_settings,
                                "help_option_names": ["-h", "--help"]})
    program.main(prog_name=prog, auto_envvar_prefix=f"EVC_{name.upper().replace('-', '_')}")


def ev_central() -> None:
    _seed_program("central", "EV_Central")


def ev_cp_m() -> None:
    _seed_program("cp-monitor", "EV_CP_M")


def ev_cp_e() -> None:
    _seed_program("cp-engine", "EV_CP_E")


def ev_driver() -> None:
    _seed_program("driver", "EV_Driver")


if __name__ == "__main__":  # pragma: no cover
    main()
