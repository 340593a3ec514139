"""Each participant's preserved value: sealed when it is kept, opened when restored.

A participant with a ``schema`` (a ``@state`` class) returns instances of it;
its records carry the schema's ``compatible`` and version, and the next kernel
decodes them with its own schema, migrating older versions.  A participant
without one returns bytes, sealed as an *opaque* record under its own name,
version 0: luo cannot check those, so a schema is always the better choice.
"""

from __future__ import annotations

from typing import Any

from luo_core.abi import decode_state, encode_state, schema_of, seal, unseal
from luo_core.errors import DecodeError
from luo_core.kernel._participants import Key

OPAQUE_VERSION = 0


def record_compatible(owner: str, schema: type[Any] | None) -> str:
    """The compatible a participant's records carry."""
    return owner if schema is None else schema_of(schema).compatible


class Preserved:
    """Values kept by participants in this kernel, their sealed records, and the
    version preflight chose for each (default: the schema's current one)."""

    def __init__(self) -> None:
        self.values: dict[Key, object] = {}
        self.sealed: dict[Key, bytes] = {}
        self.compatibles: dict[Key, str] = {}
        self.versions: dict[Key, int] = {}

    def keep(self, key: Key, owner: str, schema: type[Any] | None, value: object) -> None:
        """Seal ``value``, what ``owner``'s prepare or freeze returned.

        A freeze that hands back the very value prepare returned costs nothing
        here: its record is already sealed (and already in KHO).
        """
        if key in self.sealed and self.values.get(key) is value:
            return
        if schema is None:
            if not isinstance(value, bytes):
                raise TypeError(
                    f"{owner} returned {type(value).__name__}; without a schema it must "
                    "return bytes"
                )
            blob = seal(owner, OPAQUE_VERSION, value)
        else:
            if not isinstance(value, schema):
                raise TypeError(
                    f"{owner} returned {type(value).__name__}, expected {schema.__name__}"
                )
            version = self.versions.get(key, schema_of(schema).version)
            blob = seal(
                schema_of(schema).compatible, version, encode_state(value, version=version)
            )
        self.values[key] = value
        self.sealed[key] = blob
        self.compatibles[key] = record_compatible(owner, schema)

    def open(self, key: Key, owner: str, schema: type[Any] | None, blob: bytes) -> object:
        """Decode a record handed over for ``owner`` (migrating old versions)."""
        sealed = unseal(blob)
        expected = record_compatible(owner, schema)
        if sealed.compatible != expected:
            raise DecodeError(
                f"{owner}: the record is {sealed.compatible} v{sealed.version}, "
                f"this kernel reads {expected}"
            )
        if schema is None:
            if sealed.version != OPAQUE_VERSION:
                raise DecodeError(f"{owner}: opaque record with version {sealed.version}")
            value: object = sealed.payload
        else:
            value = decode_state(schema, sealed.payload, sealed.version)
        self.values[key] = value
        return value

    def clear(self) -> None:
        self.values.clear()
        self.sealed.clear()
        self.compatibles.clear()
        self.versions.clear()
