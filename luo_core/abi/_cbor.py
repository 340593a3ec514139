"""Deterministic CBOR for record payloads, and the cattrs converter for state classes.

Writing: values become plain maps, arrays, ints, bools, null, text and byte
strings; every map is emitted with its keys in RFC 8949 §4.2.1 order (sorted
bytewise by their *encoded* form) and cbor2 writes shortest-form integers and
lengths.  No floats, no tags, no indefinite lengths.

A ``dict[K, V]`` field is a map when ``K`` is ``str``, and an array of
``[key, value]`` pairs sorted by key when ``K`` is an integer type (CBOR map
keys are text here), so its bytes never depend on insertion order.

Reading treats the bytes as hostile.  :func:`scan` walks them once, without
recursion, before cbor2 sees them, and refuses anything this layer would not
have written: other major types, tags, floats, indefinite lengths,
non-shortest arguments, non-text map keys, keys out of order or repeated,
lengths longer than the bytes that remain, nesting deeper than
:data:`MAX_DEPTH`, more than :data:`MAX_ITEMS` items, trailing bytes.  So a
hostile payload costs at most one linear pass and a typed :class:`DecodeError`.
"""

from __future__ import annotations

import enum
import functools
import typing
from collections.abc import Callable
from typing import Any, Final

import attrs
import cattrs
import cattrs.cols
import cattrs.gen
import cattrs.v
import cbor2

from luo_core.abi._types import DictType, EnumType, Invalid, field_type, int_spec, show_key
from luo_core.errors import DecodeError, FieldValueError, SchemaError

MAX_DEPTH: Final = 32
"""Deepest nesting of arrays and maps a payload may have (the top map is depth 1)."""
MAX_ITEMS: Final = 1 << 20
"""Most data items (keys, values, array elements) one payload may hold."""

_INT_MIN: Final = -(1 << 64)
_INT_END: Final = 1 << 64
_SIMPLE: Final = {0xF4: "false", 0xF5: "true", 0xF6: "null"}


# -- writing -----------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def encoded_key(key: str) -> bytes:
    """A map key as CBOR encodes it: the sort key of RFC 8949 §4.2.1."""
    return cbor2.dumps(key)


def canonical(value: object, path: str = "$") -> object:
    """``value`` with every map in bytewise key order; :class:`SchemaError` if unencodable."""
    kind = type(value)
    if kind is str or kind is bytes or kind is bool or value is None:
        return value
    if kind is int:
        assert isinstance(value, int)
        if not _INT_MIN <= value < _INT_END:
            raise SchemaError(f"cannot encode {value} at {path}: wider than 64 bits")
        return value
    if kind is list or kind is tuple:
        assert isinstance(value, list | tuple)
        return [canonical(item, f"{path}[{index}]") for index, item in enumerate(value)]
    if kind is dict:
        assert isinstance(value, dict)
        for key in value:
            if type(key) is not str:
                raise SchemaError(
                    f"cannot encode map key {show_key(key)} at {path}: keys are text "
                    "(a dict with integer keys is written as [key, value] pairs sorted by key)"
                )
        return {
            key: canonical(value[key], f"{path}.{key}") for key in sorted(value, key=encoded_key)
        }
    raise SchemaError(
        f"cannot encode {kind.__name__} at {path}: "
        "only int, bool, None, str, bytes, lists and str-keyed dicts"
    )


def encode_canonical(value: dict[str, Any]) -> bytes:
    """Deterministic CBOR for a payload map: the same value always gives the same bytes."""
    return cbor2.dumps(canonical(value), canonical=False)


# -- reading -----------------------------------------------------------------------


