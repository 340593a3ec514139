"""The docs cannot drift from the code: every example runs, every hook and export is documented.

The Sphinx build runs separately (``sphinx-build -W``); these tests check what
the build cannot: that the examples pass and that nothing is left out.
"""

from __future__ import annotations

import doctest
import importlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import pluggy
import pytest
import structlog
from structlog.testing import capture_logs

import luo_core
from luo_core.kernel._hookspecs import PROJECT, LuoSpec

DOCS = Path(__file__).resolve().parent.parent / "docs"
SPEC = "luo_core.kernel._hookspecs.LuoSpec"
HOOKS = sorted(name for name in dir(LuoSpec) if name.startswith("luo_"))
PAGES = sorted(
    page.name for page in DOCS.glob("*.rst") if ">>>" in page.read_text(encoding="utf-8")
)

_DIRECTIVE = re.compile(r"^\.\. (?:py:)?(?P<kind>[a-z]+):: *(?P<target>\S+)[^\n]*\n", re.MULTILINE)
_OPTION = re.compile(r"^[ \t]+:(?P<name>[\w-]+):[ \t]*(?P<value>.*)$")


class Directive(NamedTuple):
    kind: str
    target: str
    """Fully qualified: ``:module:`` is prepended when the directive has one."""
    options: dict[str, str]


def directives(page: str) -> list[Directive]:
    """The object directives of a page (``autoclass``, ``py:data``...) and their options."""
    text = (DOCS / page).read_text(encoding="utf-8")
    found = []
    for match in _DIRECTIVE.finditer(text):
        options: dict[str, str] = {}
        # Options end at the first blank line (after any signature continuation lines).
        for line in text[match.end() :].splitlines():
            if not line.strip() or not line[0].isspace():
                break
            option = _OPTION.match(line)
            if option:
                options[option["name"]] = option["value"].strip()
        target = match["target"]
        if "module" in options:
            target = f"{options['module']}.{target}"
        found.append(Directive(match["kind"], target, options))
    return found


def listed(value: str | None) -> set[str]:
    return {item.strip() for item in (value or "").split(",") if item.strip()}


def resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(dotted)


def run_examples(tests: Iterable[doctest.DocTest]) -> tuple[int, int, str]:
    """Run doctests with log output captured; ``(failed, attempted, report)``."""
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    report: list[str] = []
    with capture_logs():
        for test in tests:
            runner.run(test, out=report.append)
    return runner.failures, runner.tries, "".join(report)


@pytest.fixture(autouse=True)
def _default_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


# -- the hook reference ------------------------------------------------------


def test_every_hookspec_is_a_luo_hook() -> None:
    pm = pluggy.PluginManager(PROJECT)
    specs = {name for name in dir(LuoSpec) if pm.parse_hookspec_opts(LuoSpec, name) is not None}
    assert specs
    assert specs == set(HOOKS)


@pytest.mark.parametrize("name", HOOKS)
def test_hook_docstring_holds_a_passing_example(name: str) -> None:
    hook = getattr(LuoSpec, name)
    assert ">>>" in (hook.__doc__ or ""), f"LuoSpec.{name} has no doctest example"
    finder = doctest.DocTestFinder(recurse=False)
    failed, attempted, report = run_examples(finder.find(hook, f"LuoSpec.{name}", globs={}))
    assert attempted > 0, f"LuoSpec.{name}: no example was run"
    assert failed == 0, report


def test_hooks_page_documents_every_hook_through_autodoc() -> None:
    covered: set[str] = set()
    for directive in directives("hooks.rst"):
        if directive.kind == "autoclass" and directive.target == SPEC:
            if "members" in directive.options:
                members = listed(directive.options["members"]) or set(HOOKS)
                covered |= members - listed(directive.options.get("exclude-members"))
        elif directive.kind == "automethod" and directive.target.startswith(f"{SPEC}."):
            covered.add(directive.target.removeprefix(f"{SPEC}."))
    assert set(HOOKS) - covered == set(), "hooks missing from docs/hooks.rst"


# -- the API reference -------------------------------------------------------


def test_api_page_documents_every_public_name() -> None:
    documented: set[str] = set()
    for directive in directives("api.rst"):
        options = directive.options
        if (
            directive.kind == "automodule"
            and directive.target == "luo_core"
            and "members" in options
            and "imported-members" in options
        ):
            documented |= (listed(options["members"]) or set(luo_core.__all__)) - listed(
                options.get("exclude-members")
            )
        module, _, name = directive.target.rpartition(".")
        if module == "luo_core" and (
            directive.kind != "automodule" or name in luo_core.__all__  # a public namespace
        ):
            documented.add(name)
    assert set(luo_core.__all__) - documented == set(), "public names missing from docs/api.rst"
    assert documented - set(luo_core.__all__) == set(), "docs/api.rst documents private names"


def test_api_page_names_only_objects_that_exist() -> None:
    for directive in directives("api.rst"):
        resolve(directive.target)


# -- the pages' own examples -------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_pass(page: str) -> None:
    path = DOCS / page
    test = doctest.DocTestParser().get_doctest(
        path.read_text(encoding="utf-8"), {}, page, str(path), 0
    )
    failed, attempted, report = run_examples([test])
    assert attempted > 0
    assert failed == 0, report


def test_the_pages_with_examples_are_the_expected_ones() -> None:
    assert set(PAGES) >= {"quickstart.rst", "concepts.rst", "writing-a-pack.rst", "handoff.rst"}
