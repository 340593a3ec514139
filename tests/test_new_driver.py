"""``luo new-driver``: the scaffolded pack works as it is, without any edit."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import venv
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
            monkeypatch.delitem(sys.modules, name)


def test_its_own_tests_pass(tmp_path: Path) -> None:
    scaffold("acme-nvme", tmp_path / "pack")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "pack")}
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


@pytest.mark.parametrize("bad", ["Acme", "acme_nic", "acme-", "acme--nic", "1acme", "a" * 41])
def test_bad_names_are_one_line_errors(
    bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new-driver", bad, "--dir", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be lowercase words" in err[0]
    assert not (tmp_path / "x").exists()


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
