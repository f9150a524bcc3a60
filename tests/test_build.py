"""The two builds: which one `pip install` makes (VALQD_BUILD, a C compiler, mypy), which one
runs (valqd/buildinfo.py refuses stale compiled modules), and the fast suites on the pure
build when this run is the compiled one (as CI's is: .ci/run sets VALQD_BUILD=compiled)."""

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from support import CHILD_ENV, ROOT
from valqd import BUILD, __version__
from valqd.buildinfo import PACKAGE_DIR
from valqd.engine import queue as compiled_example

BACKEND = ROOT / "buildsys"
# The tests of the compiled modules that need no external binary, run again on the pure
# build by test_fast_suites_pass_on_the_pure_build
FAST_SUITES = ["tests/test_engine.py", "tests/test_engine_time.py",
               "tests/test_engine_consumers.py", "tests/test_resp.py",
               "tests/test_persistence.py", "tests/test_aof_format.py",
               "tests/test_valq_commands.py"]
PIP_TIMEOUT_S = 180
COMPILED_RUN = "needs the compiled build: VALQD_BUILD=compiled pip install -e '.[test]' " \
               "(a C compiler and Python's headers: apt-get install -y gcc python3-dev)"


def is_compiled(module) -> bool:
    return not module.__file__.endswith(".py")


def test_this_run_reports_its_build():
    """The build valqd says it runs is the one that runs; with VALQD_BUILD set, it is the
    one asked for (a run under VALQD_BUILD=compiled fails to import valqd otherwise)."""
    assert BUILD.name in ("compiled", "pure")
    assert is_compiled(compiled_example) == (BUILD.name == "compiled")
    requested = os.environ.get("VALQD_BUILD", "auto")
    if requested in ("compiled", "pure"):
        assert BUILD.name == requested, BUILD


def test_info_server_and_version_name_the_build(valqd):
    """INFO server says which build and which event loop run; `valqd --version` says which
    build (the child process imports the same valqd as this one)."""
    info = valqd.client().info("server")
    assert info["valqd_build"] == BUILD.name
    assert info["event_loop"] in ("asyncio", "uvloop")
    version = subprocess.run([sys.executable, "-m", "valqd", "--version"], env=CHILD_ENV,
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == f"valqd {__version__} {BUILD.describe()}"


def test_ci_runs_the_suite_on_the_compiled_build():
    """.ci/run compiles in place and keeps VALQD_BUILD=compiled for the test run, so the
    suite cannot quietly test the pure build (test_fast_suites_pass_on_the_pure_build runs
    the pure one on purpose)."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("\nexport VALQD_BUILD=compiled\n") < ci.index("pip install -q -e '.[test]'")


def test_each_error_keeps_its_code():
    """errors.py stays interpreted: compiled by mypyc, the subclasses' class attribute
    `code` read as the base class's ERR. The engine raises these from compiled code."""
    from valqd.engine import Engine
    from valqd.errors import (BusyQueueError, CommandError, NoLeaseError, NoMessageError,
                              NoQueueError, QueueFullError)
    assert "valqd/errors.py" not in backend().COMPILED
    errors = [NoQueueError(b"q"), BusyQueueError(b"q"), NoMessageError(b"q", 1),
              NoLeaseError(b"q", 1), QueueFullError(b"q", 1), CommandError("x")]
    assert [e.code for e in errors] == ["NOQUEUE", "BUSYQUEUE", "NOMSG", "NOLEASE",
                                         "QUEUEFULL", "ERR"]
    with pytest.raises(NoQueueError) as raised:
        Engine().pop(b"none", 0)
    assert raised.value.code == "NOQUEUE"


def backend():
    """buildsys/valqd_build.py, the build backend, as a module."""
    sys.path.insert(0, str(BACKEND))
    try:
        import valqd_build
    finally:
        sys.path.remove(str(BACKEND))
    return valqd_build


# -- which build pip makes -------------------------------------------------------------------

def decide(kind: str, **environ: str) -> subprocess.CompletedProcess:
    """The backend's decision for a `kind` of build, in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if k not in ("VALQD_BUILD", "CC")}
    env.update(environ)
    code = ("import valqd_build as b, sys\n"
            "try:\n    print(b.decide(sys.argv[1]).line(len(b.COMPILED)))\n"
            "except b.BuildError as exc:\n    sys.exit(f'error: {exc}')\n")
    return subprocess.run([sys.executable, "-c", code, kind], cwd=BACKEND, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("kind, environ, line", [
    ("wheel", {"VALQD_BUILD": "pure"}, "valqd build: pure Python (VALQD_BUILD=pure)"),
    ("editable", {}, "valqd build: pure Python (an editable install stays pure unless "
                     "VALQD_BUILD=compiled)"),
    ("wheel", {"CC": "/nonexistent/cc"}, "valqd build: pure Python (no working C compiler "
                                         "(/nonexistent/cc"),
    ("editable", {"VALQD_BUILD": "compiled", "CC": "/nonexistent/cc"},
     "error: VALQD_BUILD=compiled, but there is no working C compiler (/nonexistent/cc"),
    ("wheel", {"VALQD_BUILD": "fast"}, "error: VALQD_BUILD must be auto, compiled or pure, "
                                       "not 'fast'"),
], ids=["forced-pure", "editable-stays-pure", "no-compiler-pure", "no-compiler-refused",
        "bad-value"])
def test_the_build_decides_and_says_so_in_one_line(kind, environ, line):
    result = decide(kind, **environ)
    said = (result.stdout + result.stderr).strip()
    assert said.startswith(line), said
    assert result.returncode == (1 if line.startswith("error") else 0)
    assert "Traceback" not in result.stderr


def test_with_a_compiler_the_default_build_compiles():
    if not shutil.which(os.environ.get("CC", "cc")):
        pytest.skip("needs a C compiler: apt-get install -y gcc python3-dev")
    result = decide("wheel")
    assert result.stdout.startswith("valqd build: compiled with mypyc"), result.stderr


def pip_wheel(tmp_path: Path, **environ: str) -> subprocess.CompletedProcess:
    """`pip wheel` of this checkout (a copy of it: the build writes into the tree), with
    pip's build isolation, as `pip install .` builds."""
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", "build", "tests", "bench", "docs", "node_modules", "__pycache__", "*.so",
        "compiled.json", ".hypothesis", ".pytest_cache", "*.egg-info"))
    env = {k: v for k, v in os.environ.items() if k not in ("VALQD_BUILD", "PYTHONPATH")}
    env.update(environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    try:
        result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps",
                                 "--wheel-dir", str(tmp_path / "wheels"), str(source)],
                                capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        pytest.skip(f"pip wheel took over {PIP_TIMEOUT_S} s (no access to the package index?)")
    if "Could not find a version that satisfies the requirement setuptools" in result.stderr:
        pytest.skip("pip can't reach the package index for setuptools")
    return result


