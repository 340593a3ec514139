"""ABI manifest entries, and the compatibility checker in both directions."""

from __future__ import annotations

import copy
import enum
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from luo_core.abi._manifest import Finding, _relation, compare_entries, manifest_entry
from luo_core.abi._manifest_check import U32_MAX, BadType, check_entry, parse_type
from luo_core.abi._schema import schema_of, section, state
from luo_core.abi._types import PhysAddr, PhysRange, s8, u8, u16, u32, u64
from luo_core.errors import ManifestError, SchemaError
from luo_core.kernel._preflight import compare_manifests, load_manifest
from tests.test_schema import Link, Mode, Queue, Window

ROOT = Path(__file__).resolve().parent.parent
RSS = section("rss", needed=lambda nic: nic.key != b"")
HINT = section("hint", needed=lambda nic: nic.hint != 0, optional=True)


def same(fields: dict[str, Any]) -> dict[str, Any]:
    return fields


@state(compatible="luo,m", version=2, min_version=1)
class Old:
    mac: u64
    tail: u16 = 0
    mode: Mode = Mode.polling
    queues: list[Queue] = attrs.field(factory=list)
    span: PhysRange | None = None
    key: bytes = attrs.field(default=b"", metadata=RSS)
    hint: u8 = attrs.field(default=0, metadata=HINT)


schema_of(Old).migration(from_version=1)(same)

OLD = manifest_entry(Old)


def pairs(findings: list[Finding]) -> list[tuple[str, str]]:
    return [(f.level, f.direction) for f in findings]


def only(findings: list[Finding], level: str, direction: str) -> str:
    """The message of the single finding with this level and direction."""
    matching = [f.message for f in findings if (f.level, f.direction) == (level, direction)]
    assert len(matching) == 1, findings
    return matching[0]


# -- entries -----------------------------------------------------------------------


def test_an_entry_describes_the_class() -> None:
    assert OLD == {
        "compatible": "luo,m",
        "version": 2,
        "min_version": 1,
        "writes": [],
        "migrations": [1],
        "fields": [
            {"name": "mac", "type": "u64", "default": False},
            {"name": "tail", "type": "u16", "default": True},
            {"name": "mode", "type": "enum:Mode{polling=1,interrupt=2}", "default": True},
            {"name": "queues", "type": "list[state:luo,test-queue]", "default": True},
            {"name": "span", "type": "optional[struct:PhysRange]", "default": True},
        ],
        "sections": [
            {
                "name": "hint",
                "optional": True,
                "fields": [{"name": "hint", "type": "u8", "default": True}],
            },
            {
                "name": "rss",
                "optional": False,
                "fields": [{"name": "key", "type": "bytes", "default": True}],
            },
        ],
        "structs": {
            "state:luo,test-queue": [
                {"name": "head", "type": "u16", "default": False},
                {"name": "tail", "type": "u16", "default": True},
            ],
            "struct:PhysRange": [
                {"name": "start", "type": "phys_addr", "default": False},
                {"name": "size", "type": "u64", "default": False},
            ],
        },
    }


