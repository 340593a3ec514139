"""``luo contract`` as a user runs it: finding the pack by any of its names, one line for a
pack that cannot be tested, JSON, progress on a terminal, and ``luo new-driver``'s names.

Packs are installed for real (``*.dist-info`` on ``sys.path``, as in
``test_registry``).  Only one test runs the suite itself (seconds); every
refusal happens before any check runs.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from luo_core.cli import _contract, main
from luo_core.cli._contract import Check
from luo_core.errors import PluginError
from luo_core.platform._models import DISABLE_ENV, ENTRY_POINT_GROUP, normalize
from luo_core.testing._installed import find_pack, resolve_pack
from tests.journal import DistFactory, one_error, pack_source

CONTRACT_HOOK = """
from luo_core.testing import Contract


@hookimpl
def luo_contracts():
    {body}
"""


@pytest.fixture(autouse=True)
def _only_known_packs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Results depend only on the packs a test installs and the example pack."""
    others = {
        normalize(ep.dist.name)
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)
        if ep.dist is not None
    } - {"luo-example-nic"}
    monkeypatch.setenv(DISABLE_ENV, ",".join(sorted(others)))


def refusal(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``luo contract ...``: its one error line (see ``one_error``), without the prefix."""
    return one_error(["contract", *argv], capsys).removeprefix("luo contract: error: ")


# -- a pack that cannot be tested is one line, before any check runs -------------


def test_a_pack_that_fails_to_import(
    make_dist: DistFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = make_dist(
        "luo-fake-broken", "raise RuntimeError('needs libfakenic.so')\n", entry_point="broken"
    )
    assert refusal(capsys, ["luo-fake-broken"]) == (
        f"pack luo-fake-broken 1.0 (entry point broken = {broken.module}) failed to load: "
        f"loading {broken.module} failed: RuntimeError: needs libfakenic.so"
    )


def test_a_pack_whose_luo_contracts_raises(
    make_dist: DistFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    raises = make_dist(
        "luo-fake-raises",
        pack_source(extra=CONTRACT_HOOK.format(body="raise KeyError('no such host')")),
    )
    assert refusal(capsys, ["luo-fake-raises"]) == (
        f"pack luo-fake-raises 1.0 (entry point luo_fake_raises = {raises.module}): "
        "its luo_contracts hook failed: KeyError: 'no such host'"
    )


def test_a_pack_with_a_misspelt_hook_names_the_hook_meant(
    make_dist: DistFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dist(
        "luo-fake-typo",
        pack_source(
            extra=CONTRACT_HOOK.format(body="return []")
            + """
@hookimpl
def luo_device_driver():
    return []
"""
        ),
    )
    line = refusal(capsys, ["luo-fake-typo"])
    assert line.startswith("pack luo-fake-typo 1.0 (entry point luo_fake_typo = ")
    assert line.endswith(
        "failed to load: unknown hook 'luo_device_driver' (did you mean 'luo_device_drivers'?)"
    )


def test_a_pack_without_contracts(
    make_dist: DistFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dist.good("luo-fake-plain", "plain")
    assert refusal(capsys, ["luo-fake-plain"]) == (
        "pack luo-fake-plain 1.0 declares no contract (implement the luo_contracts hook)"
    )


@pytest.mark.parametrize("name", ["luo-core", "luo_core", "core"])
def test_luo_core_is_luo_itself_not_a_missing_pack(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = refusal(capsys, [name])
    assert line.startswith("luo-core is luo itself, not a pack: it declares no contract")
    installed = sorted(
        {ep.dist.name for ep in metadata.entry_points(group="luo_core.plugins") if ep.dist}
    )
    assert "luo-example-nic" in installed
    assert line.endswith("installed packs: " + ", ".join(installed))


# -- any name a pack answers to ------------------------------------------------------


@pytest.mark.parametrize("name", ["luo-fake-nic", "LUO_FAKE.NIC", "nic-pack", "fake-nic"])
def test_a_pack_is_found_by_distribution_entry_point_or_new_driver_name(
    make_dist: DistFactory, name: str
) -> None:
    make_dist("luo-fake-nic", pack_source(), entry_point="nic-pack")
    assert {ep.dist.name for ep in find_pack(name) if ep.dist} == {"luo-fake-nic"}


def test_a_miss_lists_the_close_matches(
    make_dist: DistFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    make_dist("luo-acme-bar", pack_source(), entry_point="acme-bar")
    assert refusal(capsys, ["acme-bat"]) == (
        "no installed pack 'acme-bat' in the luo_core.plugins group; did you mean luo-acme-bar?"
    )
    miss = refusal(capsys, ["zzz"])  # nothing close: every installed pack is listed
    assert miss.startswith(
        "no installed pack 'zzz' in the luo_core.plugins group; installed packs: "
    )
    assert "luo-acme-bar" in miss.split("installed packs: ")[1].split(", ")


def test_a_name_two_packs_answer_to_is_refused(make_dist: DistFactory) -> None:
    make_dist("luo-one", pack_source(), entry_point="shared")
    make_dist("luo-two", pack_source(), entry_point="shared")
    with pytest.raises(PluginError, match=r"^'shared' names more than one installed pack "):
        find_pack("shared")
    assert {ep.dist.name for ep in find_pack("luo-two") if ep.dist} == {"luo-two"}


def test_the_command_new_driver_prints_finds_the_pack_it_made(
    tmp_path: Path, make_dist: DistFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["new-driver", "acme-bar", "--dir", str(tmp_path / "pack")]) == 0
    next_steps = capsys.readouterr().out
    assert "  luo contract acme-bar\n" in next_steps
    # Install it as pip would: its pyproject's name and entry point, its package importable.
    project = tomllib.loads((tmp_path / "pack" / "pyproject.toml").read_text())["project"]
    [(ep_name, target)] = project["entry-points"][ENTRY_POINT_GROUP].items()
    make_dist(
        project["name"], None, version=project["version"], entry_point=ep_name, module=target
    )
    sys.path.insert(0, str(tmp_path / "pack"))
    try:
        for name in ("acme-bar", "luo-acme-bar"):
            pack = resolve_pack(name)
            assert (pack.distribution, pack.entry_point) == (
                "luo-acme-bar",
                "acme-bar = luo_acme_bar",
            )
            assert pack.contracts == 1
    finally:
        sys.path.remove(str(tmp_path / "pack"))
        for module in [m for m in sys.modules if m.startswith("luo_acme_bar")]:
            del sys.modules[module]


# -- the suite: JSON, progress, the text report -----------------------------------


class Terminal(io.StringIO):
    """Progress lines, kept after the command closes its stream."""

    def close(self) -> None:
        pass


OVER_BUDGET_PACK = """
import attrs
from luo_example_nic import luo_device_drivers, luo_device_models, luo_subsystems
from luo_example_nic._contract import contracts

from luo_core import hookimpl


@hookimpl
def luo_contracts():
    for contract in contracts():
        yield attrs.evolve(contract, blackout_budget_us=0.001)
"""


def test_json_and_progress_for_a_pack_that_fails(
    make_dist: DistFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The one run of the suite here: the example pack, held to a blackout budget of 1 ns."""
    make_dist("luo-fake-greedy", OVER_BUDGET_PACK, entry_point="greedy")
    terminal = Terminal()
    monkeypatch.setattr(_contract, "_progress_stream", lambda: terminal)

    assert main(["contract", "greedy", "--json"]) == 1

    report = json.loads(capsys.readouterr().out)
    assert list(report) == [
        "pack",
        "version",
        "entry_point",
        "checks",
        "blackout_us",
        "blackout_error",
        "over_budget",
        "verdict",
    ]
    assert (report["pack"], report["version"], report["verdict"]) == (
        "luo-fake-greedy",
        "1.0",
        "FAILED",
    )
    checks = {c["name"]: c for c in report["checks"]}
    assert all(list(c) == ["name", "outcome", "message", "duration_ms"] for c in checks.values())
    failed = {name: c["message"] for name, c in checks.items() if c["outcome"] != "passed"}
    assert list(failed) == ["blackout_stays_within_its_budget"]
    assert "over its blackout budget of 0 µs" in failed["blackout_stays_within_its_budget"]
    assert checks["records_hold_no_pickle"]["message"] is None
    devices = ["example-nic:0000:01:00.0", "example-nic:0000:01:00.1", "example-nic:0000:02:00.0"]
    assert list(report["blackout_us"]) == devices
    for device in devices:
        costs = report["blackout_us"][device]
        assert list(costs) == ["freeze", "restore", "total"]
        assert all(type(us) is float and us >= 0 for us in costs.values())  # medians, each
    assert report["blackout_error"] is None
    assert len(report["over_budget"]) == 3
    lines = terminal.getvalue().splitlines()
    total = len(checks)
    assert len(lines) == total + 1
    assert lines[0].startswith(f"luo contract: [ 1/{total}] passed  ")
    assert lines[total - 1] == (
        f"luo contract: [{total}/{total}] failed  blackout_stays_within_its_budget"
    )
    assert lines[-1] == "luo contract: measuring the blackout-path cost (3 updates)"


def test_the_text_report_shows_failures_and_skips_and_with_list_every_check(
    capsys: pytest.CaptureFixture[str],
) -> None:
    checks = [
        Check("round_trip", "passed"),
        Check("cancel[freeze]", "failed", "AssertionError: lost\n  tx: 1 -> 0"),
        Check("golden", "skipped", "needs capability 'golden-records'"),
    ]
    _contract._print_text("luo-x 1.0 (entry point x = luo_x)", checks, 2.04, False)
    assert capsys.readouterr().out.splitlines() == [
        "luo contract luo-x 1.0 (entry point x = luo_x): 3 checks",
        "  failed  cancel[freeze]: AssertionError: lost",
        "              tx: 1 -> 0",
        "  skipped golden: needs capability 'golden-records'",
        "1 passed, 1 failed, 1 skipped in 2.0 s",
    ]
    _contract._print_text("luo-x 1.0 (entry point x = luo_x)", checks, 2.04, True)
    assert "  passed  round_trip" in capsys.readouterr().out.splitlines()


def test_list_replaces_the_verbs_own_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    """-v is the global log verbosity only: the verb's own options are --list and --json."""
    verbs = argparse.ArgumentParser(prog="luo").add_subparsers()
    _contract.add_parser(verbs)
    options = {o for action in verbs.choices["contract"]._actions for o in action.option_strings}
    assert options == {"-h", "--help", "--list", "--json"}
    with pytest.raises(SystemExit) as exited:
        main(["contract", "-h"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "luo contract acme-nic --list" in out
