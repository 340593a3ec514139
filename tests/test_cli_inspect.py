"""``luo inspect`` as a user runs it: hostile files refused before they are read, stdin,
one-line errors, MAC addresses that read as MAC addresses."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from luo_core.abi._frame import HEADER
from luo_core.abi._image import IMAGE
from luo_core.cli import main
from luo_core.cli._inspect import MAX_IMAGE_BYTES, show
from tests.journal import one_error
from tests.test_handoff_fuzz import real_handoff

MAC = re.compile(r"^ {6}mac = ([0-9a-f]{2}:){5}[0-9a-f]{2}$", re.MULTILINE)


class Stdin:
    """A stand-in for ``sys.stdin`` whose bytes come from ``source``; counts what was read."""

    def __init__(self, source: io.RawIOBase | io.BytesIO) -> None:
        self.buffer = self
        self.source = source
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        assert data is not None
        self.read_bytes += len(data)
        return bytes(data)


class Endless(io.RawIOBase):
    """``head`` then the byte ``fill`` for ever: /dev/zero behind a pipe."""

    def __init__(self, head: bytes = b"", fill: bytes = b"\0") -> None:
        self.head, self.fill = head, fill

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        assert size >= 0, "an unbounded read of an endless stream"
        out, self.head = self.head[:size], self.head[size:]
        return out + self.fill * (size - len(out))


@pytest.fixture
def handoff(tmp_path: Path) -> Path:
    path = tmp_path / "h.luo"
    path.write_bytes(real_handoff())
    return path


def test_a_handoff_prints_macs_as_macs(handoff: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(handoff)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{handoff}: valid luo handoff, liveupdate-number 1")
    assert len(MAC.findall(out)) == 3  # one per example NIC
    assert "tx_packets = 40" in out


def test_json_keeps_the_mac_a_number(handoff: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--json", str(handoff)]) == 0
    report = json.loads(capsys.readouterr().out)
    macs = [n["fields"]["mac"] for n in report["nodes"] if "mac" in n.get("fields", {})]
    assert len(macs) == 3 and all(type(m) is int for m in macs)


@pytest.mark.parametrize(
    ("key", "value", "shown"),
    [
        ("mac", 0x0200_6013_43E4, "02:00:60:13:43:e4"),
        ("peer_mac", 0xFFFF_FFFF_FFFF, "ff:ff:ff:ff:ff:ff"),
        ("mac", 1 << 48, str(1 << 48)),  # not a 48-bit address: printed as it is
        ("mac", -1, "-1"),
        ("mac", True, "True"),
        ("macaddr", 5, "5"),
        ("entries", [{"mac": 1, "port": "p0"}], "[{mac = 00:00:00:00:00:01, port = p0}]"),
        ("name", "eth\x1b[2J0", "eth\\x1b[2J0"),  # a hostile file cannot drive the terminal
        ("ports", {"\x07": "\n"}, "{\\x07 = \\n}"),
    ],
)
def test_mac_like_fields_and_text(key: str, value: Any, shown: str) -> None:
    assert show(value, key) == shown


def test_stdin_is_read_with_a_dash(
    handoff: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", Stdin(io.BytesIO(handoff.read_bytes())))
    assert main(["inspect", "-"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("<stdin>: valid luo handoff")
    assert len(MAC.findall(out)) == 3


def test_dev_zero_is_refused_before_it_is_read(capsys: pytest.CaptureFixture[str]) -> None:
    assert one_error(["inspect", "/dev/zero"], capsys) == (
        "luo inspect: error: /dev/zero: a character device, not a regular file: "
        "a handoff is a file written by luo demo --save-handoff"
    )


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert f"{fifo}: a named pipe, not a regular file" in one_error(["inspect", str(fifo)], capsys)


def test_a_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert f"{tmp_path}: a directory, not a regular file" in one_error(
        ["inspect", str(tmp_path)], capsys
    )


def test_a_file_name_with_control_characters_is_shown_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = tmp_path / "h\x1b]0;owned\x07.luo"
    hostile.write_bytes(b"not a handoff")
    line = one_error(["inspect", str(hostile)], capsys)
    assert "\x1b" not in line and "\x07" not in line
    assert "h\\x1b]0;owned\\x07.luo: not a luo handoff image" in line


def test_a_file_larger_than_any_handoff_is_refused_before_it_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = tmp_path / "big.luo"
    with big.open("wb") as f:
        f.truncate(MAX_IMAGE_BYTES + 1)  # sparse: costs no disk
    assert IMAGE.max_body + 16 == MAX_IMAGE_BYTES  # the frame's header and checksum
    assert one_error(["inspect", str(big)], capsys) == (
        f"luo inspect: error: {big}: {MAX_IMAGE_BYTES + 1} bytes, larger than the largest "
        f"handoff image ({MAX_IMAGE_BYTES} bytes)"
    )


def test_endless_zeros_on_stdin_are_refused_after_the_header(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin = Stdin(Endless())
    monkeypatch.setattr("sys.stdin", stdin)
    assert "<stdin>: not a luo handoff image: magic" in one_error(["inspect", "-"], capsys)
    assert stdin.read_bytes == HEADER.size


def test_stdin_is_read_no_further_than_the_size_its_header_declares(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    header = HEADER.pack(IMAGE.magic, IMAGE.format, 0, 100)
    stdin = Stdin(Endless(header, b"x"))
    monkeypatch.setattr("sys.stdin", stdin)
    assert "<stdin>: more bytes follow the handoff image's 116 bytes" in one_error(
        ["inspect", "-"], capsys
    )
    assert stdin.read_bytes == 117


def test_a_damaged_handoff_is_one_line_naming_the_file(
    handoff: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blob = bytearray(handoff.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    handoff.write_bytes(bytes(blob))
    assert one_error(["inspect", str(handoff)], capsys) == (
        f"luo inspect: error: {handoff}: handoff image checksum mismatch: "
        "the handoff image is corrupted"
    )


def test_a_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "nope.luo" in one_error(["inspect", str(tmp_path / "nope.luo")], capsys)


def test_an_empty_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["inspect", ""])
    assert exited.value.code == 2
    assert "usage: luo inspect" in capsys.readouterr().err


def test_help_gives_a_description_an_example_and_the_limit(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["inspect", "-h"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "luo inspect -" in out
    assert str(MAX_IMAGE_BYTES) in out


def test_a_node_no_loaded_pack_reads_names_the_packs_not_loaded(
    handoff: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LUO_DISABLE_PLUGINS", "luo-example-nic")
    assert main(["inspect", str(handoff)]) == 0
    out = capsys.readouterr().out
    assert MAC.findall(out) == []
    notes = [line for line in out.splitlines() if "no pack installed here declares" in line]
    assert len(notes) == 4  # three NICs and the forwarding table
    assert all("not loaded: " in n and "luo-example-nic (disabled)" in n for n in notes)
