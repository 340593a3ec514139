"""The docs cannot drift from the code: every example runs, every hook and export is documented.

The Sphinx build runs separately (``sphinx-build -W``); these tests check what
the build cannot: that the examples pass and that nothing is left out.

Every snippet runs as pasted.  The rules for whoever writes a page:

* Each page (``docs/*.rst``) runs as one script, top to bottom, in a fresh
  namespace: its ``.. code-block:: python`` blocks are executed and its
  ``>>>`` examples checked, in the order they appear, as a reader pasting
  them into one interpreter would.  A block may use what an earlier block or
  example of the same page defined, never what another page did.
* A python block that defines ``test_*`` functions is also written to a file
  of its own and run by pytest, so a test a reader copies passes as it is.
* Anything that is not Python run in this environment (a shell command, a
  file listing, output) is ``.. code-block:: console`` (commands, with a
  ``$`` prompt) or ``text`` (or ``toml``, ``json``...).  A bare ``::``
  literal block is refused: ``conf.py`` highlights it as Python, so it
  would look like a snippet that runs.
* A python block that cannot run here by nature (it needs a pack that is not
  installed, a network, a real kernel) is preceded by the comment
  ``.. docs-test: skip (why)``, which Sphinx does not render; the reason is
  required.
* A ``literalinclude`` of Python either runs as shown (it is executed in a
  fresh namespace) or says it is an excerpt with a ``:caption:`` naming the
  file it comes from, so nobody pastes half a module.
* ``README.md`` and ``drivers/*/README.md`` follow the same rules for their
  fenced ``python`` blocks (each file is one script).
"""

from __future__ import annotations

import builtins
import doctest
import importlib
import logging
import re
import subprocess
import symtable
import sys
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pluggy
import pytest
import structlog
from structlog.testing import capture_logs

import luo_core
from luo_core import DeviceDriverOps, SubsystemOps
from luo_core.kernel._hookspecs import PROJECT, LuoSpec
from luo_core.platform._models import HardwareSpec

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SPEC = "luo_core.kernel._hookspecs.LuoSpec"
HW_SPEC = "luo_core.platform._models.HardwareSpec"
HOOKS = sorted(name for name in dir(LuoSpec) if name.startswith("luo_"))
HW_HOOKS = sorted(name for name in dir(HardwareSpec) if name.startswith("luo_"))
ALL_PAGES = sorted(page.name for page in DOCS.glob("*.rst"))
PAGES = sorted(page for page in ALL_PAGES if ">>>" in (DOCS / page).read_text(encoding="utf-8"))
READMES = [ROOT / "README.md", *sorted(ROOT.glob("drivers/*/README.md"))]

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


def test_hooks_page_lists_every_hook_of_the_kernel_and_of_the_hardware() -> None:
    text = (DOCS / "hooks.rst").read_text(encoding="utf-8")
    rows = set(re.findall(r"^   \* - ``(luo_\w+)\(", text, re.MULTILINE))
    assert rows == set(HOOKS) | set(HW_HOOKS)
    assert {"luo_contracts", "luo_device_models"} <= rows


@pytest.mark.parametrize("name", HW_HOOKS)
def test_hardware_hook_docstring_holds_a_passing_example(name: str) -> None:
    hook = getattr(HardwareSpec, name)
    finder = doctest.DocTestFinder(recurse=False)
    failed, attempted, report = run_examples(finder.find(hook, f"HardwareSpec.{name}", globs={}))
    assert attempted > 0, f"HardwareSpec.{name}: no example was run"
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
    hardware = [d for d in directives("hooks.rst") if d.target == HW_SPEC]
    assert hardware and all("members" in d.options for d in hardware)


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


# -- the pages' own examples: every snippet runs as pasted ----------------------

_CODE = re.compile(
    r"^(?P<indent>[ \t]*)\.\. (?:code-block|sourcecode|code):: *(?P<language>\S*) *$"
)
_INCLUDE = re.compile(r"^(?P<indent>[ \t]*)\.\. literalinclude:: *(?P<path>\S+) *$")
_SKIP = re.compile(r"^[ \t]*\.\. docs-test: skip\b *(?P<reason>.*)$")
_MD_SKIP = re.compile(r"^<!-- docs-test: skip\b *(?P<reason>.*?) *-->$")
_FENCE = re.compile(r"^[ \t]*```(?P<language>[\w+-]*)\s*$")
PYTHON = frozenset({"python", "python3", "py"})


class Block(NamedTuple):
    """A literal block of a page: where it starts, its language, options and body."""

    start: int
    """Index of the directive's line (0-based)."""
    end: int
    """Index of the first line after the block."""
    body_line: int
    """Index of the body's first line."""
    language: str
    options: dict[str, str]
    body: str
    skip: str | None
    """The reason given by a ``.. docs-test: skip`` comment before the block."""


