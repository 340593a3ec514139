"""``luo new-driver``: the scaffolded pack works as it is, without any edit."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest

from luo_core.cli import main
from luo_core.cli._scaffold import scaffold
from luo_core.testing import (
    check_cancel,
    check_deterministic_across_processes,
    check_fault,
    check_frozen_workload,
    check_hostile_records,
    check_restore_idempotent,
    check_round_trip,
    check_round_trip_across_processes,
    contracts_of,
)
from tests.journal import DistFactory

REPO = Path(__file__).resolve().parents[1]


def test_the_scaffold_passes_the_contract_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = scaffold("acme-nvme", tmp_path / "luo-acme-nvme")
    names = {f.relative_to(tmp_path / "luo-acme-nvme").as_posix() for f in files}
    assert {"pyproject.toml", "luo_acme_nvme/__init__.py", "tests/test_contract.py"} <= names
    assert 'acme-nvme = "luo_acme_nvme"' in (tmp_path / "luo-acme-nvme/pyproject.toml").read_text()
    monkeypatch.syspath_prepend(str(tmp_path / "luo-acme-nvme"))
    pack = importlib.import_module("luo_acme_nvme")
    try:
        assert [c.name for c in contracts_of(pack)] == ["acme-nvme"]
        check_round_trip(pack)
        check_round_trip(pack, workers=2)
        check_cancel(pack, "freeze")
        for callback in ("prepare", "freeze", "restore"):
            check_fault(pack, callback)
        check_restore_idempotent(pack)
        check_frozen_workload(pack)
        check_hostile_records(pack)
        check_round_trip_across_processes(pack)
        check_deterministic_across_processes(pack)
    finally:
        for name in [m for m in sys.modules if m.startswith("luo_acme_nvme")]:
            del sys.modules[name]  # for good: the next scaffold of acme-nvme must not find it


def test_its_own_tests_pass(tmp_path: Path) -> None:
    scaffold("acme-nvme", tmp_path / "pack")
    # The luo_core under test stays importable: it may not be the installed one.
    path = [str(tmp_path / "pack"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path / "pack",
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "passed" in done.stdout


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("Acme", "must be lowercase words joined by '-'"),
        ("acme_nic", "must be lowercase words joined by '-'"),
        ("acme-", "must be lowercase words joined by '-'"),
        ("acme--nic", "must be lowercase words joined by '-'"),
        ("1acme", "a letter first, at most 40 characters"),
        ("a" * 41, "is 41 characters long: at most 40"),
        ("luo-acme", "must not start with 'luo-': the pack is named luo-NAME"),
    ],
)
def test_bad_names_are_usage_errors(
    bad: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["new-driver", bad, "--dir", str(tmp_path / "x")])
    assert exited.value.code == 2
    usage, error = capsys.readouterr().err.strip().splitlines()
    assert usage.startswith("usage: luo new-driver ")
    assert error.startswith(f"luo new-driver: error: argument NAME: driver name {bad!r} ")
    assert why in error
    assert not (tmp_path / "x").exists()


def refused(capsys: pytest.CaptureFixture[str], name: str, target: Path) -> str:
    assert main(["new-driver", name, "--dir", str(target)]) == 1
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert captured.out == ""
    assert not target.exists()
    return line


def test_a_name_that_would_replace_luo_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert refused(capsys, "core", tmp_path / "x") == (
        "luo new-driver: error: driver name 'core' would make luo-core / luo_core, luo's own "
        "distribution and package: installing the pack would replace luo; choose another name"
    )


def test_a_name_of_an_installed_distribution_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = metadata.version("luo-example-nic")
    assert refused(capsys, "example-nic", tmp_path / "x") == (
        "luo new-driver: error: driver name 'example-nic' would make luo-example-nic, and "
        f"luo-example-nic {version} is already installed; choose another name"
    )


def test_a_name_whose_package_is_importable_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "luo_acme_taken.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    line = refused(capsys, "acme-taken", tmp_path / "x")
    assert line == (
        "luo new-driver: error: driver name 'acme-taken' would make the package luo_acme_taken, "
        f"and a module luo_acme_taken is already importable ({tmp_path / 'luo_acme_taken.py'}); "
        "choose another name"
    )


def test_a_name_an_installed_pack_answers_to_is_refused(
    tmp_path: Path, make_dist: DistFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dist("acme-drivers", None, entry_point="acme-nic", module="acme_drivers")
    assert refused(capsys, "acme-nic", tmp_path / "x") == (
        "luo new-driver: error: driver name 'acme-nic' is already the entry point of installed "
        "pack acme-drivers; choose another name"
    )


def test_help_gives_the_rules_for_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["new-driver", "-h"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "at most 40 characters" in out and "examples:" in out
    assert "(default: ./luo-NAME)" in re.sub(r"-\s+", "-", " ".join(out.split()))


def test_an_existing_folder_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "mine.txt").write_text("precious")
    assert main(["new-driver", "acme-nic", "--dir", str(tmp_path / "keep")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert (tmp_path / "keep" / "mine.txt").read_text() == "precious"


@pytest.mark.slow
def test_scaffold_installs_with_pip_and_passes_luo_contract(tmp_path: Path) -> None:
    """The whole path a new author takes, in a fresh virtualenv."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / "bin"

    def sh(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, check=False)

    install = sh(bin_dir / "python", "-m", "pip", "install", "-q", "-e", f"{REPO}[test]")
    assert install.returncode == 0, install.stderr[-2000:]
    new = sh(bin_dir / "luo", "new-driver", "acme-nic")
    assert new.returncode == 0, new.stderr
    pack = tmp_path / "luo-acme-nic"
    assert sh(bin_dir / "python", "-m", "pip", "install", "-q", "-e", pack).returncode == 0
    contract = sh(bin_dir / "luo", "contract", "luo-acme-nic")
    assert contract.returncode == 0, contract.stdout[-3000:] + contract.stderr[-2000:]
    tests = sh(bin_dir / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", pack)
    assert tests.returncode == 0, tests.stdout[-3000:]
