"""``luo manifest`` and ``luo compat`` under hostile input: one line, a documented exit code.

Every manifest below is a file a user could hand to ``luo compat``; each
defect is asserted by the exact line on stderr and the exit status.
"""

from __future__ import annotations

import copy
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cbor2
import pytest

from luo_core.abi._image import IMAGE
from luo_core.cli import _abi, main
from luo_core.kernel import _registry
from luo_core.kernel._preflight import MAX_MANIFEST_BYTES, load_manifest
from tests.journal import one_error

ENTRY: dict[str, Any] = {
    "compatible": "luo,x",
    "version": 2,
    "min_version": 1,
    "writes": [1],
    "migrations": [1],
    "fields": [
        {"name": "mac", "type": "u64", "default": False},
        {"name": "queues", "type": "list[state:luo,q]", "default": True},
        {"name": "mode", "type": "enum:Mode{polling=1,interrupt=2}", "default": True},
    ],
    "sections": [
        {
            "name": "rss",
            "optional": False,
            "fields": [{"name": "key", "type": "dict[str, u8]", "default": True}],
        }
    ],
    "structs": {"state:luo,q": [{"name": "head", "type": "u16", "default": False}]},
}
MANIFEST: dict[str, Any] = {
    "format": 1,
    "luo-core": "0.1.0",
    "packs": {"luo-core": "0.1.0", "luo-x": "1.0"},
    "participants": {"driver:x": {"distribution": "luo-x", "record": "luo,x"}},
    "schemas": {"luo,x": ENTRY},
}


