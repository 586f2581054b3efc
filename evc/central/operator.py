"""What the operator's commands do to the network (admin.py parses them), and the
credentials central issues, rotates and revokes.

Called by the brain, on its thread, with the brain itself: a command changes state
only through the brain's own rules (``stop_cp`` ends a running supply as a fault
would, ``change_credential`` disconnects a monitor as a lost connection would).
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING

from evc.central import admin, pairing
from evc.ports import assert_never
from evc.protocol import auth
from evc.protocol.messages import ChargerCommand, RegisterRejected, RejectCode
from evc.protocol.pairing import ALPHABET
from evc.store import DRIVERS, OPERATORS

if TYPE_CHECKING:
    from evc.central.brain import Brain
    from evc.central.model import ChargePoint


def apply(brain: Brain, line: str, by: str = "console") -> None:
    """One line (typed at the console, or an operator's from elsewhere, ``by`` naming
    them): parsed, audited, applied; a bad one is said and changes nothing."""
    try:
        command = admin.parse_command(line)
    except admin.CommandError as exc:
        brain.view.note(str(exc), "error")
        return
    if command is None:
        return
    brain.audit.write("operator", line=line, by=by)
    note = brain.view.note
    match command:
        case admin.Help():
            note(admin.HELP)
        case admin.AddOperator():
            add_operator(brain, command.name)
        case admin.RemoveOperator():
            remove_operator(brain, command.name)
        case admin.Quit():
            brain.quit_requested.set()
        case admin.Add():
            existed = command.cp_id in brain.cps
            brain.upsert_cp(command.cp_id, command.location, command.price)
            note(f"{'updated' if existed else 'registered'} {command.cp_id} at "
                 f"{command.location}, {command.price:.2f} €/kWh")
            if command.pair:
                pairing.pair_command(brain, command.cp_id, replace=False)
        case admin.Pair():
            pairing.pair_command(brain, command.ident, command.replace)
        case admin.SiteLimit():
            brain.set_site_limit(command.site, command.limit_kw)
            note(f"site {command.site}: " + ("no limit" if command.limit_kw is None
                                               else f"limit {command.limit_kw:g} kW"))
        case admin.SiteMembers():
            for cp in [c for ident in command.cp_ids for c in _targets(brain, ident)]:
                if command.add:
                    brain.sites.setdefault(command.site, None)
                brain.upsert_cp(cp.cp_id, cp.location, cp.price,
                                command.site if command.add else "")
                note(f"{cp.cp_id} is on site {command.site}" if command.add
                     else f"{cp.cp_id} left site {command.site}")
        case admin.AddDriver():
            if brain.upsert_driver(command.driver_id, credential=True):
                note(f"registered driver {command.driver_id}; its credential is in "
                     f"{command.driver_id}.key (or pair it: `pair {command.driver_id}`)")
            else:
                note(f"driver {command.driver_id} is registered already")
        case admin.RemoveDriver():
            remove_driver(brain, command.driver_id)
        case admin.Rotate():
            change_credential(brain, command.ident, rotate=True)
        case admin.Revoke():
            change_credential(brain, command.ident, rotate=False)
        case admin.Stop():
            for cp in _targets(brain, command.cp_id):
                stop_cp(brain, cp)
        case admin.Resume():
            for cp in _targets(brain, command.cp_id):
                resume_cp(brain, cp)
        case admin.Remove():
            for cp in _targets(brain, command.cp_id):
                remove_cp(brain, cp)
        case admin.SetPrice():
            for cp in _targets(brain, command.cp_id):
                cp.price = command.price
                brain.save_cp(cp)
                note(f"{cp.cp_id} now costs {cp.price:.2f} €/kWh (from the next supply)")
        case admin.Ocpp():
            ocpp_command(brain, command)
        case admin.OcppPassword():
            ocpp_password(brain, command.cp_id)
        case _:
            assert_never(command)


def ocpp_command(brain: Brain, command: admin.Ocpp) -> None:
    """Handed to the charger's gateway as a signed order; its answer comes back over the
    gateway's link (a ``charger_note`` on the board's event line)."""
    cp = brain.cps.get(command.cp_id)
    if cp is None:
        brain.view.note(f"unknown CP {command.cp_id!r}; nothing sent", "error")
        return
    if cp.via != "ocpp" or cp.conn_id is None:
        brain.view.note(f"{cp.cp_id} is not an OCPP charger connected now (ocpp commands go "
                        "to chargers behind `evc ocpp`)", "error")
        return
    brain.order(cp, ChargerCommand(cp_id=cp.cp_id, action=command.action, arg=command.arg))
    brain.view.note(f"{cp.cp_id}: {command.action} {command.arg} sent to its charger")


def ocpp_password(brain: Brain, cp_id: str) -> None:
    """The charger's HTTP Basic password (security profile 1): derived from its credential,
    so the gateway that holds the credential checks it; a new credential, a new password."""
    cp = brain.cps.get(cp_id)
    if cp is None:
        brain.view.note(f"unknown CP {cp_id!r}", "error")
        return
    if not cp.secret:
        brain.view.note(f"{cp_id} has no credential: give it one first (`rotate {cp_id}` or "
                        f"`pair {cp_id}`), and copy it to the gateway", "error")
        return
    brain.audit.write("credential", id=cp_id, action="ocpp password shown")
    brain.view.note(f"{cp_id}: OCPP Basic user {cp_id}, password "
                    f"{auth.ocpp_password(cp.secret, cp_id)}")


def new_password() -> str:
    """16 symbols of Crockford's base 32 (80 bits), in groups of four."""
    raw = "".join(secrets.choice(ALPHABET) for _ in range(16))
    return "-".join(raw[i:i + 4] for i in range(0, 16, 4))