def scan(
    data: bytes, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS, any_top: bool = False
) -> None:
    """Check ``data`` is one deterministic CBOR map as we write it (or, with ``any_top``,
    any one item); else :class:`DecodeError`."""
    end = len(data)
    pos = 0
    items = 0
    # One frame per open container: items still to read, is-a-map, last key seen.
    remaining: list[int] = []
    is_map: list[bool] = []
    last_key: list[bytes] = []
    while True:
        if pos >= end:
            raise DecodeError(f"truncated: the payload ends at offset {pos} inside an item")
        start = pos
        initial = data[pos]
        pos += 1
        major, info = initial >> 5, initial & 0x1F
        expecting_key = bool(remaining) and is_map[-1] and remaining[-1] % 2 == 0
        if start == 0 and major != 5 and not any_top:
            raise DecodeError("the payload is not a CBOR map")
        if expecting_key and major != 3:
            raise DecodeError(f"offset {start}: map key is not a text string")
        if major == 7:
            if initial not in _SIMPLE:
                raise DecodeError(f"offset {start}: {_describe_simple(info)} is not allowed")
            argument = 0
        elif info < 24:
            argument = info
        elif info <= 27:
            size = 1 << (info - 24)
            if size > end - pos:
                raise DecodeError(f"truncated: offset {start} needs {size} more bytes")
            argument = int.from_bytes(data[pos : pos + size], "big")
            pos += size
            if argument < (24 if size == 1 else 1 << (4 * size)):
                raise DecodeError(f"offset {start}: argument {argument} is not in shortest form")
        elif info == 31:
            raise DecodeError(f"offset {start}: indefinite-length items are not allowed")
        else:
            raise DecodeError(f"offset {start}: reserved additional information {info}")
        items += 1
        if items > max_items:
            raise DecodeError(f"more than {max_items} items in the payload")
        if major == 6:
            raise DecodeError(f"offset {start}: CBOR tags are not allowed")
        if major in (2, 3):
            if argument > end - pos:
                raise DecodeError(
                    f"offset {start}: a string of {argument} bytes, "
                    f"but only {end - pos} bytes remain"
                )
            if major == 3:
                try:
                    data[pos : pos + argument].decode("utf-8")
                except UnicodeDecodeError:
                    raise DecodeError(f"offset {start}: text string is not UTF-8") from None
            pos += argument
        if expecting_key:
            key = data[start:pos]
            if last_key[-1] and key <= last_key[-1]:
                word = "repeated" if key == last_key[-1] else "out of order"
                raise DecodeError(f"offset {start}: map key {_show_key(key)} is {word}")
            last_key[-1] = key
        if major in (4, 5):
            count = argument * 2 if major == 5 else argument
            if count > end - pos:  # every item takes at least one byte
                raise DecodeError(
                    f"offset {start}: a container of {argument} items, "
                    f"but only {end - pos} bytes remain"
                )
            if len(remaining) >= max_depth:
                raise DecodeError(f"offset {start}: nested deeper than {max_depth} levels")
            if count:
                remaining.append(count)
                is_map.append(major == 5)
                last_key.append(b"")
                continue
        # An item is complete: count it against its container, closing finished ones.
        while remaining:
            remaining[-1] -= 1
            if remaining[-1]:
                break
            remaining.pop()
            is_map.pop()
            last_key.pop()
        if not remaining:
            break
    if pos != end:
        raise DecodeError(f"{end - pos} trailing bytes after the payload")


def decode_strict(
    data: bytes, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS, any_top: bool = True
) -> Any:
    """The one CBOR item in ``data`` (a map, unless ``any_top``), after :func:`scan`
    accepted it: only maps with text keys in order, arrays, integers of 64 bits, text,
    bytes, booleans and null; no tags, no floats, no shared references, bounded in depth
    and size."""
    if not isinstance(data, bytes):
        raise DecodeError(f"payload must be bytes, not {type(data).__name__}")
    scan(data, max_depth=max_depth, max_items=max_items, any_top=any_top)
    try:
        return cbor2.loads(
            data, max_depth=max_depth + 1, allow_indefinite=False, allow_duplicate_keys=False
        )
    except Exception as exc:  # scan should have refused it; stay typed regardless
        raise DecodeError(f"payload is not valid CBOR: {exc}") from None


def decode_canonical(
    data: bytes, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS
) -> dict[str, Any]:
    """The payload map in ``data``, after :func:`scan` accepted it."""
    value: dict[str, Any] = decode_strict(
        data, max_depth=max_depth, max_items=max_items, any_top=False
    )
    return value


def _describe_simple(info: int) -> str:
    if info in (25, 26, 27):
        return "a float"
    if info == 31:
        return "a break code"
    return f"simple value {info}"


def _show_key(key: bytes) -> str:
    try:
        return repr(cbor2.loads(key))
    except Exception:
        return key.hex()


# -- structuring -------------------------------------------------------------------


def structure_errors(exc: BaseException) -> list[str]:
    """One ``reason @ $.path`` line per problem cattrs found while structuring."""

    def describe(error: BaseException, tp: type | None) -> str:
        if isinstance(error, FieldValueError):
            return str(error)
        return cattrs.v.format_exception(error, tp)

    return cattrs.transform_error(exc, format_exception=describe)


def _checking_hook(tp: Any) -> Callable[[Any, Any], Any]:
    ftype = field_type(tp)

    def hook(value: Any, _tp: Any) -> Any:
        try:
            ftype.check(value)
        except Invalid as exc:
            raise FieldValueError(f"{exc.reason}{exc.where and ' at ' + exc.where}") from None
        return value

    return hook


def _enum_hook(tp: Any) -> Callable[[Any, Any], Any]:
    ftype = field_type(tp)
    assert isinstance(ftype, EnumType)
    cls, value_type = ftype.cls, ftype.value_type

    def hook(value: Any, _tp: Any) -> Any:
        if type(value) is not value_type:
            raise FieldValueError(f"expected a {value_type.__name__} value of {cls.__name__}")
        try:
            return cls(value)
        except ValueError:
            raise FieldValueError(f"{value!r} is not a member of {cls.__name__}") from None

    return hook


def _is_int(tp: Any) -> bool:
    return int_spec(tp) is not None


