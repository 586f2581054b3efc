"""The evc exception tree.

    EvcError                 anything evc reports to the user as one clear line
     +-- ProtocolError       malformed frame or message (bad length, bytes, JSON, type)
     +-- BusError            Kafka could not be reached or refused an operation
     |                       (``retriable`` says whether trying again may help)
     +-- StoreError          the TinyDB file cannot be read or written
     +-- ConfigError         a bad address, a missing file, a bad option value

Command edges catch ``EvcError`` and turn it into ``Error: <message>`` with exit
code 1; nothing below them prints.
"""

from __future__ import annotations


class EvcError(Exception):
    """Base of every error evc reports to its user."""


class ProtocolError(EvcError):
    """A frame or message that does not follow docs/PROTOCOL.md."""


class BusError(EvcError):
    """Kafka failed; ``retriable`` is True when a later attempt may succeed."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class StoreError(EvcError):
    """The persistence file is unusable."""


class ConfigError(EvcError):
    """Bad user input outside the wire: addresses, files, option values."""