def test_entries_are_json_and_stable_across_runs() -> None:
    text = json.dumps(manifest_entry(Old), sort_keys=True)
    assert text == json.dumps(manifest_entry(Old), sort_keys=True)
    assert json.loads(text) == OLD
    program = (
        "import json; from tests.test_manifest import Old; "
        "from luo_core.abi._manifest import manifest_entry; "
        "print(json.dumps(manifest_entry(Old), sort_keys=True))"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run(
            [sys.executable, "-c", program],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert run.stdout.strip() == text


def test_identical_entries_have_no_findings() -> None:
    assert compare_entries(OLD, copy.deepcopy(OLD)) == []


# -- layout changes without a version bump ------------------------------------------


def test_removing_a_field_is_an_error_for_the_update() -> None:
    @state(compatible="luo,m", version=2, min_version=1)
    class New:
        mac: u64
        mode: Mode = Mode.polling
        queues: list[Queue] = attrs.field(factory=list)
        span: PhysRange | None = None
        key: bytes = attrs.field(default=b"", metadata=RSS)
        hint: u8 = attrs.field(default=0, metadata=HINT)

    schema_of(New).migration(from_version=1)(same)
    findings = compare_entries(OLD, manifest_entry(New))
    assert pairs(findings) == [("error", "update"), ("info", "rollback")]
    assert "old writes field 'tail', which new does not know" in only(findings, "error", "update")
    assert "'tail' is not in new's records; old uses its default" in only(
        findings, "info", "rollback"
    )


def retyped(tail: str) -> dict[str, Any]:
    entry = copy.deepcopy(OLD)
    entry["fields"][1]["type"] = tail
    return entry


def test_retyping_a_field_is_an_error_both_ways() -> None:
    findings = compare_entries(OLD, retyped("str"))
    assert pairs(findings) == [("error", "update"), ("error", "rollback")]
    assert "field 'tail': retyped u16 -> str without a version bump" in only(
        findings, "error", "update"
    )
    # Same width, other sign: neither range holds the other.
    findings = compare_entries(OLD, retyped("s16"))
    assert pairs(findings) == [("error", "update"), ("error", "rollback")]
    assert "retyped u16 -> s16" in only(findings, "error", "rollback")  # always old -> new


def test_narrowing_an_int_is_an_error_for_the_update() -> None:
    findings = compare_entries(OLD, retyped("u8"))
    assert pairs(findings) == [("error", "update"), ("info", "rollback")]
    assert "u16 -> u8; new refuses values of old that do not fit" in only(
        findings, "error", "update"
    )


def test_widening_an_int_is_info_for_the_update_and_a_warning_for_rollback() -> None:
    findings = compare_entries(OLD, retyped("u32"))
    assert pairs(findings) == [("info", "update"), ("warning", "rollback")]
    assert "u16 -> u32; new reads every value old writes" in only(findings, "info", "update")
    assert "old refuses values of new that do not fit" in only(findings, "warning", "rollback")
    assert pairs(compare_entries(OLD, retyped("s32"))) == pairs(findings)
    assert pairs(compare_entries(OLD, retyped("optional[u16]"))) == pairs(findings)


def test_widening_inside_containers_and_enums_is_understood() -> None:
    entry = copy.deepcopy(OLD)
    entry["fields"][3]["type"] = "list[state:luo,test-queue]"
    entry["structs"]["state:luo,test-queue"][0]["type"] = "u32"
    entry["fields"][2]["type"] = "enum:Mode{polling=1,interrupt=2,busy=3}"
    findings = compare_entries(OLD, entry)
    assert pairs(findings) == [("info", "update")] * 2 + [("warning", "rollback")] * 2
    messages = [f.message for f in findings]
    assert "field 'mode': enum:Mode{polling=1,interrupt=2} -> enum:Mode{" in messages[0]
    assert "state:luo,test-queue: field 'head': u16 -> u32" in messages[1]
    entry["fields"][2]["type"] = "enum:Mode{polling=1}"
    assert ("error", "update") in pairs(compare_entries(OLD, entry))


def test_adding_a_field_with_a_default_is_info_for_update_and_an_error_for_rollback() -> None:
    entry = copy.deepcopy(OLD)
    entry["fields"].append({"name": "drops", "type": "u32", "default": True})
    findings = compare_entries(OLD, entry)
    assert pairs(findings) == [("info", "update"), ("error", "rollback")]
    assert "'drops' is not in old's records; new uses its default" in only(
        findings, "info", "update"
    )
    assert "new writes field 'drops', which old does not know" in only(
        findings, "error", "rollback"
    )


def test_adding_a_field_without_a_default_is_an_error_for_the_update() -> None:
    entry = copy.deepcopy(OLD)
    entry["fields"].append({"name": "drops", "type": "u32", "default": False})
    findings = compare_entries(OLD, entry)
    assert pairs(findings) == [("error", "update"), ("error", "rollback")]
    assert "'drops' has no default and no migration fills it" in only(findings, "error", "update")


def test_removing_a_mandatory_section_is_an_error_and_an_optional_one_is_info() -> None:
    entry = copy.deepcopy(OLD)
    entry["sections"] = [s for s in entry["sections"] if s["name"] != "rss"]
    findings = compare_entries(OLD, entry)
    assert pairs(findings) == [("error", "update"), ("info", "rollback")]
    assert "section 'rss' is unknown to new, which refuses records" in only(
        findings, "error", "update"
    )
    entry = copy.deepcopy(OLD)
    entry["sections"] = [s for s in entry["sections"] if s["name"] != "hint"]
    findings = compare_entries(OLD, entry)
    assert pairs(findings) == [("info", "update"), ("info", "rollback")]
    assert "section 'hint' is optional; new ignores it" in only(findings, "info", "update")


def test_adding_a_section_is_info_for_update_and_depends_on_optional_for_rollback() -> None:
    mss = {"name": "mss", "type": "u16", "default": True}
    added = {"name": "tso", "optional": False, "fields": [mss]}
    entry = copy.deepcopy(OLD)
    entry["sections"].append(added)
    findings = compare_entries(OLD, entry)
    assert pairs(findings) == [("info", "update"), ("error", "rollback")]
    assert "section 'tso' is never written by old" in only(findings, "info", "update")
    entry["sections"][-1] = {**added, "optional": True}
    assert pairs(compare_entries(OLD, entry)) == [("info", "update"), ("info", "rollback")]


def test_a_changed_nested_layout_is_found() -> None:
    entry = copy.deepcopy(OLD)
    entry["structs"]["state:luo,test-queue"].append(
        {"name": "size", "type": "u16", "default": False}
    )
    findings = compare_entries(OLD, entry)
    assert pairs(findings) == [("error", "update"), ("error", "rollback")]
    assert "state:luo,test-queue: field 'size' has no default" in only(findings, "error", "update")


def test_a_changed_compatible_is_an_error_both_ways() -> None:
    entry = {**OLD, "compatible": "luo,other"}
    assert pairs(compare_entries(OLD, entry)) == [("error", "update"), ("error", "rollback")]


# -- versions ----------------------------------------------------------------------


def versions(version: int, min_version: int, migrations: list[int], writes: list[int]) -> Any:
    return {
        **OLD,
        "version": version,
        "min_version": min_version,
        "migrations": migrations,
        "writes": writes,
    }


def test_a_bumped_version_with_a_migration_and_a_rollback_writer_is_clean() -> None:
    findings = compare_entries(OLD, versions(3, 1, [1, 2], [2]))
    assert pairs(findings) == [("info", "update"), ("info", "rollback")]
    assert "new migrates old's v2 records to v3" in only(findings, "info", "update")
    assert "new hands state back as v2 with its rollback writer" in only(
        findings, "info", "rollback"
    )


def test_a_bumped_version_without_a_rollback_writer_cannot_roll_back() -> None:
    findings = compare_entries(OLD, versions(3, 1, [1, 2], []))
    assert pairs(findings) == [("info", "update"), ("error", "rollback")]
    assert "old reads v1..v2; new writes v3 and has rollback writers for: none" in only(
        findings, "error", "rollback"
    )


def test_a_new_kernel_that_no_longer_reads_the_old_version_is_an_error() -> None:
    findings = compare_entries(OLD, versions(4, 3, [3], [2]))
    assert pairs(findings) == [("error", "update"), ("info", "rollback")]
    assert "old writes v2; new reads only from v3" in only(findings, "error", "update")


def test_an_entry_with_a_gap_in_its_migrations_is_an_error() -> None:
    findings = compare_entries(OLD, versions(4, 1, [1, 3], [2]))
    assert "new has no migration for v2->v3" in only(findings, "error", "update")


def test_going_to_an_older_version_is_checked_both_ways() -> None:
    newer = versions(3, 1, [1, 2], [])
    findings = compare_entries(newer, OLD)
    assert pairs(findings) == [("error", "update"), ("info", "rollback")]
    assert "old writes v3; new reads only up to v2" in only(findings, "error", "update")
    assert "old migrates new's v2 records to v3" in only(findings, "info", "rollback")


def test_findings_print_as_one_line() -> None:
    finding = Finding("error", "update", "field 'x' removed")
    assert str(finding) == "error: update: field 'x' removed"


def test_manifest_entry_refuses_other_classes() -> None:
    class Plain(enum.Enum):
        a = 1

    with pytest.raises(SchemaError, match="not a @state class"):
        manifest_entry(Plain)


# -- checking entries and manifests read from files ----------------------------------


def test_every_entry_luo_writes_passes_its_own_check() -> None:
    @state(compatible="luo,every-type", version=3, min_version=2)
    class Everything:
        mode: Mode
        link: Link
        window: Window
        table: dict[str, list[Queue]] = attrs.field(factory=dict)
        by_id: dict[u32, PhysRange | None] = attrs.field(factory=dict)
        spans: tuple[PhysRange, ...] = ()
        flags: list[bool] = attrs.field(factory=list)
        blob: bytes = b""
        note: str = ""
        addr: PhysAddr = 0
        small: s8 = 0

    schema_of(Everything).migration(from_version=2)(same)
    schema_of(Everything).writes(version=2)(lambda obj: {})
    for cls in (Old, Everything):
        entry = manifest_entry(cls)
        check_entry(json.loads(json.dumps(entry)), "here")
        for spec in [*entry["fields"], *(f for s in entry["structs"].values() for f in s)]:
            assert parse_type(spec["type"]).text == spec["type"]
    entry = manifest_entry(Everything)
    types = {f["name"]: f["type"] for f in entry["fields"]}
    assert types["table"] == "dict[str, list[state:luo,test-queue]]"
    assert types["by_id"] == "dict[u32, optional[struct:PhysRange]]"


def test_compare_entries_refuses_a_malformed_entry_with_its_path() -> None:
    with pytest.raises(ManifestError, match=r'^old: missing key "compatible"$'):
        compare_entries({}, OLD)
    entry = retyped("list[u8")
    with pytest.raises(ManifestError, match=r'^new: fields\[1\]\.type: "list\[u8" is not a fie'):
        compare_entries(OLD, entry)
    entry = versions(2, 1, [1], [])
    entry["version"] = 10**30
    with pytest.raises(ManifestError, match=r"^new: version: expected an integer from 1 to 42"):
        compare_entries(OLD, entry)


@pytest.mark.parametrize(
    ("written", "read", "relation"),
    [
        ("dict[str, u16]", "dict[str, u32]", "wider"),
        ("dict[u8, u16]", "dict[u16, u16]", "wider"),
        ("dict[u16, u16]", "dict[u8, u32]", "different"),
        ("dict[str, u32]", "dict[str, u16]", "narrower"),
        ("dict[str, u16]", "dict[u16, u16]", "different"),
        ("dict[str, list[u8]]", "dict[str, list[u8]]", "same"),
        ("dict[str, u16]", "optional[dict[str, u32]]", "wider"),
        ("list[u16]", "dict[str, u16]", "different"),
        ("u16", "optional[u32]", "wider"),
        ("optional[u32]", "u16", "narrower"),
        ('enum:Link{down="down"}', 'enum:Link{down="down",up="up"}', "wider"),
        ('enum:L{a="x,y}"}', 'enum:L{a="x,y}",b="z"}', "wider"),
        ("tuple[state:luo,a,b, ...]", "tuple[state:luo,a,b, ...]", "same"),
        ("tuple[state:luo,a,, ...]", "list[state:luo,a,]", "different"),
    ],
)
def test_type_relations_include_dicts(written: str, read: str, relation: str) -> None:
    assert _relation(parse_type(written), parse_type(read)) == relation


def test_a_widened_dict_value_is_info_for_the_update_and_a_warning_for_rollback() -> None:
    entry = copy.deepcopy(OLD)
    entry["fields"].append({"name": "table", "type": "dict[str, u16]", "default": True})
    wider = copy.deepcopy(entry)
    wider["fields"][-1]["type"] = "dict[str, u32]"
    findings = compare_entries(entry, wider)
    assert pairs(findings) == [("info", "update"), ("warning", "rollback")]
    assert "field 'table': dict[str, u16] -> dict[str, u32]; new reads every value" in only(
        findings, "info", "update"
    )


def test_a_version_range_of_two_to_the_32_is_compared_without_walking_it() -> None:
    entry = versions(U32_MAX, 1, [], [])
    findings = compare_entries(versions(2, 1, [1], []), entry)
    assert only(findings, "error", "update") == (
        f"new has no migration for v2->v3 ... v{U32_MAX - 1}->v{U32_MAX} ({U32_MAX - 2})"
    )
    # Many gaps: the first five, and how many more.
    entry = versions(1000, 1, list(range(1, 1000, 2)), [])
    message = only(compare_entries(versions(1, 1, [], []), entry), "error", "update")
    assert message == (
        "new has no migration for v2->v3, v4->v5, v6->v7, v8->v9, v10->v11 and 494 more gaps"
    )


def manifest_with(entry: Any) -> dict[str, Any]:
    return {
        "format": 1,
        "luo-core": "0",
        "packs": {},
        "participants": {},
        "schemas": {"luo,m": entry},
    }


GOOD = json.dumps(manifest_with(OLD))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def loads_or_refuses(text: str | bytes) -> dict[str, Any] | None:
    """A manifest, or None after a ManifestError: nothing else may escape."""
    try:
        return load_manifest(text, "m.json")
    except ManifestError as exc:
        message = str(exc)
        assert message.startswith("m.json") and "\n" not in message and len(message) < 600
        return None


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values)
def test_any_json_value_is_a_manifest_or_a_manifest_error(value: Any) -> None:
    loads_or_refuses(json.dumps(value))


@settings(max_examples=300)
@given(blob=st.binary(max_size=200))
def test_any_bytes_are_a_manifest_or_a_manifest_error(blob: bytes) -> None:
    loads_or_refuses(blob)
    loads_or_refuses(GOOD.encode()[: len(blob)] + blob)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _paths(item, (*path, index))
    return found


PATHS = _paths(json.loads(GOOD))[1:]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=json_values, data=st.data())
def test_a_valid_manifest_with_any_part_replaced_is_refused_or_compared(
    path: tuple[Any, ...], value: Any, data: st.DataObject
) -> None:
    manifest = json.loads(GOOD)
    parent = manifest
    for step in path[:-1]:
        parent = parent[step]
    if data.draw(st.booleans()):
        parent[path[-1]] = value
    elif isinstance(parent, dict):
        parent[data.draw(st.text(max_size=8))] = value
    else:
        del parent[path[-1]]
    checked = loads_or_refuses(json.dumps(manifest))
    if checked is not None:  # whatever passes the check, the comparison takes both ways
        good = load_manifest(GOOD)
        assert isinstance(compare_manifests(good, checked), list)
        assert isinstance(compare_manifests(checked, good), list)


@settings(max_examples=300)
@given(text=st.text(alphabet='listupeodcarg[]{}:=,." 0123468_-', max_size=40))
def test_any_type_string_parses_or_is_a_bad_type(text: str) -> None:
    try:
        parsed = parse_type(text)
    except BadType as exc:
        reason = str(exc)
    else:
        assert parsed.text == text
        assert _relation(parsed, parsed) == "same"
        return
    assert " at character " in reason and "\n" not in reason