def test_a_pure_build_is_a_python_only_wheel(tmp_path):
    result = pip_wheel(tmp_path, VALQD_BUILD="pure")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "valqd build: pure Python (VALQD_BUILD=pure)" in result.stdout + result.stderr
    [wheel] = (tmp_path / "wheels").glob("valqd-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "valqd/buildinfo.py" in names and "valqd/engine/queue.py" in names
    assert not [n for n in names if n.endswith(".so") or n.endswith("compiled.json")]


def test_compiled_without_a_compiler_fails_the_build_saying_why(tmp_path):
    result = pip_wheel(tmp_path, VALQD_BUILD="compiled", CC="/nonexistent/cc")
    assert result.returncode != 0
    assert "VALQD_BUILD=compiled, but there is no working C compiler" in result.stderr
    assert not (tmp_path / "wheels").exists() or not list((tmp_path / "wheels").iterdir())


def test_a_pure_editable_build_removes_what_a_compiled_one_left(tmp_path):
    """`pip install -e .` after `VALQD_BUILD=compiled pip install -e .` runs the .py files
    again: the in-place compiled modules and their manifest go."""
    valqd_build = backend()
    tree = tmp_path / "tree"
    (tree / "valqd" / "engine").mkdir(parents=True)
    (tree / "valqd" / "engine" / "queue.py").write_text("")
    built = [tree / "valqd" / "engine" / "queue.cpython-311-x86_64-linux-gnu.so",
             tree / "valqd" / "compiled__mypyc.cpython-311-x86_64-linux-gnu.so"]
    for path in built:
        path.write_bytes(b"\x7fELF")
    (tree / "valqd" / "compiled.json").write_text(
        json.dumps({"modules": {"valqd.engine.queue": "0" * 64}}))
    removed = valqd_build.remove_compiled_in_place(tree)
    assert sorted(removed) == sorted([*built, tree / "valqd" / "compiled.json"])
    assert [p.name for p in tree.rglob("*") if p.is_file()] == ["queue.py"]
    assert valqd_build.remove_compiled_in_place(tree) == []  # nothing left to remove


# -- which build runs ------------------------------------------------------------------------

def copy_of_package(tmp_path: Path, with_compiled: bool) -> Path:
    """A copy of this run's valqd package (with or without its compiled modules), to import
    from and edit."""
    target = tmp_path / "site"
    ignore = ["__pycache__"] + ([] if with_compiled else ["*.so", "compiled.json"])
    shutil.copytree(PACKAGE_DIR, target / "valqd",
                    ignore=shutil.ignore_patterns(*ignore))
    return target


def import_valqd(site: Path, **environ: str) -> subprocess.CompletedProcess:
    """Import valqd from `site` in a fresh interpreter: prints the build and the files of
    two compiled modules."""
    env = {k: v for k, v in os.environ.items() if k not in ("VALQD_BUILD", "PYTHONPATH")}
    env.update(environ, PYTHONPATH=str(site))
    code = ("import valqd, valqd.engine.queue as q, valqd.resp.encode as e\n"
            "print(valqd.BUILD.name, q.__file__, e.__file__, getattr(e, 'EDITED', None))")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, cwd=site)


