"""The ``luo`` command as a user runs it: output, JSON, traces, exit codes, one-line errors."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from luo_core.cli import _main, main
from luo_core.cli._args import Progress
from luo_core.cli._demo import mac_address
from luo_core.kernel._registry import core_origin


def test_bench_reports_per_device_cost(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--devices", "40", "--rounds", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["participants"] == 42
    assert set(result["per_device_us"]) == {"prepare", "freeze", "kexec", "restore", "finish"}
    assert all(v > 0 for v in result["per_device_us"].values())


def test_user_error_is_one_line_and_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "missing-dir" / "trace.json"
    assert main(["demo", "--trace", str(target)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("luo demo: error:")
    assert "missing-dir" in err[0]


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(tmp_path: Path, where: str) -> None:
    argv = ["demo", "--trace", str(tmp_path / "missing-dir" / "t.json")]
    with pytest.raises(OSError, match="missing-dir"):
        main(["--debug", *argv] if where == "before" else [*argv, "--debug"])


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["bench", "--rounds", "0"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: luo" in capsys.readouterr().err


def test_the_console_script_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "luo_core", "demo", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["liveupdate_number"] == 3  # the built-in host's updates
    assert done.stderr == ""  # warnings and worse only; a clean run logs nothing


def test_luo_contract_runs_the_suite_on_an_installed_pack() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "luo_core", "contract", "luo-example-nic"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "passed" in done.stdout
    assert "freeze" in done.stdout and "restore" in done.stdout  # the blackout-path report
    assert "luo contract luo-example-nic: passed" in done.stdout


def test_luo_contract_on_an_unknown_pack_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["contract", "no-such-pack"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(
        "luo contract: error: no installed pack 'no-such-pack' in the luo_core.plugins group; "
        "installed packs: "
    )
    assert "luo-example-nic" in err[0]  # nothing is close: every installed pack is listed


# -- one rule for -v ----------------------------------------------------------


def _replace_run(monkeypatch: pytest.MonkeyPatch, verb: str, run: Callable[..., int]) -> None:
    """Make ``main`` run ``run`` for ``verb``, after parsing its arguments as usual."""
    parser = _main.build_parser()
    parser.get_default("verb_parsers")[verb].set_defaults(run=run)
    monkeypatch.setattr(_main, "build_parser", lambda: parser)


@pytest.mark.parametrize(
    ("argv", "count"),
    [
        (["demo"], 0),
        (["-v", "demo"], 1),
        (["demo", "-v"], 1),
        (["-vv", "demo"], 2),
        (["-v", "demo", "--inproc", "-v"], 2),
        (["bench", "--verbose"], 1),
        (["-vv", "contract", "some-pack"], 2),  # a verb never overwrites the global count
        (["-v", "drivers", "--json"], 1),
    ],
)
def test_v_is_the_log_verbosity_on_either_side_of_the_verb(argv: list[str], count: int) -> None:
    assert _main.parse_arguments(argv).log_verbosity == count


@pytest.mark.parametrize(
    ("flags", "level"), [([], "WARNING"), (["-v"], "INFO"), (["-vv"], "DEBUG")]
)
def test_v_sets_the_level_of_luos_logs(
    flags: list[str], level: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []

    def look(_args: object) -> int:
        seen.append(logging.getLogger("luo").level)
        return 0

    _replace_run(monkeypatch, "drivers", look)
    assert main(["drivers", *flags]) == 0
    assert seen == [logging.getLevelName(level)]


def test_no_verb_has_a_v_of_its_own() -> None:
    """``-v`` means log verbosity everywhere: a verb that lists more uses another flag."""
    for name, verb in _main.build_parser().get_default("verb_parsers").items():
        owners = [a.dest for a in verb._actions if {"-v", "--verbose"} & set(a.option_strings)]
        assert owners == ["log_verbosity_after_verb"], name


# -- --version ----------------------------------------------------------------


def test_version_prints_luo_core_and_with_v_every_pack(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for flag in ("--version", "-V"):
        assert main([flag]) == 0
        assert capsys.readouterr().out == f"luo-core {core_origin().version}\n"
    assert main(["-V", "-v"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"luo-core {core_origin().version}"
    assert any(re.fullmatch(r"luo-example-nic \d+\.\d+\S*", line) for line in lines), lines
    assert lines[-1].startswith("Python ")


# -- usage errors: exit 2 with the verb's own usage -----------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--devices", "7937"], "--devices: 7937 is out of range (1 to 7936)"),
        (["bench", "--devices", "0"], "--devices: 0 is out of range (1 to 7936)"),
        (["bench", "--devices", "many"], "--devices: 'many' is not a whole number"),
        (["bench", "--devices", "9" * 5000], "'... is out of range (1 to 7936)"),
        (["bench", "--rounds", "1001"], "--rounds: 1001 is out of range (1 to 1000)"),
        (["bench", "--workers", "257"], "--workers: 257 is out of range (1 to 256)"),
        (["demo", "--workers", "0"], "--workers: 0 is out of range (1 to 256)"),
        (["demo", "--trace", ""], "--trace: a file name is needed, not an empty string"),
        (["demo", "--save-handoff", ""], "--save-handoff: a file name is needed"),
        (["demo", "--trace", "."], "--trace: '.' is a directory, not a file"),
        (["demo", "--next-python", ""], "--next-python: a value is needed"),
        (["demo", "--inproc", "--next-python", "python3"], "--next-python needs a kernel process"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["drivers", "extra"], "unrecognized arguments: extra"),
    ],
)
def test_a_bad_option_value_is_exit_2_with_the_verbs_usage(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: luo {argv[0]} ")
    assert err.splitlines()[-1].startswith(f"luo {argv[0]}: error: ")
    assert message in err.splitlines()[-1]


def test_an_unknown_global_option_gets_the_global_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--bogus", "demo"])
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("usage: luo [")


def test_an_unwritable_output_is_refused_before_the_update(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "missing-dir" / "h.luo"
    assert main(["demo", "--inproc", "--save-handoff", str(target)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no update ran
    assert captured.err == f"luo demo: error: {target}: No such file or directory\n"


@pytest.mark.parametrize("verb", ["demo", "drivers", "bench"])
def test_verb_help_has_a_description_an_example_and_defaults(verb: str) -> None:
    parser = _main.build_parser().get_default("verb_parsers")[verb]
    assert parser.description and len(parser.description) > 80
    assert f"luo {verb}" in (parser.epilog or "")
    for action in parser._actions:
        if (
            action.option_strings
            and action.dest not in {"help"}
            and "after_verb" not in action.dest
        ):
            assert "default" in (action.help or ""), (verb, action.dest)
    text = parser.format_help()
    if verb == "bench":
        assert "7936" in text


# -- output --------------------------------------------------------------------


def test_mac_addresses_print_as_six_hex_pairs() -> None:
    assert mac_address(0x02_00_60_13_43_E4) == "02:00:60:13:43:e4"
    assert mac_address(0xFFFF_0000_0000_0001) == "00:00:00:00:00:01"  # the low 48 bits


def _floats(value: Any, digits: int = 1) -> list[tuple[float, int]]:
    """Every float in ``value``, with the digits it must be rounded to (2 under a key
    ending in ``_ms``, 1 elsewhere)."""
    if isinstance(value, float):
        return [(value, digits)]
    if isinstance(value, dict):
        return [
            f
            for key, item in value.items()
            for f in _floats(item, 2 if key.endswith("_ms") else digits)
        ]
    if isinstance(value, list):
        return [f for item in value for f in _floats(item, digits)]
    return []


def test_json_floats_are_rounded_to_a_tenth_of_a_microsecond(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--inproc", "--json"]) == 0
    demo = _floats(json.loads(capsys.readouterr().out))
    assert main(["bench", "--devices", "20", "--rounds", "1", "--json"]) == 0
    bench = _floats(json.loads(capsys.readouterr().out))
    assert demo and bench
    assert all(f == round(f, digits) for f, digits in demo + bench)
    assert any(digits == 2 for _, digits in demo)  # the demo's times are in ms


def test_save_handoff_says_what_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    handoff = tmp_path / "h.luo"
    assert main(["demo", "--inproc", "--save-handoff", str(handoff)]) == 0
    size = handoff.stat().st_size
    assert f"handoff: {handoff} ({size} bytes)" in capsys.readouterr().out.splitlines()
    assert main(["demo", "--inproc", "--json", "--save-handoff", str(handoff)]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # stdout is the JSON alone
    size = handoff.stat().st_size
    assert captured.err == f"luo demo: wrote handoff: {handoff} ({size} bytes)\n"


def test_no_colour_even_with_every_log_event(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-vv", "demo", "--inproc"]) == 0
    captured = capsys.readouterr()
    assert "callback" in captured.err  # -vv logs every callback, on stderr
    assert "\x1b" not in captured.out + captured.err


def test_progress_is_drawn_only_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        with Progress("bench", stream) as progress:
            progress("round 1/2")
            progress("round 2/2")
        text = stream.getvalue()
        assert ("luo bench: round 2/2" in text) is shown
        assert text.endswith("\r") if shown else text == ""


# -- Ctrl-C and closed pipes ------------------------------------------------------


def _verb_argv(verb: str) -> list[str]:
    return {"compat": ["a", "b"], "inspect": ["h"], "contract": ["p"], "new-driver": ["n"]}.get(
        verb, []
    )


@pytest.mark.parametrize("verb", sorted(_main.build_parser().get_default("verb_parsers")))
def test_ctrl_c_in_any_verb_is_one_line_and_130(
    verb: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(_args: object) -> int:
        print("partial output")
        raise KeyboardInterrupt

    _replace_run(monkeypatch, verb, interrupted)
    assert main([verb, *_verb_argv(verb)]) == 130
    assert capsys.readouterr().err == f"luo {verb}: interrupted\n"


def test_ctrl_c_during_bench_is_one_line_and_130() -> None:
    """With stderr a terminal, bench draws its progress: once it has, Ctrl-C."""
    leader, follower = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "luo_core", "bench", "--devices", "7000", "--rounds", "50"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
    ) as bench:
        os.close(follower)
        try:
            seen = os.read(leader, 1024)  # the first progress line: the bench has started
            assert b"luo bench: " in seen
            started = time.monotonic()
            bench.send_signal(signal.SIGINT)
            while True:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # EIO: the bench exited and closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            assert bench.wait(timeout=60) == 130
            assert time.monotonic() - started < 10
            assert bench.stdout is not None and bench.stdout.read() == b""
        finally:
            bench.kill()
            os.close(leader)
    lines = [part.strip() for part in re.split(r"[\r\n]", seen.decode()) if part.strip()]
    assert lines[-1] == "luo bench: interrupted"
    assert not [line for line in lines if not line.startswith("luo bench: ")]


@pytest.mark.parametrize("argv", [["demo", "--inproc", "--json"], ["drivers"], ["-V", "-v"]])
def test_a_closed_stdout_is_quiet_and_141(argv: list[str]) -> None:
    """``luo demo --json | head -c 10``, with the reader gone before luo writes."""
    r, w = os.pipe()
    os.close(r)
    try:
        luo = subprocess.Popen(
            [sys.executable, "-m", "luo_core", *argv],
            stdin=subprocess.DEVNULL,
            stdout=w,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(w)
    with luo:
        assert luo.stderr is not None
        err = luo.stderr.read()
        assert luo.wait(timeout=60) == 141
    assert err == b""