def luo(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    """Run ``luo``: its exit status, stdout, and the lines on stderr (usage errors included)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a temporary folder, so that messages name files as the user typed them."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.json").write_text(json.dumps(MANIFEST))
    return tmp_path


def stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


# -- a manifest's structure -----------------------------------------------------------

DELETE = object()


def at(*path: str | int, value: object = DELETE) -> Callable[[Any], Any]:
    """A change to MANIFEST: set (or delete) the item at ``path``."""

    def change(manifest: Any) -> Any:
        parent = manifest
        for step in path[:-1]:
            parent = parent[step]
        if value is DELETE:
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
        return manifest

    return change


X = ("schemas", "luo,x")
S = 'schemas."luo,x"'
VERSION = f"{S}.version: expected an integer from 1 to 4294967295, got"


def typed(text: str, problem: str) -> tuple[Callable[[Any], Any], str]:
    """A case where the first field's type string is ``text``."""
    shown = json.dumps(text) if len(text) < 40 else json.dumps(text[:40])[:-1] + '..."'
    message = f"{S}.fields[0].type: {shown} is not a field type: {problem}"
    return at(*X, "fields", 0, "type", value=text), message


MALFORMED = [
    # The reproductions of the issue: each was a traceback.
    (at(*X, "structs"), f'{S}: missing key "structs"'),
    (at(*X, "sections"), f'{S}: missing key "sections"'),
    (at(*X, "fields", 0, "name"), f'{S}.fields[0]: missing key "name"'),
    (at(*X, "fields", 0, "type"), f'{S}.fields[0]: missing key "type"'),
    (at(*X, "fields", value=["x"]), f'{S}.fields[0]: expected an object, got "x"'),
    (at(*X, "fields", value=[None]), f"{S}.fields[0]: expected an object, got null"),
    (at(*X, "structs", value=[]), f"{S}.structs: expected an object, got an array"),
    (at(*X, "fields", 2, "type", value=5), f"{S}.fields[2].type: expected a string, got 5"),
    # Wrong types at the top.
    (at("schemas", value=[]), "schemas: expected an object, got an array"),
    (at("packs", value={"luo-x": 1}), "packs.luo-x: expected a string, got 1"),
    (at("luo-core", value=None), "luo-core: expected a string, got null"),
    (at("format", value=2), "format: this luo reads format 1, not 2"),
    (at("format", value="1"), 'format: this luo reads format 1, not "1"'),
    (
        at("participants", value={"x": {}}),
        "participants.x: not a participant (subsystem:NAME or driver:NAME)",
    ),
    (
        at("participants", "driver:x", "record", value=5),
        'participants."driver:x".record: expected a string, got 5',
    ),
    (
        at(*X, "sections", 0, "optional", value=0),
        f"{S}.sections[0].optional: expected true or false, got 0",
    ),
    # Unknown keys are refused: a later luo that says more writes another format.
    (
        at("extra", value=1),
        'unknown key "extra" (format 1 has: failed, format, luo-core, packs, participants, '
        "schemas)",
    ),
    (
        at(*X, "fields", 0, "optional", value=True),
        f'{S}.fields[0]: unknown key "optional" (format 1 has: default, name, type)',
    ),
    # Numbers are bounded: versions are u32, and the schema's own rules hold.
    (at(*X, "version", value=10**30), f"{VERSION} an integer of 31 digits"),
    (at(*X, "version", value=1 << 32), f"{VERSION} 4294967296"),
    (at(*X, "version", value=0), f"{VERSION} 0"),
    (at(*X, "version", value="2"), f'{VERSION} "2"'),
    (at(*X, "version", value=True), f"{VERSION} true"),
    (at(*X, "version", value=2.0), f"{VERSION} 2.0"),
    (at(*X, "min_version", value=3), f"{S}.min_version: expected an integer from 1 to 2, got 3"),
    (
        at(*X, "writes", value=[2]),
        f"{S}.writes[0]: expected a version below version (from 1 to 1), got 2",
    ),
    (at(*X, "migrations", value=[1, 1]), f"{S}.migrations[1]: v1 appears twice"),
    (
        at(*X, "migrations", value=[-(10**30)]),
        f"{S}.migrations[0]: expected a version from min_version (from 1 to 1), "
        "got an integer of 31 digits",
    ),
    # Names: one printable line, as every finding prints them.
    (
        at(*X, "compatible", value="luo,y"),
        f'{S}.compatible: expected "luo,x", the key it is filed under',
    ),
    (at(*X, "fields", 0, "name", value="a b"), f'{S}.fields[0].name: "a b" is not a field name'),
    (
        at(*X, "fields", 0, "name", value="a\nb"),
        f'{S}.fields[0].name: "a\\nb" has characters that are not printable',
    ),
    (at(*X, "fields", 1, "name", value="mac"), f'{S}.fields[1].name: field "mac" appears twice'),
    (
        at(*X, "sections", 0, "fields", 0, "name", value="mac"),
        f'{S}.sections[0].fields[0].name: field "mac" appears twice',
    ),
    (
        at(*X, "sections", 0, "name", value="RSS"),
        f'{S}.sections[0].name: "RSS" is not a section name',
    ),
    (
        at(*X, "structs", "u8", value=[]),
        f"{S}.structs.u8: not a nested class name (state:COMPATIBLE or struct:ClassName)",
    ),
    (
        at(*X, "structs", "state:luo,q"),
        f'{S}.fields[1].type: refers to "state:luo,q", which {S}.structs does not describe',
    ),
    # Type strings: each must parse, the dict form included.
    typed("u7", 'unknown type "u7" at character 1'),
    typed("list[u8", 'expected "]" at character 8'),
    typed("tuple[u8]", 'expected ", ...]" at character 9'),
    typed("u8 ", 'unexpected " " after the type at character 3'),
    typed("dict[u8]", 'expected ", " at character 8'),
    typed(
        "dict[bool, u8]", 'a dict key is str or a fixed-width integer, not "bool" at character 6'
    ),
    typed("dict[str, u7]", 'unknown type "u7" at character 11'),
    typed("enum:Mode{}", 'expected a member (name=int or name="str") at character 11'),
    typed("enum:M{a=1,a=2}", "enum member a appears twice at character 12"),
    typed("enum:M{a=99999999999999999999}", "enum member a is wider than 64 bits at character 8"),
    typed("list[" * 40 + "u8" + "]" * 40, "nested deeper than 32 levels at character 166"),
    typed("", "expected a type at character 1"),
    (
        at(*X, "fields", 0, "type", value='enum:M{a="\ud800"}'),
        f'{S}.fields[0].type: "enum:M{{a=\\"\\ud800\\"}}" is not valid Unicode',
    ),
]


@pytest.mark.parametrize(("change", "problem"), MALFORMED)
def test_a_malformed_manifest_is_one_line_naming_the_path(
    here: Path, capsys: pytest.CaptureFixture[str], change: Callable[[Any], Any], problem: str
) -> None:
    (here / "m.json").write_text(json.dumps(change(copy.deepcopy(MANIFEST))))
    assert (
        one_error(["compat", "m.json", "good.json"], capsys)
        == f"luo compat: error: m.json: {problem}"
    )
    # NEW is checked the same way, and so is a prepare's target.
    assert one_error(["compat", "good.json", "m.json"], capsys).endswith(f"m.json: {problem}")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"[]", 'm.json is not a luo ABI manifest (an object with "format": 1)'),
        (b'{"packs": {}}', 'm.json is not a luo ABI manifest (an object with "format": 1)'),
        (b"", "m.json is not JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"{]", "m.json is not JSON: Expecting property name enclosed in double quotes: "
         "line 1 column 2 (char 1)"),
        (b'{"format": NaN}', "m.json is not JSON: NaN is not a JSON number"),
        (b"[" * 100_000, "m.json is not a manifest: JSON nested too deeply"),
        (b"\xef\xbb\xbf{}", "m.json is not JSON: Unexpected UTF-8 BOM (decode using utf-8-sig): "
         "line 1 column 1 (char 0)"),
        (b"\x89LUO\x00\xff\xfe", "m.json is not a manifest: not UTF-8 text (byte 0x89 at "
         "offset 0)"),
    ],
)  # fmt: skip
def test_a_file_that_is_not_a_manifest_is_one_line(
    here: Path, capsys: pytest.CaptureFixture[str], content: bytes, problem: str
) -> None:
    (here / "m.json").write_bytes(content)
    assert one_error(["compat", "good.json", "m.json"], capsys) == f"luo compat: error: {problem}"