def literal_blocks(text: str, directive: re.Pattern[str] = _CODE) -> list[Block]:
    """The ``code-block`` (or ``literalinclude``) directives of an reST text."""
    lines = text.splitlines()
    blocks = []
    for index, line in enumerate(lines):
        match = directive.match(line)
        if not match:
            continue
        indent = len(match["indent"].expandtabs())
        options: dict[str, str] = {}
        cursor = index + 1
        while cursor < len(lines) and lines[cursor].strip():
            option = _OPTION.match(lines[cursor])
            if option is None:
                break
            options[option["name"]] = option["value"].strip()
            cursor += 1
        body_start = cursor
        while cursor < len(lines):
            current = lines[cursor]
            if current.strip() and len(current) - len(current.lstrip()) <= indent:
                break
            cursor += 1
        end = cursor
        while end > body_start and not lines[end - 1].strip():
            end -= 1
        body = textwrap.dedent("\n".join(lines[body_start:end])).strip("\n") + "\n"
        before = index - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        skip = _SKIP.match(lines[before]) if before >= 0 else None
        first = next((i for i in range(body_start, end) if lines[i].strip()), body_start)
        groups = match.groupdict()
        target = groups.get("language") or groups.get("path") or ""
        reason = None if skip is None else skip["reason"]
        blocks.append(Block(index, end, first, target, options, body, reason))
    return blocks


def fenced_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text (a ``<!-- docs-test: skip (why) -->`` before
    one is the Markdown spelling of the skip comment)."""
    lines = text.splitlines()
    blocks, index = [], 0
    while index < len(lines):
        match = _FENCE.match(lines[index])
        if not match or not match["language"]:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        before = index - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        skip = _MD_SKIP.match(lines[before]) if before >= 0 else None
        body = textwrap.dedent("\n".join(lines[index + 1 : end])) + "\n"
        reason = None if skip is None else skip["reason"]
        blocks.append(Block(index, end + 1, index + 1, match["language"], {}, body, reason))
        index = end + 1
    return blocks


def opens_bare_literal(line: str) -> bool:
    """Whether a line ends a paragraph with ``::``, which opens a literal block."""
    stripped = line.strip()
    return stripped.endswith("::") and not stripped.startswith(".. ")


def runnable(blocks: Iterable[Block]) -> list[Block]:
    """The python blocks a page's script runs."""
    return [block for block in blocks if block.language in PYTHON and block.skip is None]


class PageScript:
    """One page run as a script: python blocks executed, ``>>>`` examples checked,
    in order, in one namespace."""

    def __init__(self, path: Path, blocks: list[Block]) -> None:
        self.path = path
        self.blocks = blocks
        self.namespace: dict[str, Any] = {"__name__": f"docs_{path.stem.replace('-', '_')}"}
        self.examples = 0

    def run(self, text: str) -> None:
        lines = text.splitlines(keepends=True)
        done = 0
        for block in self.blocks:
            self._examples("".join(lines[done : block.start]), done)
            code = "\n" * block.body_line + block.body  # tracebacks name the page's lines
            exec(compile(code, str(self.path), "exec"), self.namespace)
            done = block.end
        self._examples("".join(lines[done:]), done)

    def _examples(self, text: str, first_line: int) -> None:
        test = doctest.DocTestParser().get_doctest(
            text, self.namespace, self.path.name, str(self.path), first_line
        )
        if not test.examples:
            return
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
        report: list[str] = []
        runner.run(test, out=report.append, clear_globs=False)
        self.examples += runner.tries
        assert runner.failures == 0, "".join(report)


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    """A page may turn logging on, as it tells its reader to: undo it afterwards."""
    root, luo = logging.getLogger(), logging.getLogger("luo")
    saved = (root.level, root.handlers[:], luo.level, luo.handlers[:], luo.propagate)
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    luo.setLevel(saved[2])
    luo.handlers[:] = saved[3]
    luo.propagate = saved[4]


@pytest.mark.usefixtures("_restore_logging")
@pytest.mark.parametrize("page", ALL_PAGES)
def test_every_snippet_of_the_page_runs_as_pasted(page: str) -> None:
    path = DOCS / page
    text = path.read_text(encoding="utf-8")
    script = PageScript(path, runnable(literal_blocks(text)))
    script.run(text)
    if page in PAGES:
        assert script.examples > 0


