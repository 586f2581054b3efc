"""`evc ocpp <kafka> <central> --listen [HOST:]PORT` — the OCPP 1.6J gateway.

Threads: the event loop (main thread) owns the gateway's state, its WebSocket server and
its TCP links to central; a Kafka thread reads control_topic (orders, answers) and
network_topic (which CPs central knows) and hands each record to the loop; Kafka's
producer thread hands back its verdicts on final readings the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import click
from websockets.asyncio.server import serve
from websockets.typing import Subprotocol

from evc.bus import open_bus, retrying
from evc.console import say
from evc.errors import BusError, ConfigError, EvcError
from evc.lifecycle import Crew, install_stop_signals
from evc.logs import setup_logging
from evc.net import Address, Bootstrap
from evc.netview import NetworkView
from evc.ocpp.gateway import Gateway
from evc.ocpp.server import MAX_FRAME, SUBPROTOCOL, Door
from evc.options import ADDRESSES, KAFKA, AddressType, Common, common_options
from evc.protocol.messages import CPStatus, Message
from evc.protocol.topics import CONTROL, NETWORK, Delivery
from evc.store import JsonFile
from evc.store.audit import AuditLog
from evc.store.credentials import Credential, default_dir

log = logging.getLogger("evc.ocpp")


@click.command("ocpp")
@click.argument("kafka", type=KAFKA)
@click.argument("central", type=ADDRESSES)
@click.option("--listen", required=True, type=AddressType(default_host="0.0.0.0"),
              help="[HOST:]PORT of the WebSocket server chargers connect to "
                   "(ws://HOST:PORT/<charger id>; host default 0.0.0.0).")
@click.option("--credentials-dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Folder of the chargers' credentials (<cp>.key, as central "
                   "writes them) [default: $EVC_CREDENTIALS_DIR, else data/credentials].")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("data"), show_default=True,
              help="Folder of the gateway's journal (ocpp-<port>.json) and audit log.")
@click.option("--cert", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="TLS certificate (PEM): wss:// (security profile 2).")
@click.option("--key", "key_file", type=click.Path(dir_okay=False, exists=True,
              path_type=Path), default=None, help="Its private key (PEM).")
@click.option("--self-signed", is_flag=True, help="wss:// with a certificate made here for "
              "a lab (in --state-dir); its SHA-256 fingerprint is printed.")
@click.option("--validate/--no-validate", default=True, show_default=True,
              help="Hold every message to OCPP 1.6's JSON schemas.")
@click.option("--heartbeat", type=click.FloatRange(0.2, 60), default=1.0, show_default=True,
              help="Seconds between the heartbeats each charger's registration sends central.")
@click.option("--boot-interval", type=click.IntRange(5, 86400), default=30, show_default=True,
              help="The Heartbeat interval told to chargers at boot, in seconds.")
@common_options
def ocpp(kafka: Bootstrap, central: list[Address], listen: Address,
         credentials_dir: Path | None, state_dir: Path, cert: Path | None,
         key_file: Path | None, self_signed: bool, validate: bool, heartbeat: float,
         boot_interval: int, common: Common) -> None:
    """A gateway that makes OCPP 1.6J chargers evc charge points.

    Each charger connects to ws://HOST:PORT/<its CP id> with the ocpp1.6 subprotocol; the
    gateway registers it with CENTRAL (host:port, or the active central and its standby)
    and carries central's orders and the charger's readings over KAFKA. docs/OCPP.md.
    """
    setup_logging(common.log_level, common.log_file)
    if (cert is None) != (key_file is None):
        raise click.UsageError("--cert and --key go together")
    if self_signed and cert is not None:
        raise click.UsageError("--self-signed or --cert/--key, not both")
    tls = None
    if self_signed:
        cert, key_file = make_self_signed(state_dir, listen.host)
    if cert is not None and key_file is not None:
        tls = tls_context(cert, key_file)
    journal = JsonFile(state_dir / f"ocpp-{listen.port}.json")
    journal.load()  # a broken journal is a clear error before anything starts
    stop = threading.Event()
    install_stop_signals(stop)
    bus = open_bus(str(kafka), prefix=common.topic_prefix, client_id="evc-ocpp",
                   wait=common.kafka_wait, stop=stop, note=say, sasl=common.sasl)
    audit = AuditLog(state_dir / f"ocpp-{listen.port}-audit.jsonl")
    try:
        asyncio.run(run(bus, central, listen, tls, journal, audit, stop, credentials_dir,
                        validate=validate, heartbeat=heartbeat, boot_interval=boot_interval,
                        wait=common.kafka_wait))
    finally:
        audit.close()
        bus.close(timeout=0.5)


async def run(bus: Any, centrals: list[Address], listen: Address, tls: ssl.SSLContext | None,
              journal: JsonFile, audit: AuditLog, stop: threading.Event,
              credentials_dir: Path | None, *, validate: bool, heartbeat: float,
              boot_interval: int, wait: float) -> None:
    loop = asyncio.get_running_loop()
    credentials: dict[str, Credential] = {}

    def secret_for(cp_id: str) -> str | None:
        if cp_id not in credentials:
            folder = credentials_dir or default_dir()
            credentials[cp_id] = Credential(cp_id, folder / f"{cp_id}.key")
        try:
            return credentials[cp_id].get()
        except EvcError as exc:
            log.error("%s", exc)
            return None

    def notify(session_id: str, error: BusError | None) -> None:
        loop.call_soon_threadsafe(gateway.final_done, session_id, error)

    gateway = Gateway(bus.send, centrals, journal=journal, secret_for=secret_for,
                      heartbeat=heartbeat, boot_interval=boot_interval, notify=notify, say=say)
    gateway.recover()
    view = NetworkView()
    control = bus.topic(CONTROL)
    start = {(control, int(p)): offset for p, offset in gateway.offsets.items()}
    consumer = retrying(lambda: bus.consumer([CONTROL, NETWORK], from_beginning=[NETWORK],
                                             start=start), wait=wait, stop=stop)

    def on_record(msg: Message, delivery: Delivery) -> None:
        if delivery.topic == control:
            loop.call_soon_threadsafe(gateway.on_record, msg, delivery)
        else:
            loop.call_soon_threadsafe(view.apply, msg)

    def known(cp_id: str) -> bool | None:
        if not view.cps and not consumer.caught_up.is_set():
            return None  # not read yet: central decides at registration
        return cp_id in view.cps

    def proven(cp_id: str) -> bool:
        status = view.cps.get(cp_id)
        return isinstance(status, CPStatus) and status.proven

    door = Door(gateway, validate=validate, known=known, proven=proven, audit=audit.write)
    crew = Crew(stop)
    crew.spawn(consumer.run, on_record, stop, name="ocpp-kafka")
    try:
        server = await serve(door.serve, listen.host, listen.port,
                             subprotocols=[Subprotocol(SUBPROTOCOL)],
                             process_request=door.admit, ssl=tls, max_size=MAX_FRAME,
                             ping_interval=10, ping_timeout=10, close_timeout=1,
                             compression=None)
    except OSError as exc:
        stop.set()
        crew.join(1.5)
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    scheme = "wss" if tls is not None else "ws"
    say(f"OCPP 1.6J gateway on {scheme}://{listen}/<charger id>, central "
        f"{','.join(str(c) for c in centrals)}, Kafka {bus.bootstrap}; schema validation "
        + ("on" if validate else "off"))
    try:
        while not stop.is_set():
            await asyncio.sleep(0.2)
            gateway.tick()
    finally:
        server.close()
        for live in list(gateway.live.values()):
            await live.link.close()
        try:
            await asyncio.wait_for(server.wait_closed(), 1.0)
        except TimeoutError:
            pass
        gateway.flush()
        stop.set()
        crew.join(1.5)
    crew.check()


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # OCPP security profile 2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use {cert} and {key}: {exc}") from None
    return context


def make_self_signed(folder: Path, host: str) -> tuple[Path, Path]:
    """A lab's certificate (kept in ``folder``, made once) and its fingerprint printed."""
    cert, key = folder / "ocpp-self-signed.pem", folder / "ocpp-self-signed.key"
    if not (cert.exists() and key.exists()):
        openssl = shutil.which("openssl")
        if openssl is None:
            raise ConfigError("--self-signed needs the openssl command")
        folder.mkdir(parents=True, exist_ok=True)
        name = host if host not in ("0.0.0.0", "") else "localhost"
        result = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-nodes", "-days", "825", "-subj", f"/CN={name}", "-addext",
             f"subjectAltName=DNS:localhost,DNS:{name},IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)], capture_output=True, text=True,
            check=False)
        if result.returncode != 0:
            raise ConfigError(f"openssl could not make a certificate: "
                              f"{result.stderr.strip()[:200]}")
        key.chmod(0o600)
    der = ssl.PEM_cert_to_DER_cert(cert.read_text(encoding="ascii"))
    digest = hashlib.sha256(der).hexdigest().upper()
    say(f"self-signed certificate {cert}; SHA-256 fingerprint "
        + ":".join(digest[i:i + 2] for i in range(0, len(digest), 2)))
    return cert, key