def add_operator(brain: Brain, name: str) -> None:
    """A new account (or a new password for an existing one: the old one stops working)."""
    password = new_password()
    key = auth.operator_key(name, password)
    existed = brain.store.get(OPERATORS, name) is not None
    brain.store.put(OPERATORS, {"name": name, "key": key, "created_at": time.time()})
    brain.audit.write("operator_account", name=name, action="new password" if existed
                      else "added")
    brain.view.note(f"operator {name}: password {password} (shown once; log in to evc web "
                    f"with it). Scripts: Authorization: Bearer {name}.{key}")


def remove_operator(brain: Brain, name: str) -> None:
    if not brain.store.remove(OPERATORS, name):
        brain.view.note(f"unknown operator {name!r}; nothing changed", "error")
        return
    brain.audit.write("operator_account", name=name, action="removed")
    brain.view.note(f"removed operator {name}")


def _targets(brain: Brain, cp_id: str | None) -> list[ChargePoint]:
    """Every CP (None), or the one named; an unknown one is said and is none."""
    if cp_id is None:
        return list(brain.cps.values())
    cp = brain.cps.get(cp_id)
    if cp is None:
        brain.view.note(f"unknown charge point {cp_id!r}; nothing changed", "error")
        return []
    return [cp]


def remove_driver(brain: Brain, driver_id: str) -> None:
    if brain.drivers.pop(driver_id, None) is None:
        brain.view.note(f"unknown driver {driver_id!r}; nothing changed", "error")
        return
    brain.store.remove(DRIVERS, driver_id)
    brain.credentials.remove(driver_id)
    brain.audit.write("credential", id=driver_id, action="removed")
    brain.view.note(f"removed driver {driver_id}")


def issue_credential(brain: Brain, ident: str) -> None:
    """A fresh credential for a CP or a driver: stored, written out, audited."""
    secret = auth.new_secret()
    if ident in brain.cps:
        cp = brain.cps[ident]
        cp.secret, cp.keys = secret, {}
        brain.save_cp(cp)
    else:
        brain.drivers[ident] = secret
        brain.store.put(DRIVERS, {"driver_id": ident, "secret": secret})
    where = brain.credentials.write(ident, secret)
    brain.audit.write("credential", id=ident, action="issued", file=str(where or ""))


def change_credential(brain: Brain, ident: str, *, rotate: bool) -> None:
    """A new secret (rotate) or none (revoke) for a CP or a driver.

    The old one stops working at once: a CP's monitor connected with it is
    disconnected (its supply ends and is billed), and must register again with
    the new file; a revoked one cannot register until rotated.
    """
    cp = brain.cps.get(ident)
    if cp is None and ident not in brain.drivers:
        brain.view.note(f"unknown CP or driver {ident!r}; nothing changed", "error")
        return
    if rotate:
        issue_credential(brain, ident)
    else:
        if cp is not None:  # and no longer proven: at the open level it may serve unproven
            cp.secret, cp.keys, cp.proven = "", {}, False
            brain.save_cp(cp)
        else:
            brain.drivers[ident] = ""
            brain.proven_drivers.discard(ident)
            brain.store.put(DRIVERS, {"driver_id": ident, "secret": "", "proven": False})
        brain.credentials.remove(ident)
        brain.audit.write("credential", id=ident, action="revoked")
    if cp is not None and cp.conn_id is not None:
        brain.link.close_connection(cp.conn_id, "credential changed", RegisterRejected(
            cp_id=cp.cp_id, code=RejectCode.AUTH,
            reason=f"{cp.cp_id}'s credential was {'rotated' if rotate else 'revoked'}"))
    brain.view.note(f"{ident}: credential {'rotated' if rotate else 'revoked'}"
                    + (f"; the new one is in {ident}.key" if rotate else ""))


def stop_cp(brain: Brain, cp: ChargePoint) -> None:
    before = cp.state
    brain.stop_cp(cp)
    if cp.state is before:
        brain.view.note(f"{cp.cp_id} stopped; it shows {before} until that clears, then Parado")


def resume_cp(brain: Brain, cp: ChargePoint) -> None:
    before = cp.state
    brain.resume_cp(cp)
    if cp.state is before:
        brain.view.note(f"{cp.cp_id} resumed; it shows {before}")


def remove_cp(brain: Brain, cp: ChargePoint) -> None:
    if cp.conn_id is not None or cp.session is not None:
        brain.view.note(f"{cp.cp_id} is connected; stop its monitor before removing it",
                        "error")
        return
    brain.remove_cp(cp)
    brain.view.note(f"removed {cp.cp_id} from the registry")
