"""Pure parsers: operator commands and addresses."""

from __future__ import annotations

import pytest

from evc.central import admin
from evc.errors import ConfigError
from evc.net import Address, parse_address, parse_addresses


@pytest.mark.parametrize("line, command", [
    ("stop CP-01", admin.Stop("CP-01")),
    ("PARAR cp-01", admin.Stop("cp-01")),
    ("stop all", admin.Stop(None)),
    ("reanudar todos", admin.Resume(None)),
    ("resume CP-01", admin.Resume("CP-01")),
    ('add CP-11 "Plaza España 3" 0,42', admin.Add("CP-11", "Plaza España 3", 0.42)),
    ("alta CP-11 Mayor 0.3", admin.Add("CP-11", "Mayor", 0.3)),
    ("remove CP-11", admin.Remove("CP-11")),
    ("baja CP-11", admin.Remove("CP-11")),
    ("price CP-01 0.39", admin.SetPrice("CP-01", 0.39)),
    ("precio CP-01 0", admin.SetPrice("CP-01", 0.0)),
    ("help", admin.Help()), ("?", admin.Help()), ("ayuda", admin.Help()),
    ("quit", admin.Quit()), ("salir", admin.Quit()), ("exit", admin.Quit()),
    ("rotate CP-01", admin.Rotate("CP-01")), ("revocar D-23", admin.Revoke("D-23")),
    ("add-driver D-23", admin.AddDriver("D-23")),
    ("remove-driver D-23", admin.RemoveDriver("D-23")),
    ("", None), ("   ", None),
])
def test_commands(line, command):
    assert admin.parse_command(line) == command


@pytest.mark.parametrize("line, error", [
    ("fly away", "unknown command 'fly'"),
    ("stop", "usage: stop <cp>|all"),
    ("stop a b", "usage"),
    ('add CP-1 "unclosed', "cannot read that line"),
    ("add CP-1 x", "usage: add"),
    ("add CP-1 x abc", "is not a number"),
    ("add CP-1 x -1", "between 0 and 100"),
    ("add CP-1 x nan", "between 0 and 100"),
    ("add CP-1 x inf", "between 0 and 100"),
    ('add "CP 11" x 0.3', "bad id"),
    ("add CP-1 x\x1b[2J 0.3", "control characters"),
    ("remove", "usage: remove"),
    ("price CP-1", "usage: price"),
    ("help me", "takes no arguments"),
    ("stop " + "C" * 65, "bad id"),
    ("rotate", "usage: rotate <id>"),
    ("add-driver D 1", "usage"),
])
def test_bad_commands(line, error):
    with pytest.raises(admin.CommandError, match=error):
        admin.parse_command(line)


@pytest.mark.parametrize("text, default_host, address", [
    ("10.0.0.2:9092", None, Address("10.0.0.2", 9092)),
    (" pc2.lan:5000 ", None, Address("pc2.lan", 5000)),
    ("[::1]:6001", None, Address("::1", 6001)),
    ("6001", "0.0.0.0", Address("0.0.0.0", 6001)),
    (":6001", "127.0.0.1", Address("127.0.0.1", 6001)),
])
def test_addresses(text, default_host, address):
    assert parse_address(text, default_host=default_host) == address


def test_address_text():
    assert str(Address("::1", 6001)) == "[::1]:6001"
    assert str(Address("h", 1)) == "h:1" and Address("h", 1).pair == ("h", 1)


@pytest.mark.parametrize("text, error", [
    ("nohost", "expected HOST:PORT"),
    (":5000", "missing host"),
    ("h:x", "port 'x' is not a number"),
    ("h:0", "port must be 1-65535"),
    ("h:65536", "port must be 1-65535"),
    ("a b:1", "is not a host name"),
])
def test_bad_addresses(text, error):
    with pytest.raises(ConfigError, match=error):
        parse_address(text, what="central address")


def test_address_lists():
    assert parse_addresses("a:1,b:2") == [Address("a", 1), Address("b", 2)]
    with pytest.raises(ConfigError):
        parse_addresses(" , ")


@pytest.mark.parametrize("line, command", [
    ("site P1 limit 100", admin.SiteLimit("P1", 100.0)),
    ("site P1 limit 7,5", admin.SiteLimit("P1", 7.5)),
    ("site P1 limit none", admin.SiteLimit("P1", None)),
    ("site P1 add CP-01 CP-02", admin.SiteMembers("P1", ("CP-01", "CP-02"), True)),
    ("sitio P1 remove CP-01", admin.SiteMembers("P1", ("CP-01",), False)),
    ("pair CP-07", admin.Pair("CP-07", False)),
    ("pair CP-07 replace", admin.Pair("CP-07", True)),
    ('add CP-11 "C/Mayor 3" 0.42 --pair', admin.Add("CP-11", "C/Mayor 3", 0.42, True)),
])
def test_site_and_pair_commands(line, command):
    assert admin.parse_command(line) == command


@pytest.mark.parametrize("line, error", [
    ("site P1 limit lots", "not a number"), ("site P1 limit -3", "between 0"),
    ("site P1", "usage: site"), ("site P1 grow CP-01", "usage: site"),
    ("pair CP-07 now", "usage: pair"),
])
def test_bad_site_and_pair_commands(line, error):
    with pytest.raises(admin.CommandError, match=error):
        admin.parse_command(line)


def test_the_registry_and_sites_files(tmp_path):
    from evc.central.command import read_registry, read_sites

    cps = tmp_path / "cps.csv"
    cps.write_text("id,location,price_eur_kwh,site\nCP-01,Garage,0.30,P1\nCP-02,Calle,0.4\n")
    assert read_registry(cps) == [("CP-01", "Garage", 0.30, "P1"), ("CP-02", "Calle", 0.4, None)]
    sites = tmp_path / "sites.csv"
    sites.write_text("id,max_kw\nP1,150\nP2,none\n")
    assert read_sites(sites) == [("P1", 150.0), ("P2", None)]
    sites.write_text("P1,-1\n")
    with pytest.raises(ConfigError, match="sites.csv:1: max_kw '-1' must be 0-100000 kW"):
        read_sites(sites)
    with pytest.raises(ConfigError, match="cannot read sites file"):
        read_sites(tmp_path / "missing.csv")
