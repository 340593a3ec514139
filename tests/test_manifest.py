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

from luo_core.abi._manifest import Finding, compare_entries, manifest_entry
from luo_core.abi._schema import schema_of, section, state
from luo_core.abi._types import PhysRange, u8, u16, u64
from luo_core.errors import SchemaError
from tests.test_schema import Mode, Queue

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