@pytest.mark.parametrize("page", ALL_PAGES)
def test_every_literal_block_names_its_language(page: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    bare = [
        f"{page}:{number}: {line.strip()}"
        for number, line in enumerate(text.splitlines(), 1)
        if opens_bare_literal(line)
    ]
    assert bare == [], "use `.. code-block:: console` (or text, python...), not `::`"
    for block in literal_blocks(text):
        assert block.language, f"{page}:{block.start + 1}: a code-block needs a language"
        if block.skip is not None:
            assert block.skip.strip("() "), f"{page}:{block.start + 1}: say why it is skipped"


def test_snippets_that_are_tests_pass_under_pytest(tmp_path: Path) -> None:
    files = []
    for page in ALL_PAGES:
        for block in runnable(literal_blocks((DOCS / page).read_text(encoding="utf-8"))):
            if re.search(r"^def test_", block.body, re.MULTILINE):
                name = f"test_{Path(page).stem.replace('-', '_')}_{block.start + 1}.py"
                (tmp_path / name).write_text(block.body, encoding="utf-8")
                files.append(name)
    assert files, "writing-a-pack.rst shows a test module"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _include_excerpt(page: Path, block: Block) -> str:
    """The text a ``literalinclude`` shows (the options the docs use)."""
    source = (page.parent / block.language).read_text(encoding="utf-8")
    options = block.options
    if "pyobject" in options:
        pattern = rf"^(?:@.*\n)*(?:class|def) {re.escape(options['pyobject'])}\b.*?(?=^\S|\Z)"
        found = re.search(pattern, source, re.MULTILINE | re.DOTALL)
        assert found, f"{block.language}: no {options['pyobject']}"
        return found[0]
    if "start-at" in options:
        source = source[source.index(options["start-at"]) :]
    if "start-after" in options:
        marker = options["start-after"]
        source = source[source.index(marker) + len(marker) :].split("\n", 1)[1]
    if "end-before" in options:
        source = source[: source.index(options["end-before"])]
    return source


def undefined_names(code: str, filename: str) -> set[str]:
    """Names ``code`` uses but neither defines, imports nor gets from builtins."""
    top = symtable.symtable(code, filename, "exec")
    defined = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    missing: set[str] = set()

    def walk(table: symtable.SymbolTable) -> None:
        for symbol in table.get_symbols():
            name = symbol.get_name()
            if (
                symbol.is_referenced()
                and (symbol.is_global() or table is top)
                and name not in defined
                and not hasattr(builtins, name)
            ):
                missing.add(name)
        for child in table.get_children():
            walk(child)

    walk(top)
    return missing


@pytest.mark.parametrize("page", ALL_PAGES)
def test_included_python_runs_as_shown_or_says_it_is_an_excerpt(page: str) -> None:
    path = DOCS / page
    for block in literal_blocks(path.read_text(encoding="utf-8"), _INCLUDE):
        if block.options.get("language") != "python" or "caption" in block.options:
            continue
        where = f"{page}:{block.start + 1}: {block.language}"
        advice = "include what it needs, or give it a :caption: naming the file it comes from"
        excerpt = _include_excerpt(path, block)
        missing = undefined_names(excerpt, block.language)
        assert not missing, f"{where} uses {sorted(missing)} without defining them: {advice}"
        try:
            exec(compile(excerpt, block.language, "exec"), {"__name__": "docs_excerpt"})
        except Exception as exc:
            raise AssertionError(f"{where} does not run as included ({exc!r}): {advice}") from exc


@pytest.mark.usefixtures("_restore_logging")
@pytest.mark.parametrize("readme", READMES, ids=lambda path: str(path.relative_to(ROOT)))
def test_readme_python_snippets_run_as_pasted(
    readme: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a snippet may write files where it runs
    text = readme.read_text(encoding="utf-8")
    script = PageScript(readme, runnable(fenced_blocks(text)))
    if readme == ROOT / "README.md":  # (the example pack's only python block is skipped)
        assert script.blocks, "README.md has no python block that runs: the test checks nothing"
    for block in script.blocks:
        code = "\n" * block.body_line + block.body
        exec(compile(code, str(readme), "exec"), script.namespace)


def test_the_example_nic_readme_writes_the_golden_records_the_pack_ships(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from luo_example_nic import NicRecord

    from luo_core.abi import decode_record, encode_record, schema_of, unseal

    readme = ROOT / "drivers" / "example-nic" / "README.md"
    recipe = next(b for b in fenced_blocks(readme.read_text("utf-8")) if "encode_record" in b.body)
    assert recipe.skip, "the recipe writes into the source tree: the README test must skip it"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="run this from drivers/example-nic"):
        exec(compile(recipe.body, str(readme), "exec"), {"__name__": "golden_recipe"})
    (tmp_path / "luo_example_nic" / "golden").mkdir(parents=True)
    exec(compile(recipe.body, str(readme), "exec"), {"__name__": "golden_recipe"})
    version = schema_of(NicRecord).version
    written = (tmp_path / f"luo_example_nic/golden/nic-state-v{version}.luor").read_bytes()
    assert unseal(written).version == version
    value = decode_record(written, {"luo,example-nic-state": NicRecord})
    shipped = ROOT / "drivers/example-nic/luo_example_nic/golden"
    for older in range(schema_of(NicRecord).min_version, version):
        golden = (shipped / f"nic-state-v{older}.luor").read_bytes()
        # The same state in every golden, written the same way at its version.
        assert decode_record(golden, {"luo,example-nic-state": NicRecord}) == value
        assert encode_record(value, version=older) == golden


def test_the_readme_session_prints_its_one_result_line_and_nothing_else(tmp_path: Path) -> None:
    blocks = runnable(fenced_blocks((ROOT / "README.md").read_text(encoding="utf-8")))
    session = next(block.body for block in blocks if "Kernel.boot" in block.body)
    result = subprocess.run(
        [sys.executable, "-c", session],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1, result.stdout
    assert result.stderr == ""


def test_the_block_parser_sees_options_bodies_and_skips() -> None:
    text = textwrap.dedent(
        """\
        Intro::

        * item

          .. code-block:: python
             :caption: nested

             x = 1

               y = 2
          after

        .. docs-test: skip (needs the acme pack)

        .. code-block:: python

           import acme
        """
    )
    first, second = literal_blocks(text)
    assert (first.language, first.options, first.skip) == ("python", {"caption": "nested"}, None)
    assert first.body == "x = 1\n\n  y = 2\n"
    assert text.splitlines()[first.body_line] == "     x = 1"
    assert (second.body, second.skip) == ("import acme\n", "(needs the acme pack)")
    assert runnable([first, second]) == [first]
    assert opens_bare_literal("Intro::") and not opens_bare_literal(".. code-block:: python")


# -- what the pages say about the code ---------------------------------------


def test_the_schema_guide_gives_every_reserved_field_name() -> None:
    from luo_core.abi._schema import _RESERVED

    text = (DOCS / "schemas.rst").read_text(encoding="utf-8")
    paragraph = text[text.index("**Reserved field names.**") :]
    paragraph = paragraph[: paragraph.index(".. code-block:: python")]
    assert "starts with ``_``" in paragraph
    for name in _RESERVED:
        assert f"``{name}``" in paragraph, name


def test_check_golden_wants_every_older_version_and_not_the_current_one() -> None:
    import attrs
    import luo_example_nic
    from luo_example_nic import NicRecord
    from luo_example_nic._contract import contracts, golden

    from luo_core import hookimpl
    from luo_core.abi import encode_record, schema_of
    from luo_core.testing import check_golden

    def pack(records: dict[int, bytes]) -> type:
        class Pack:
            @hookimpl
            def luo_device_models(self) -> Any:
                yield from luo_example_nic.luo_device_models()

            @hookimpl
            def luo_device_drivers(self) -> Any:
                yield from luo_example_nic.luo_device_drivers()

            @hookimpl
            def luo_contracts(self) -> Any:
                yield attrs.evolve(contracts()[0], golden=records)

        return Pack

    schema = schema_of(NicRecord)
    shipped = golden()
    assert set(shipped) == set(range(schema.min_version, schema.version))
    check_golden(pack(shipped))  # every older version, and not the current one
    with pytest.raises(AssertionError, match=r"ships no golden record for v2$"):
        check_golden(pack({1: shipped[1]}))
    current = encode_record(NicRecord(mac=1, tx_tail=2, tx_packets=3))
    check_golden(pack({**shipped, schema.version: current}))  # allowed, not needed
    with pytest.raises(AssertionError, match="golden v1 is not a v1 record"):
        check_golden(pack({**shipped, 1: shipped[2]}))


@pytest.mark.parametrize("ops", [SubsystemOps, DeviceDriverOps])
def test_the_callback_docstrings_say_prepare_and_freeze_return_the_schema(ops: type) -> None:
    doc = " ".join((ops.__doc__ or "").split())
    assert "return an instance of the" in doc and "``schema``" in doc
    assert "never bytes" in doc
    assert "``None`` hands over the schema's default value" in doc
    assert not re.search(r"return\w* (the )?(raw )?bytes", doc)


def test_the_readme_says_who_luo_is_for_and_starts_in_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first = " ".join(text.split("\n\n")[1].split())
    assert first.startswith("luo is for people who write or review live-update-aware")
    assert "before touching a kernel" in first
    start = text.index("## Quick start")
    quick = next(b for b in fenced_blocks(text[start:]) if b.language == "console")
    assert len(quick.body.strip().splitlines()) == 2
