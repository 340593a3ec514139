"""The codec of ``@state`` values: payload bytes out, migrated values back in.

``encode_state`` writes a value (at its current version, or an older one
through a rollback writer) as deterministic CBOR; ``decode_state`` checks the
version range, scans the bytes strictly, gathers sections, runs every
migration up to the current version and structures the result.
"""

from __future__ import annotations

from typing import Any, TypeVar

from luo_core.abi._cbor import (
    converter,
    decode_canonical,
    encode_canonical,
    structure_errors,
)
from luo_core.abi._schema import (
    MANDATORY,
    OPTIONAL,
    Fields,
    Schema,
    _is_int,
    schema_of,
)
from luo_core.errors import DecodeError, SchemaError, VersionTooNewError, VersionTooOldError

T = TypeVar("T")


def encode_state(obj: object, *, version: int | None = None) -> bytes:
    """The payload bytes of ``obj``: deterministic CBOR, at ``version`` (default current).

    An older ``version`` is written by the class's rollback writer for it.
    """
    schema = schema_of(type(obj))
    schema.ensure_complete()
    if version is None or version == schema.version:
        fields: Fields = _unstructure(schema, schema.version, obj, type(obj))
        for spec in schema.sections.values():
            values = {name: fields.pop(name) for name in spec.fields}
            if spec.needed(obj):
                fields[(OPTIONAL if spec.optional else MANDATORY) + spec.name] = values
            else:
                spec.check_dropped(obj, schema.compatible)
    elif _is_int(version) and version > schema.version:
        raise VersionTooNewError(
            f"{schema.compatible}: cannot write v{version}, the newest is v{schema.version}"
        )
    elif version in schema.writers:
        produced = schema.writers[version](obj)
        if not isinstance(produced, dict):
            raise SchemaError(
                f"{schema.compatible}: the v{version} writer returned "
                f"{type(produced).__name__}, not a dict"
            )
        fields = _unstructure(schema, version, produced)
    else:
        raise SchemaError(
            f"{schema.compatible}: no rollback writer for v{version} "
            f"(writers: {sorted(schema.writers) or 'none'})"
        )
    try:
        return encode_canonical(fields)
    except SchemaError as exc:
        raise SchemaError(f"{schema.compatible} v{version or schema.version}: {exc}") from None


def _unstructure(schema: Schema[Any], version: int, value: object, tp: Any = None) -> Any:
    """``value`` as plain data; a value that cannot be written names the record."""
    try:
        return converter.unstructure(value, tp)
    except SchemaError as exc:
        raise SchemaError(f"{schema.compatible} v{version}: {exc}") from None


def decode_state(cls: type[T], payload: bytes, version: int) -> T:
    """Rebuild a ``cls`` from payload bytes written at ``version``, migrating if older."""
    schema = schema_of(cls)
    schema.ensure_complete()
    where = f"{schema.compatible} v{version}"
    if not _is_int(version):
        raise SchemaError(f"{schema.compatible}: version {version!r} is not an int")
    if version > schema.version:
        raise VersionTooNewError(
            f"{where} is newer than this reader (reads v{schema.min_version}..v{schema.version})"
        )
    if version < schema.min_version:
        raise VersionTooOldError(
            f"{where} is older than this reader (reads v{schema.min_version}..v{schema.version})"
        )
    try:
        raw = decode_canonical(payload)
    except DecodeError as exc:
        raise DecodeError(f"{where}: {exc}") from None
    fields, ignorable, unknown_sections = _flatten(schema, raw, version, where)
    for step in range(version, schema.version):
        try:
            fields = schema.migrations[step](fields)
        except Exception as exc:
            raise DecodeError(
                f"{where}: migration v{step}->v{step + 1} failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(fields, dict):
            raise SchemaError(f"{where}: migration v{step}->v{step + 1} did not return a dict")
    for name in set(fields) - schema.field_names:
        if name in unknown_sections:
            raise SchemaError(f"{where}: unknown section {unknown_sections[name]!r}")
        if name not in ignorable:
            raise DecodeError(f"{where}: unknown field {name!r}")
        del fields[name]
    try:
        return converter.structure(fields, cls)
    except Exception as exc:
        raise DecodeError(f"{where}: {'; '.join(structure_errors(exc))}") from None


def _flatten(
    schema: Schema[Any], raw: dict[str, Any], version: int, where: str
) -> tuple[Fields, set[str], dict[str, str]]:
    """Merge section entries into one field dict.

    Returns the fields, the names that came from unknown optional sections
    (dropped if still unknown after migrations) and those from unknown
    mandatory sections of older records (refused if still unknown).
    """
    fields: Fields = {}
    ignorable: set[str] = set()
    unknown_sections: dict[str, str] = {}
    for key, value in raw.items():
        if key[:1] not in (MANDATORY, OPTIONAL):
            _merge(fields, key, value, where)
            continue
        name, optional = key[1:], key[0] == OPTIONAL
        if not isinstance(value, dict):
            raise DecodeError(f"{where}: section {key!r} is not a map")
        if name not in schema.sections:
            if version == schema.version:
                if optional:
                    continue
                raise SchemaError(
                    f"{where}: unknown section {name!r}, not marked optional; "
                    "this reader cannot restore it"
                )
            if optional:
                ignorable.update(value)
            else:
                unknown_sections.update(dict.fromkeys(value, name))
        for field, item in value.items():
            _merge(fields, field, item, where)
    return fields, ignorable, unknown_sections


def _merge(fields: Fields, name: str, value: object, where: str) -> None:
    if name in fields:
        raise DecodeError(f"{where}: field {name!r} appears twice")
    fields[name] = value
