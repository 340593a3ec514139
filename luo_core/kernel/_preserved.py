"""Each participant's preserved value: sealed when it is kept, opened when restored.

A participant declares its ``schema`` (a ``@state`` class) and its callbacks
return instances of it; ``None`` hands over the schema's default value (for a
schema whose fields all have defaults).  Its records carry the schema's
``compatible`` and version, and the next kernel decodes them with its own
schema, migrating older versions.  Nothing else is accepted: raw bytes are
unversioned and unchecked, and pickle is never a handoff format.
"""

from __future__ import annotations

from typing import Any

from luo_core.abi import decode_state, encode_state, schema_of, seal, unseal
from luo_core.abi._stats import MigrationStat
from luo_core.errors import DecodeError
from luo_core.kernel._participants import Key, label


class Preserved:
    """Values kept by participants in this kernel, their sealed records, and the
    version preflight chose for each (default: the schema's current one)."""

    def __init__(self) -> None:
        self.values: dict[Key, object] = {}
        self.sealed: dict[Key, bytes] = {}
        self.compatibles: dict[Key, str] = {}
        self.versions: dict[Key, int] = {}
        self.migrated: dict[Key, MigrationStat] = {}
        """The records :meth:`open` upgraded from an older version, by participant."""

    def keep(self, key: Key, owner: str, schema: type[Any] | None, value: object) -> None:
        """Seal ``value``, what ``owner``'s prepare or freeze returned.

        A freeze that hands back the very value prepare returned costs nothing
        here: its record is already sealed (and already in KHO).
        """
        if key in self.sealed and self.values.get(key) is value:
            return
        if schema is None:
            raise TypeError(f"{owner} has no schema: declare the state it hands over with @state")
        if value is None:
            try:
                value = schema()
            except TypeError:
                raise TypeError(
                    f"{owner} returned None; return a {schema.__name__} (its fields have no "
                    "defaults to hand over)"
                ) from None
        if not isinstance(value, schema):
            raise TypeError(
                f"{owner} returned {type(value).__name__}, expected its schema {schema.__name__}"
                + (": raw bytes are not a handoff format" if isinstance(value, bytes) else "")
            )
        version = self.versions.get(key, schema_of(schema).version)
        compatible = schema_of(schema).compatible
        self.values[key] = value
        self.sealed[key] = seal(compatible, version, encode_state(value, version=version))
        self.compatibles[key] = compatible

    def open(self, key: Key, owner: str, schema: type[Any] | None, blob: bytes) -> object:
        """Decode a record handed over for ``owner`` (migrating old versions, which
        :attr:`migrated` notes)."""
        sealed = unseal(blob)
        value = _decode(sealed.compatible, sealed.version, sealed.payload, schema, owner)
        if schema is not None and sealed.version < schema_of(schema).version:
            self.migrated[key] = MigrationStat(
                label(key), sealed.compatible, sealed.version, schema_of(schema).version
            )
        self.values[key] = value
        return value

    def clear(self) -> None:
        self.values.clear()
        self.sealed.clear()
        self.compatibles.clear()
        self.versions.clear()
        self.migrated.clear()


def open_sealed(blob: bytes, schema: type[Any] | None, owner: str) -> object:
    """The value in a sealed record, decoded with ``owner``'s schema (migrating old
    versions); :class:`DecodeError` if the record is not of that schema."""
    sealed = unseal(blob)
    return _decode(sealed.compatible, sealed.version, sealed.payload, schema, owner)


def _decode(
    compatible: str, version: int, payload: bytes, schema: type[Any] | None, owner: str
) -> object:
    if schema is None:
        raise DecodeError(f"{owner} has no schema in this kernel: it cannot read {compatible}")
    expected = schema_of(schema).compatible
    if compatible != expected:
        raise DecodeError(
            f"{owner}: the record is {compatible} v{version}, this kernel reads {expected}"
        )
    return decode_state(schema, payload, version)
