"""The package passes mypy in the project's strict configuration (pyproject.toml), and the
bugs the types found stay fixed.

The mypyc build compiles modules from these annotations and checks them at run time: an
annotation that lies is a crash in the compiled build (a `Blocked` returned where `bytes`
was declared raised TypeError on every blocking pop), so the check is part of the suite."""

import importlib.util
import re
import subprocess
import sys
import tomllib
import typing

import pytest
from support import ROOT

from valqd.commands.context import Blocked, ServerState, Session
from valqd.commands.dispatch import Dispatcher
from valqd.commands.table import TABLE
from valqd.config import Config
from valqd.engine import Databases

T0 = 1_700_000_000_000
MYPY_HINT = "pip install -e '.[test]' (or pip install 'mypy>=2.4')"


def test_the_package_passes_mypy_strict(tmp_path):
    if importlib.util.find_spec("mypy") is None:
        pytest.skip(f"mypy is not installed: {MYPY_HINT}")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "mypy-cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, \
        f"mypy (configured in pyproject.toml) found errors:\n{result.stdout}{result.stderr}"


def test_no_blanket_ignores():
    """Each `type: ignore` names its error code and sits on the line it excuses: a comment
    line of its own at the top of a module would silence the whole module. The config
    silences no module of the package either."""
    for path in sorted((ROOT / "valqd").rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "type: ignore" in line:
                where = f"{path.relative_to(ROOT)}:{number}"
                assert re.search(r"type: ignore\[[a-z-]+(, *[a-z-]+)*\]", line), where
                assert not line.lstrip().startswith("#"), where
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert mypy["strict"] is True
    for override in mypy.get("overrides", []):
        assert not override.get("ignore_errors"), override["module"]


# -- what the types found ----------------------------------------------------------------

def _dispatcher() -> tuple[Dispatcher, ServerState]:
    """The command layer alone, as an embedding front end or a test builds it: no server."""
    databases = Databases()
    state = ServerState(databases[0], Config({"appendonly": "no"}), TABLE, lambda: T0,
                        databases=databases)
    return Dispatcher(state), state


def test_execute_declares_the_blocked_of_a_blocking_pop():
    """execute() was declared to return bytes (the mismatch silenced by a type: ignore);
    compiled, the declaration is checked, and every blocking pop raised TypeError."""
    dispatcher, _ = _dispatcher()
    session = Session(1)
    dispatcher.execute(session, [b"VALQ", b"CREATE", b"q"])
    reply = dispatcher.execute(session, [b"VALQ", b"POP", b"q", b"BLOCK", b"100"])
    assert isinstance(reply, Blocked)
    if "return" in getattr(Dispatcher.execute, "__annotations__", {}):  # not when compiled
        declared = typing.get_type_hints(Dispatcher.execute)["return"]
        assert Blocked in typing.get_args(declared)


def test_a_slow_command_is_logged_without_a_server():
    """ServerState's slow log was None until the server set one: a command slower than the
    threshold then raised AttributeError out of the dispatcher."""
    dispatcher, state = _dispatcher()
    state.slowlog_threshold_us = 0  # every command is slow
    session = Session(1)
    assert dispatcher.execute(session, [b"VALQ", b"CREATE", b"q"]) == b"$9\r\ncreated q\r\n"
    assert [entry[3] for entry in state.slowlog.entries] == [[b"VALQ", b"CREATE", b"q"]]


def test_subscribe_works_without_a_server():
    """Likewise ServerState's pub/sub: SUBSCRIBE answered `-ERR internal error`."""
    dispatcher, _ = _dispatcher()
    session = Session(1, proto=3)
    assert dispatcher.execute(session, [b"SUBSCRIBE", b"valq:q"]) == \
        b">3\r\n$9\r\nsubscribe\r\n$6\r\nvalq:q\r\n:1\r\n"
