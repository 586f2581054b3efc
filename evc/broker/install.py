"""Where the broker's code comes from: Apache Kafka's jars, fetched once from Maven
Central by Maven (pom.xml beside this file) into a cache, and the Java that runs them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from evc.errors import EvcError

MIN_JAVA = 17


class BrokerError(EvcError):
    """A broker could not be fetched, started or stopped."""


def cache_home() -> Path:
    explicit = os.environ.get("EVC_BROKER_HOME")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "evc"


def resource(name: str) -> str:
    return resources.files("evc.broker").joinpath(name).read_text(encoding="utf-8")


def kafka_version() -> str:
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", resource("pom.xml"))
    assert match, "pom.xml names kafka.version"
    return match.group(1)


# ---------------------------------------------------------------------- prerequisites


def check_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise BrokerError(
            f"Java not found: Kafka needs Java {MIN_JAVA}+ "
            "(apt-get install openjdk-17-jre-headless), or use docker compose up -d"
        )
    try:
        out = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        ).stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"cannot run {java} -version: {exc}") from None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise BrokerError(f"cannot tell the Java version from: {out.strip()[:200]}")
    major = int(match.group(1))
    if major == 1 and match.group(2):  # "1.8" style
        major = int(match.group(2))
    if major < MIN_JAVA:
        raise BrokerError(
            f"Java {major} is too old: Kafka {kafka_version()} needs Java {MIN_JAVA}+")
    return java


def libs_dir() -> Path:
    return cache_home() / f"kafka-{kafka_version()}" / "libs"


Echo = Callable[[str], None]


def ensure_libs(echo: Echo = print) -> Path:
    """Fetch the broker jars with Maven once; return the folder holding them."""
    libs = libs_dir()
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(
            "Maven (mvn) not found: it fetches the Kafka broker "
            "(apt-get install maven), or use docker compose up -d"
        )
    staging = libs.with_name("libs.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    pom = staging.parent / "pom.xml"
    pom.write_text(resource("pom.xml"), encoding="utf-8")
    echo(f"Fetching Apache Kafka {kafka_version()} with Maven into {libs} (once) ...")
    cmd = [
        mvn, "-B", "-q", "-f", str(pom),
        "dependency:copy-dependencies", "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    except subprocess.TimeoutExpired:
        raise BrokerError("Maven did not finish fetching Kafka within 15 minutes") from None
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise BrokerError(f"Maven could not fetch Kafka (exit {result.returncode}):\n{tail}")
    if not any(staging.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"Maven finished but no kafka_2.13 jar is in {staging}")
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    marker.write_text(kafka_version(), encoding="utf-8")
    return libs


# ---------------------------------------------------------------------- config