def write_manifest(package: Path, modules: dict[str, str]) -> None:
    (package / "compiled.json").write_text(json.dumps({"compiler": "mypyc test",
                                                       "modules": modules}))


def source_hash(package: Path, name: str) -> str:
    import hashlib
    path = package.parent.joinpath(*name.split(".")).with_suffix(".py")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_manifest_without_its_compiled_modules_runs_pure_and_says_so(tmp_path):
    site = copy_of_package(tmp_path, with_compiled=False)
    name = "valqd.resp.encode"
    write_manifest(site / "valqd", {name: source_hash(site / "valqd", name)})
    auto = import_valqd(site)
    assert auto.returncode == 0, auto.stderr
    assert auto.stdout.split()[0] == "pure"
    assert "valqd: running pure Python: valqd.resp.encode has no compiled module" \
        in auto.stderr
    refused = import_valqd(site, VALQD_BUILD="compiled")
    assert refused.returncode == 1
    assert "ImportError: valqd: VALQD_BUILD=compiled, but valqd.resp.encode has no " \
           "compiled module (rebuild: VALQD_BUILD=compiled pip install [-e] .)" in refused.stderr
    quiet = import_valqd(site, VALQD_BUILD="pure")
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_no_manifest_is_the_pure_build_and_compiled_is_refused(tmp_path):
    site = copy_of_package(tmp_path, with_compiled=False)
    assert import_valqd(site).stdout.split()[0] == "pure"
    refused = import_valqd(site, VALQD_BUILD="compiled")
    assert refused.returncode == 1 and "holds no compiled modules" in refused.stderr
    bad = import_valqd(site, VALQD_BUILD="turbo")
    assert bad.returncode == 1
    assert "VALQD_BUILD must be auto, compiled or pure, not 'turbo'" in bad.stderr


def test_an_edited_source_never_runs_its_stale_compiled_module(tmp_path):
    """Edit one compiled module's .py: valqd runs every compiled module from its .py (the
    edit included) and says why on stderr, or, under VALQD_BUILD=compiled, does not import."""
    if BUILD.name != "compiled":
        pytest.skip(COMPILED_RUN)
    site = copy_of_package(tmp_path, with_compiled=True)
    # mypyc's shared library sits beside the package's modules, in the package
    assert list((site / "valqd").glob("compiled__mypyc.*"))
    current = import_valqd(site)
    assert current.returncode == 0 and current.stderr == "", current.stderr
    build, queue_file, encode_file, _ = current.stdout.split()
    assert build == "compiled" and not queue_file.endswith(".py")

    with open(site / "valqd" / "resp" / "encode.py", "a") as source:
        source.write("\nEDITED = 'yes'\n")
    stale = import_valqd(site)
    assert stale.returncode == 0, stale.stderr
    build, queue_file, encode_file, edited = stale.stdout.split()
    assert (build, edited) == ("pure", "yes")
    assert queue_file.endswith("queue.py") and encode_file.endswith("encode.py")
    assert re.search(r"valqd: running pure Python: \S+/valqd/resp/encode\.py changed since "
                     r"it was compiled", stale.stderr), stale.stderr
    refused = import_valqd(site, VALQD_BUILD="compiled")
    assert refused.returncode == 1 and "encode.py changed since it was compiled" \
        in refused.stderr


def test_pure_can_be_forced_over_current_compiled_modules(tmp_path):
    if BUILD.name != "compiled":
        pytest.skip(COMPILED_RUN)
    site = copy_of_package(tmp_path, with_compiled=True)
    forced = import_valqd(site, VALQD_BUILD="pure")
    assert forced.returncode == 0 and forced.stderr == "", forced.stderr
    build, queue_file, encode_file, _ = forced.stdout.split()
    assert build == "pure" and queue_file.endswith(".py") and encode_file.endswith(".py")


def test_fast_suites_pass_on_the_pure_build():
    """CI's run is compiled; the tests of the compiled modules run again on the pure build
    (VALQD_BUILD=pure: the .py files beside the compiled modules), and the child run proves
    which build it ran (test_this_run_reports_its_build, and its summary line)."""
    if BUILD.name != "compiled":
        pytest.skip("this run is the pure build already; " + COMPILED_RUN)
    env = dict(CHILD_ENV, VALQD_BUILD="pure")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *FAST_SUITES,
         "tests/test_build.py::test_this_run_reports_its_build"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert "valqd build under test: pure (VALQD_BUILD=pure)" in result.stdout
