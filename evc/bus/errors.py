"""The one place kafka-python's errors become ``BusError`` (their cause kept), and the one
reading of whether a failure means a transactional producer was fenced."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from kafka import (
    KafkaProducer,
)
from kafka.errors import (
    InvalidProducerEpochError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFencedError,
)

from evc.errors import BusError

log = logging.getLogger(__name__)


@contextlib.contextmanager
def kafka_errors(what: str, bootstrap: str = "", timeout: float = 0.0,
                 user: str = "") -> Iterator[None]:
    """The one place kafka-python's errors become ``BusError`` (cause kept)."""
    try:
        yield
    except BusError:
        raise
    except KafkaTimeoutError as exc:
        if bootstrap and user:
            raise BusError(f"cannot reach Kafka broker at {bootstrap} within {timeout:g} s, "
                           f"or it refused the login of Kafka user {user!r} (check "
                           "--kafka-user and --kafka-password)", retriable=True) from exc
        if bootstrap:
            raise BusError(f"cannot reach Kafka broker at {bootstrap} within {timeout:g} s "
                           "(is it running? try `evc broker start`)", retriable=True) from exc
        raise BusError(f"{what}: Kafka did not answer in time", retriable=True) from exc
    except KafkaError as exc:
        raise BusError(f"{what}: {exc}", retriable=bool(exc.retriable)) from exc
    except (ValueError, OSError) as exc:
        raise BusError(f"{what}: {exc}") from exc


def bus_error(what: str, exc: BaseException) -> BusError:
    """A send's failure as the producer reports it (not raised: handed to ``on_done``),
    mapped as ``kafka_errors`` maps what is raised; ``exc`` is its cause."""
    if isinstance(exc, BusError):
        return exc
    text = str(exc) or type(exc).__name__
    retriable = isinstance(exc, KafkaTimeoutError) or bool(getattr(exc, "retriable", False))
    error = BusError(f"{what}: {text}", retriable=retriable)
    error.__cause__ = exc
    return error


FENCED_ERRORS = (ProducerFencedError, InvalidProducerEpochError)


def fenced(exc: BaseException | None, producer: KafkaProducer | None = None) -> bool:
    """Whether a failure means this producer was fenced (another holder of its
    ``transactional.id`` took over). kafka-python says so in several ways: the error
    itself, one it causes, one carried in its arguments ("Cannot perform send because
    at least one previous ... request has failed", ProducerFencedError()), or only in
    the producer's state ("in an error state: ... ProducerFencedError")."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, FENCED_ERRORS) or "fenced" in type(exc).__name__.lower():
            return True
        if any(isinstance(arg, FENCED_ERRORS) for arg in exc.args):
            return True
        exc = exc.__cause__ or exc.__context__
    manager = getattr(producer, "_transaction_manager", None)
    return isinstance(getattr(manager, "last_error", None), FENCED_ERRORS)

