"""Operator commands typed at central's console, parsed into plain data.

    stop CP-01 | stop all | parar CP-01          -> Stop("CP-01") / Stop(None)
    resume CP-01 | resume all | reanudar all     -> Resume(...)
    add CP-11 "C/Mayor 3" 0.42 [--pair]          -> Add("CP-11", "C/Mayor 3", 0.42, pair)
    pair CP-11 [replace] | pair D-23             -> Pair("CP-11", replace)
    site P1 limit 100 | site P1 limit none       -> SiteLimit("P1", 100.0)
    site P1 add CP-01 CP-02 | site P1 remove CP-01  -> SiteMembers("P1", (...), add)
    add-operator ana | remove-operator ana       -> AddOperator("ana") / RemoveOperator(...)
    remove CP-11 | price CP-01 0.39 | help | quit

Parsing never touches state; the brain applies the result.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass

from evc.errors import ProtocolError
from evc.protocol.ids import ID_RULE, check_text, is_id, printable


class CommandError(ValueError):
    """A line that is not a valid command; the message is shown as is."""


@dataclass(frozen=True)
class Stop:
    cp_id: str | None  # None = all


@dataclass(frozen=True)
class Resume:
    cp_id: str | None


@dataclass(frozen=True)
class Add:
    cp_id: str
    location: str
    price: float
    pair: bool = False  # and a pairing code for it


@dataclass(frozen=True)
class Pair:
    ident: str  # a CP of the registry, or else a driver: a one-time pairing code
    replace: bool = False  # the operator confirms a proven credential is to be replaced


@dataclass(frozen=True)
class Remove:
    cp_id: str


@dataclass(frozen=True)
class SetPrice:
    cp_id: str
    price: float


@dataclass(frozen=True)
class Rotate:
    ident: str  # a CP or a driver: a new secret credential


@dataclass(frozen=True)
class Revoke:
    ident: str  # a CP or a driver: no credential any more


@dataclass(frozen=True)
class AddDriver:
    driver_id: str


@dataclass(frozen=True)
class RemoveDriver:
    driver_id: str


@dataclass(frozen=True)
class SiteLimit:
    site: str
    limit_kw: float | None  # None: no limit


@dataclass(frozen=True)
class SiteMembers:
    site: str
    cp_ids: tuple[str, ...]
    add: bool  # False: the CPs leave the site


@dataclass(frozen=True)
class AddOperator:
    name: str  # an account for evc web (a new password if it exists)


@dataclass(frozen=True)
class RemoveOperator:
    name: str


@dataclass(frozen=True)
class Ocpp:
    """An OCPP command for a charger behind a gateway (docs/OCPP.md)."""

    cp_id: str
    action: str  # Reset, TriggerMessage, GetConfiguration, ChangeConfiguration
    arg: str = ""


@dataclass(frozen=True)
class OcppPassword:
    cp_id: str  # show its HTTP Basic password (security profile 1)


OCPP_USAGE = ("usage: ocpp <cp> reset soft|hard, ocpp <cp> trigger <message>, "
              "ocpp <cp> get [key], ocpp <cp> set <key>=<value>")
TRIGGERS = ("BootNotification", "DiagnosticsStatusNotification", "FirmwareStatusNotification",
            "Heartbeat", "MeterValues", "StatusNotification")


def _ocpp(args: list[str]) -> Ocpp:
    if len(args) < 2:
        raise CommandError(OCPP_USAGE)
    cp_id, what, rest = _cp_id(args[0]), args[1].lower(), args[2:]
    if what == "reset" and len(rest) == 1 and rest[0].lower() in ("soft", "hard"):
        return Ocpp(cp_id, "Reset", rest[0].capitalize())
    if what == "trigger" and len(rest) == 1:
        names = {t.lower(): t for t in TRIGGERS}
        if rest[0].lower() not in names:
            raise CommandError(f"trigger one of {', '.join(TRIGGERS)}")
        return Ocpp(cp_id, "TriggerMessage", names[rest[0].lower()])
    if what == "get" and len(rest) <= 1:
        return Ocpp(cp_id, "GetConfiguration", rest[0] if rest else "")
    if what == "set" and len(rest) == 1 and "=" in rest[0]:
        key, _, value = rest[0].partition("=")
        if key and len(key) <= 50 and len(value) <= 500:
            return Ocpp(cp_id, "ChangeConfiguration", rest[0])
    raise CommandError(OCPP_USAGE)


@dataclass(frozen=True)
class Help:
    pass


@dataclass(frozen=True)
class Quit:
    pass


Command = (Stop | Resume | Add | Remove | SetPrice | Rotate | Revoke | AddDriver | RemoveDriver
           | Pair | SiteLimit | SiteMembers | AddOperator | RemoveOperator | Ocpp | OcppPassword
           | Help | Quit)

HELP = (
    "commands: stop <cp>|all, resume <cp>|all (parar/reanudar), "
    'add <cp> "<location>" <price> [--pair], remove <cp>, price <cp> <eur>, '
    "add-driver <id>, remove-driver <id>, pair <cp|driver> [replace], "
    "site <site> limit <kw>|none, site <site> add|remove <cp>..., "
    "rotate <cp|driver>, revoke <cp|driver>, add-operator <name>, remove-operator <name>, "
    "ocpp <cp> reset soft|hard|trigger <msg>|get [key]|set <key>=<value>, "
    "ocpp-password <cp>, help, quit"
)

ALIASES = {
    "stop": "stop", "parar": "stop",
    "resume": "resume", "reanudar": "resume",
    "add": "add", "alta": "add",
    "remove": "remove", "baja": "remove",
    "price": "price", "precio": "price",
    "rotate": "rotate", "renovar": "rotate",
    "revoke": "revoke", "revocar": "revoke",
    "pair": "pair", "emparejar": "pair",
    "site": "site", "sitio": "site",
    "add-driver": "add-driver", "alta-conductor": "add-driver",
    "remove-driver": "remove-driver", "baja-conductor": "remove-driver",
    "add-operator": "add-operator", "alta-operador": "add-operator",
    "remove-operator": "remove-operator", "baja-operador": "remove-operator",
    "ocpp": "ocpp",
    "ocpp-password": "ocpp-password",
    "help": "help", "ayuda": "help", "?": "help",
    "quit": "quit", "exit": "quit", "salir": "quit",
}


def parse_price(text: str) -> float:
    try:
        price = float(text.replace(",", "."))
    except ValueError:
        raise CommandError(f"price {text!r} is not a number") from None
    if not math.isfinite(price) or price < 0 or price > 100:
        raise CommandError(f"price {text!r} must be between 0 and 100 €/kWh")
    return price


def _cp_id(text: str) -> str:
    if not is_id(text):
        raise CommandError(f"bad id {printable(text, 40)!r}: {ID_RULE}")
    return text


def _location(text: str) -> str:
    try:
        return check_text(text, "location", 120)
    except ProtocolError as exc:
        raise CommandError(str(exc)) from None


def parse_command(line: str) -> Command | None:
    """A typed line -> a command; None for an empty line; CommandError otherwise."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise CommandError(f"cannot read that line: {exc}") from None
    if not words:
        return None
    verb = ALIASES.get(words[0].lower())
    args = words[1:]
    if verb is None:
        raise CommandError(f"unknown command {words[0]!r}; {HELP}")
    if verb in ("stop", "resume"):
        if len(args) != 1:
            raise CommandError(f"usage: {words[0]} <cp>|all")
        target = None if args[0].lower() in ("all", "todos") else _cp_id(args[0])
        return Stop(target) if verb == "stop" else Resume(target)
    if verb == "add":
        pair = "--pair" in args
        args = [a for a in args if a != "--pair"]
        if len(args) != 3:
            raise CommandError('usage: add <cp> "<location>" <price> [--pair]')
        return Add(_cp_id(args[0]), _location(args[1]), parse_price(args[2]), pair)
    if verb == "site":
        usage = "usage: site <site> limit <kw>|none, or site <site> add|remove <cp>..."
        if len(args) < 3:
            raise CommandError(usage)
        site, what = _cp_id(args[0]), args[1].lower()
        if what == "limit" and len(args) == 3:
            if args[2].lower() in ("none", "off", "no"):
                return SiteLimit(site, None)
            try:
                limit = float(args[2].replace(",", "."))
            except ValueError:
                raise CommandError(f"limit {args[2]!r} is not a number of kW") from None
            if not math.isfinite(limit) or not 0 <= limit <= 100_000:
                raise CommandError(f"limit {args[2]!r} must be between 0 and 100000 kW")
            return SiteLimit(site, limit)
        if what in ("add", "remove"):
            return SiteMembers(site, tuple(_cp_id(a) for a in args[2:]), what == "add")
        raise CommandError(usage)
    if verb == "pair":
        if len(args) not in (1, 2) or (len(args) == 2 and args[1].lower() != "replace"):
            raise CommandError("usage: pair <cp|driver> [replace]")
        return Pair(_cp_id(args[0]), len(args) == 2)
    if verb == "remove":
        if len(args) != 1:
            raise CommandError("usage: remove <cp>")
        return Remove(_cp_id(args[0]))
    if verb == "price":
        if len(args) != 2:
            raise CommandError("usage: price <cp> <eur>")
        return SetPrice(_cp_id(args[0]), parse_price(args[1]))
    if verb in ("add-operator", "remove-operator"):
        if len(args) != 1:
            raise CommandError(f"usage: {words[0]} <name>")
        name = _cp_id(args[0])
        return AddOperator(name) if verb == "add-operator" else RemoveOperator(name)
    if verb == "ocpp":
        return _ocpp(args)
    if verb == "ocpp-password":
        if len(args) != 1:
            raise CommandError("usage: ocpp-password <cp>")
        return OcppPassword(_cp_id(args[0]))
    if verb in ("rotate", "revoke", "add-driver", "remove-driver"):
        if len(args) != 1:
            raise CommandError(f"usage: {words[0]} <id>")
        ident = _cp_id(args[0])
        if verb == "rotate":
            return Rotate(ident)
        if verb == "revoke":
            return Revoke(ident)
        return AddDriver(ident) if verb == "add-driver" else RemoveDriver(ident)
    if args:
        raise CommandError(f"{words[0]} takes no arguments")
    return Help() if verb == "help" else Quit()