def test_a_handoff_image_given_as_a_manifest_is_one_line(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The easy mistake: `luo compat m.json h.luo`.  A handoff image is a frame
    # (magic, version, length) around a CBOR array: the array's header is not UTF-8.
    (here / "h.luo").write_bytes(IMAGE.pack(cbor2.dumps([4096, 0, []])))
    line = one_error(["compat", "good.json", "h.luo"], capsys)
    assert line == (
        "luo compat: error: h.luo is not a manifest: not UTF-8 text (byte 0x83 at offset 12)"
    )


def test_an_integer_of_thousands_of_digits_is_named_not_converted(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = json.dumps(MANIFEST).replace('"version": 2', '"version": ' + "9" * 100_000)
    (here / "m.json").write_text(text)
    assert one_error(["compat", "m.json", "good.json"], capsys) == (
        'luo compat: error: m.json: schemas."luo,x".version: expected an integer from 1 to '
        "4294967295, got an integer of 100000 digits"
    )


def test_a_valid_manifest_of_extreme_versions_is_compared_in_bounded_time(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # range(written, high) over 2**32 steps took minutes and gigabytes.
    newest = copy.deepcopy(MANIFEST)
    newest["schemas"]["luo,x"].update(version=(1 << 32) - 1, migrations=[1, 5], writes=[])
    (here / "m.json").write_text(json.dumps(newest))
    code, out, err = luo(["compat", "good.json", "m.json"], capsys)
    assert (code, err) == (1, [])
    assert (
        "error   update   luo,x: new has no migration for v2->v3, v3->v4, v4->v5, "
        "v6->v7 ... v4294967294->v4294967295 (4294967289)\n"
    ) in out
    assert "error   rollback luo,x: old reads v1..v2; new writes v4294967295" in out


# -- files ---------------------------------------------------------------------------


def test_a_missing_file_is_one_line(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = one_error(["compat", "good.json", "nope.json"], capsys)
    assert line == "luo compat: error: nope.json: No such file or directory"
    line = one_error(["compat", "good.json", "no\npe.json"], capsys)
    assert line == "luo compat: error: no\\npe.json: No such file or directory"


def test_a_directory_is_refused(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (here / "dir").mkdir()
    line = one_error(["compat", "dir", "good.json"], capsys)
    assert line == "luo compat: error: dir: a directory, not a regular file"


def test_a_fifo_is_refused_without_waiting_for_a_writer(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.mkfifo(here / "fifo")
    line = one_error(["compat", "good.json", "fifo"], capsys)
    assert line == "luo compat: error: fifo: a named pipe, not a regular file"


def test_a_file_name_with_control_characters_is_shown_escaped(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = one_error(["compat", "a\x1b[2Jb.json", "good.json"], capsys)
    assert line == "luo compat: error: a\\x1b[2Jb.json: No such file or directory"


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_device_is_refused_before_it_is_read(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = one_error(["compat", "/dev/zero", "good.json"], capsys)
    assert line == "luo compat: error: /dev/zero: a character device, not a regular file"


def test_a_file_beyond_the_largest_manifest_is_refused_before_it_is_read(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open(here / "big.json", "wb") as file:  # sparse: nothing to write, nothing to read
        file.truncate(MAX_MANIFEST_BYTES + 1)
    line = one_error(["compat", "big.json", "good.json"], capsys)
    assert line == (
        "luo compat: error: big.json: 16777217 bytes, larger than any manifest (at most 16 MiB)"
    )


def test_a_file_name_that_is_not_one_line_is_printed_as_one(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (here / "a\nb.json").write_text("[]")
    line = one_error(["compat", "a\nb.json", "good.json"], capsys)
    assert line == (
        'luo compat: error: a\\nb.json is not a luo ABI manifest (an object with "format": 1)'
    )


# -- stdin ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", [0, 1])
def test_either_manifest_may_come_from_stdin(
    here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, which: int
) -> None:
    stdin(monkeypatch, json.dumps(MANIFEST).encode())
    argv = ["compat", "good.json", "good.json"]
    argv[1 + which] = "-"
    code, out, err = luo(argv, capsys)
    assert (code, err) == (0, [])
    assert out.endswith("compatible: 0 error(s) in 0 finding(s) (1 schemas in OLD, 1 in NEW)\n")


def test_a_malformed_manifest_on_stdin_is_named_stdin(
    here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin(monkeypatch, b"\xff\xfe")
    line = one_error(["compat", "-", "good.json"], capsys)
    assert (
        line
        == "luo compat: error: <stdin> is not a manifest: not UTF-8 text (byte 0xff at offset 0)"
    )
    stdin(monkeypatch, json.dumps(at(*X, "version", value=-1)(copy.deepcopy(MANIFEST))).encode())
    line = one_error(["compat", "good.json", "-"], capsys)
    assert line == (
        'luo compat: error: <stdin>: schemas."luo,x".version: expected an integer from 1 to '
        "4294967295, got -1"
    )


def test_stdin_beyond_the_largest_manifest_is_refused(
    here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin(monkeypatch, b" " * (MAX_MANIFEST_BYTES + 1))
    line = one_error(["compat", "-", "good.json"], capsys)
    assert line == (
        "luo compat: error: <stdin>: 16777217 bytes, larger than any manifest (at most 16 MiB)"
    )


def test_old_and_new_cannot_both_be_stdin(
    here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin(monkeypatch, json.dumps(MANIFEST).encode())
    code, out, err = luo(["compat", "-", "-"], capsys)
    assert (code, out) == (2, "")
    assert err[0].startswith("usage: luo compat ")
    assert err[-1] == "luo compat: error: OLD and NEW cannot both be - (stdin)"


# -- output --------------------------------------------------------------------------


def narrowed() -> dict[str, Any]:
    manifest = copy.deepcopy(MANIFEST)
    manifest["schemas"]["luo,x"]["fields"][0]["type"] = "u32"  # u64 -> u32 at the same version
    manifest["schemas"]["luo,x"]["structs"]["state:luo,q"][0]["type"] = "u32"  # widened
    return manifest


def test_compat_json_gives_the_findings_and_the_verdict(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (here / "new.json").write_text(json.dumps(narrowed()))
    code, out, err = luo(["compat", "--json", "good.json", "new.json"], capsys)
    assert (code, err) == (1, [])
    report = json.loads(out)
    assert list(report) == ["verdict", "counts", "old", "new", "findings"]
    assert report["verdict"] == "incompatible"
    assert report["counts"] == {"error": 1, "warning": 1, "info": 2}
    assert report["old"] == {"file": "good.json", "luo-core": "0.1.0", "schemas": 1, "failed": []}
    assert report["findings"][0] == {
        "level": "error",
        "direction": "update",
        "subject": "luo,x",
        "message": "v2: field 'mac': u64 -> u32; new refuses values of old that do not fit: "
        "bump the version",
    }
    assert {(f["level"], f["direction"]) for f in report["findings"]} == {
        ("error", "update"),
        ("info", "update"),
        ("info", "rollback"),
        ("warning", "rollback"),
    }
    code, out, _ = luo(["compat", "--json", "-q", "new.json", "new.json"], capsys)
    assert code == 0
    assert json.loads(out)["verdict"] == "compatible"
    assert json.loads(out)["findings"] == []


def test_compat_quiet_lists_only_errors_but_counts_everything(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (here / "new.json").write_text(json.dumps(narrowed()))
    code, out, _ = luo(["compat", "-q", "good.json", "new.json"], capsys)
    assert code == 1
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["error"]
    assert lines[-1] == "incompatible: 1 error(s) in 4 finding(s) (1 schemas in OLD, 1 in NEW)"


def test_a_finding_that_quotes_a_control_character_stays_one_line(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = copy.deepcopy(MANIFEST)
    manifest["schemas"]["luo,x"]["fields"][2]["type"] = 'enum:Mode{a="x\ny"}'
    (here / "new.json").write_text(json.dumps(manifest))
    code, out, _ = luo(["compat", "-q", "good.json", "new.json"], capsys)
    assert code == 1
    assert len(out.splitlines()) == 3  # two errors (update and rollback) and the verdict
    assert 'enum:Mode{a="x\\ny"}' in out
    code, out, _ = luo(["compat", "--json", "good.json", "new.json"], capsys)
    assert code == 1
    assert 'enum:Mode{a="x\ny"}' in json.loads(out)["findings"][0]["message"]


@pytest.mark.parametrize("verb", ["manifest", "compat"])
def test_help_has_a_description_an_example_and_the_defaults(
    capsys: pytest.CaptureFixture[str], verb: str
) -> None:
    code, out, _ = luo([verb, "--help"], capsys)
    assert code == 0
    assert "examples:\n" in out and f"\n  luo {verb} " in out
    assert max(len(line) for line in out.splitlines()) <= 80
    words = " ".join(out.split())
    assert "(default: stdout)" in words if verb == "manifest" else "(default: text)" in words


# -- luo manifest -------------------------------------------------------------------


@pytest.fixture
def broken_pack(monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment in which one pack fails to import."""

    def load(builtin: object = None, **kwargs: Any) -> _registry.PluginRegistry:
        return _registry.load_plugins(["tests.no_such_module:Pack"], builtin=builtin, **kwargs)

    monkeypatch.setattr(_abi, "load_plugins", load)


def test_manifest_prints_and_round_trips(here: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = luo(["manifest"], capsys)
    assert (code, err) == (0, [])
    manifest = load_manifest(out)
    assert "failed" not in manifest
    assert "luo,example-nic-state" in manifest["schemas"]


def test_manifest_with_a_pack_that_failed_is_incomplete_and_says_so(
    here: Path, capsys: pytest.CaptureFixture[str], broken_pack: None
) -> None:
    code, out, err = luo(["manifest"], capsys)
    assert code == 1
    manifest = load_manifest(out)  # printed all the same, and readable
    why = (
        "loading tests.no_such_module:Pack failed: ModuleNotFoundError: "
        "No module named 'tests.no_such_module'"
    )
    assert manifest["failed"] == {"local:tests.no_such_module:Pack": why}
    # The registry's own log event (plugin_failed) may precede it; nothing else may.
    assert [line for line in err if "plugin_failed" not in line] == [
        f"luo manifest: error: pack local:tests.no_such_module:Pack failed to load ({why}); "
        'the manifest lists it under "failed" and lacks its participants and schemas'
    ]
    assert "luo,example-nic-state" in manifest["schemas"]  # what did load is all there


def test_an_incomplete_manifest_is_never_compatible(
    here: Path, capsys: pytest.CaptureFixture[str], broken_pack: None
) -> None:
    code, _, _ = luo(["manifest", "-o", "incomplete.json"], capsys)
    assert code == 1
    assert "failed" in json.loads((here / "incomplete.json").read_text())
    for argv in (["incomplete.json", "incomplete.json"], ["good.json", "incomplete.json"]):
        code, out, _ = luo(["compat", "-q", *argv], capsys)
        assert code == 1
        assert "error   both     local:tests.no_such_module:Pack: " in out
        assert "is incomplete: the pack failed to load there (loading " in out


def test_manifest_output_to_a_missing_folder_is_one_line(
    here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = one_error(["manifest", "-o", "no/such/dir/m.json"], capsys)
    assert line.startswith("luo manifest: error: no/such/dir")
    assert line.endswith(": No such file or directory")


def test_manifest_names_every_pack_that_failed(
    here: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def load(builtin: object = None, **kwargs: Any) -> _registry.PluginRegistry:
        broken = ["tests.no_such_module:Pack", "tests.no_such_module:Other"]
        return _registry.load_plugins(broken, builtin=builtin, **kwargs)

    monkeypatch.setattr(_abi, "load_plugins", load)
    code, out, err = luo(["manifest"], capsys)
    assert code == 1
    assert len(load_manifest(out)["failed"]) == 2
    [line] = [line for line in err if "plugin_failed" not in line]
    assert line.startswith(
        "luo manifest: error: 2 packs failed to load: local:tests.no_such_module:Other (loading "
    )
    assert line.endswith(
        '), local:tests.no_such_module:Pack; the manifest lists them under "failed" and lacks '
        "their participants and schemas"
    )
