"""Imports point one way: resp and engine know nothing of valqd but the error types; the
command layer knows resp and engine but no sockets, files or event loop; the HTTP layer
knows the command layer but no sockets or event loop either."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "valqd"
NO_IO = {"asyncio", "socket", "ssl", "selectors", "threading", "subprocess"}
RULES = {
    # package: (valqd modules it may import, stdlib/third-party modules it may not)
    "resp": ({"valqd.errors", "valqd.resp"}, NO_IO | {"os"}),
    "engine": ({"valqd.errors", "valqd.engine"}, NO_IO | {"os", "time"}),
    "commands": ({"valqd", "valqd.errors", "valqd.resp", "valqd.engine", "valqd.commands",
                  "valqd.config"}, NO_IO),
    # HTTP requests in, responses out; commands run through the dispatcher like RESP ones
    "http": ({"valqd", "valqd.errors", "valqd.resp", "valqd.commands", "valqd.http"}, NO_IO),
}


def imports_of(path: Path, package: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against valqd.<package> (or valqd)
                base = ["valqd", package] if package else ["valqd"]
                base = base[:max(0, len(base) - node.level + 1)]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module or "")
    return found


@pytest.mark.parametrize("package", sorted(RULES))
def test_imports_point_one_way(package):
    allowed, forbidden = RULES[package]
    for path in sorted((PACKAGE / package).glob("*.py")):
        for name in imports_of(path, package):
            top = name.split(".")[0]
            if top == "valqd":
                assert any(name == a or name.startswith(a + ".") for a in allowed), \
                    f"{path.name} imports {name}"
            else:
                assert top not in forbidden, f"{path.name} imports {name}"


CLIENT_LIBRARY = {"valqd.client", "valqd.worker"}


def test_the_server_never_imports_the_client_library():
    """valqd.client and valqd.worker need the optional `valkey` package; the server runs
    without it. Only __main__ reaches the worker, inside `valqd worker`."""
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.name in ("client.py", "worker.py", "__main__.py") and \
                relative.parent == Path("."):
            continue
        package = relative.parts[0] if len(relative.parts) > 1 else ""
        for name in imports_of(path, package):
            assert name.split(".")[0] != "valkey", f"{relative} imports {name}"
            assert not any(name == m or name.startswith(m + ".") for m in CLIENT_LIBRARY), \
                f"{relative} imports {name}"


def test_the_client_library_imports_nothing_of_the_server():
    for name in ("client", "worker"):
        for imported in imports_of(PACKAGE / f"{name}.py", ""):
            if imported.split(".")[0] == "valqd":
                assert imported in CLIENT_LIBRARY, f"{name}.py imports {imported}"


def test_only_the_server_knows_which_store_it_runs():
    """The command layer, the engine, RESP and HTTP never import a store: the server builds
    the store and hands its handlers to the dispatcher (valqd/store/__init__.py)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).parts
        if parts[0] == "store" or parts in (("server.py",), ("__main__.py",)):
            continue
        for name in imports_of(path, parts[0] if len(parts) > 1 else ""):
            assert not name.startswith("valqd.store"), f"{path} imports {name}"