def _is_enum(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def _is_sequence(tp: Any) -> bool:
    return typing.get_origin(tp) is list or typing.get_origin(tp) is tuple


def _is_dict(tp: Any) -> bool:
    return typing.get_origin(tp) is dict


def _is_class(tp: Any) -> bool:
    return isinstance(tp, type) and attrs.has(tp)


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)

    def sequence_hook(tp: Any) -> Callable[[Any, Any], Any]:
        if typing.get_origin(tp) is list:
            inner = cattrs.cols.list_structure_factory(tp, converter)
        else:
            inner = cattrs.cols.homogenous_tuple_structure_factory(tp, converter)

        def hook(value: Any, _tp: Any) -> Any:
            if type(value) is not list:
                raise FieldValueError(f"expected an array, got {type(value).__name__}")
            return inner(value, tp)

        return hook

    def dict_structure_hook(tp: Any) -> Callable[[Any, Any], Any]:
        ftype = field_type(tp)
        assert isinstance(ftype, DictType)
        key_type, value_tp = ftype.key, typing.get_args(tp)[1]
        structure_value = converter.get_structure_hook(value_tp)

        def entry(key: Any, item: Any, errors: list[Exception], into: dict[Any, Any]) -> None:
            try:
                into[key] = structure_value(item, value_tp)
            except Exception as exc:
                shown = key if type(key) is int or len(key) <= 32 else key[:29] + "..."
                note = cattrs.IterableValidationNote(
                    f"Structuring dict value @ key {shown!r}", shown, value_tp
                )
                exc.__notes__ = [*getattr(exc, "__notes__", []), note]
                errors.append(exc)

        def done(result: dict[Any, Any], errors: list[Exception]) -> dict[Any, Any]:
            if errors:
                raise cattrs.IterableValidationError(f"While structuring {tp!r}", errors, tp)
            return result

        def str_keys(value: Any, _tp: Any) -> dict[Any, Any]:
            if type(value) is not dict:
                raise FieldValueError(f"expected a map, got {type(value).__name__}")
            result: dict[Any, Any] = {}
            errors: list[Exception] = []
            for key, item in value.items():
                if type(key) is not str:  # the scanner admits only text keys
                    raise FieldValueError(f"key {show_key(key)} is not a str")
                entry(key, item, errors, result)
            return done(result, errors)

        def int_keys(value: Any, _tp: Any) -> dict[Any, Any]:
            if type(value) is not list:
                raise FieldValueError(
                    f"expected an array of [key, value] pairs, got {type(value).__name__}"
                )
            result: dict[Any, Any] = {}
            errors: list[Exception] = []
            previous: int | None = None
            for index, pair in enumerate(value):
                if type(pair) is not list or len(pair) != 2:
                    raise FieldValueError(f"entry {index} is not a [key, value] pair")
                key, item = pair
                try:
                    key_type.check(key)
                except Invalid as exc:
                    raise FieldValueError(f"entry {index}: invalid key: {exc.reason}") from None
                if previous is not None and key <= previous:
                    word = "repeated" if key == previous else f"out of order (after {previous})"
                    raise FieldValueError(f"entry {index}: key {key} is {word}")
                previous = key
                entry(key, item, errors, result)
            return done(result, errors)

        return int_keys if ftype.int_keys else str_keys

    def dict_unstructure_hook(tp: Any) -> Callable[[Any], Any]:
        ftype = field_type(tp)
        assert isinstance(ftype, DictType)
        key_type, value_tp = ftype.key, typing.get_args(tp)[1]
        unstructure_value = converter.get_unstructure_hook(value_tp)

        def str_keys(value: Any) -> Any:
            return {key: unstructure_value(item) for key, item in value.items()}

        def int_keys(value: Any) -> Any:
            for key in value:
                try:
                    key_type.check(key)
                except Invalid as exc:
                    raise SchemaError(
                        f"cannot encode dict key {show_key(key)}: {exc.reason}"
                    ) from None
            return [[key, unstructure_value(value[key])] for key in sorted(value)]

        return int_keys if ftype.int_keys else str_keys

    def class_hook(tp: Any) -> Callable[[Any, Any], Any]:
        inner = cattrs.gen.make_dict_structure_fn(tp, converter)

        def hook(value: Any, _tp: Any) -> Any:
            if type(value) is not dict:
                raise FieldValueError(f"expected a map for {tp.__name__}")
            return inner(value, tp)

        return hook

    converter.register_structure_hook_factory(_is_int, _checking_hook)
    for scalar in (bool, bytes, str):  # dispatched by class: a factory would not win
        converter.register_structure_hook(scalar, _checking_hook(scalar))
    converter.register_structure_hook_factory(_is_enum, _enum_hook)
    converter.register_structure_hook_factory(_is_sequence, sequence_hook)
    converter.register_structure_hook_factory(_is_dict, dict_structure_hook)
    converter.register_unstructure_hook_factory(_is_dict, dict_unstructure_hook)
    converter.register_structure_hook_factory(_is_class, class_hook)
    return converter


converter: Final = _make_converter()
"""Structures payload maps into state classes and back; strict, never coercing."""
