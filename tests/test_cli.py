"""The ``luo`` command as a user runs it: output, JSON, traces, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from luo_core.cli import main

NICS = {"0000:01:00.0", "0000:01:00.1", "0000:02:00.0"}


def test_demo_tells_the_story(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"live update #1 .*\(kernel pid (\d+) -> pid (\d+), hardware pid \d+\)", out)
    assert "luo-example-nic" in out
    for nic in NICS:
        line = next(line for line in out.splitlines() if nic in line)
        assert re.search(r"preserved, reclaimed; rx \+\d+ frames across kexec", line), line
    assert "0000:00:1f.0" in out and "has no driver" in out
    assert "blackout:" in out


@pytest.mark.parametrize("argv", [["--workers", "1"], ["--workers", "3"], ["--inproc"]])
def test_demo_json_summary(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(["demo", "--json", *argv]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["liveupdate_number"] == 1
    pids = summary["pids"]
    if "--inproc" in argv:
        assert summary["kexec"] == "inproc"
        assert pids["old"] == pids["new"] == pids["hardware"] == os.getpid()
    else:
        assert summary["kexec"] == "process"
        assert len({pids["old"], pids["new"], pids["hardware"], os.getpid()}) == 4
    devices = {d["name"]: d for d in summary["devices"]}
    assert {n for n, d in devices.items() if d["reclaimed"]} >= NICS
    assert devices["0000:00:1f.0"]["refused"] is not None
    assert not devices["0000:00:1f.0"]["preserved"]
    for nic in NICS:
        counters = summary["nics"][nic]
        assert counters["tx_frames"] == 37  # the workload's frames, sent before the update
        # The NIC stays enabled through the update: what arrives is received, not dropped.
        assert counters["rx_during_kexec"] >= 0 and counters["rx_dropped_during_kexec"] == 0
    assert summary["blackout_us"] > 0
    assert summary["threads_left"] == []
    assert list(summary["phases"]) == ["prepare", "freeze", "kexec", "restore", "finish"]
    assert "device:0000:01:00.0" in summary["phases"]["restore"]["participants_us"]


def test_demo_writes_a_chrome_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.json"
    assert main(["demo", "--trace", str(trace)]) == 0
    events = json.loads(trace.read_text())["traceEvents"]
    assert {"prepare", "freeze", "kexec", "restore", "finish", "blackout"} <= {
        e["name"] for e in events
    }
    assert str(trace) in capsys.readouterr().out


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
    assert main(["bench", "--devices", "9000", "--rounds", "1"]) == 1
    assert "7936" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="missing-dir"):
        main(["--debug", "demo", "--trace", str(tmp_path / "missing-dir" / "t.json")])


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
    assert json.loads(done.stdout)["liveupdate_number"] == 1
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
    assert err == [
        "luo contract: error: no installed pack 'no-such-pack' in the luo_core.plugins group"
    ]
