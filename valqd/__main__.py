"""`valqd` / `python -m valqd`: parse the configuration, run the server until stopped.
`valqd check-aof`, `valqd worker`, `valqd healthcheck` and `valqd load-functions` are
subcommands."""

import argparse
import asyncio
import fcntl
import logging
import os
import sys
from typing import Callable

from . import BUILD, __version__, healthcheck, logs
from .config import SETTINGS, Config, parse_command_line
from .persistence.format import AofCorruption
from .persistence.loader import check_aof
from .server import Server

def setup_logging(config: Config) -> None:
    logger = logs.setup("valqd", str(config["loglevel"]), str(config["log-format"]),
                        str(config["logfile"]))
    config.on_change["loglevel"] = lambda level: logger.setLevel(logs.LEVELS[str(level)])


def log_configuration(config: Config) -> None:
    """Which file the settings came from (notice), those that differ from the defaults
    (verbose) and every setting (debug), secrets masked."""
    log = logging.getLogger("valqd")
    log.info("Configuration loaded from %s" % config.path if config.path else
             "No config file specified, using the defaults and the command line")
    if log.isEnabledFor(logs.VERBOSE):
        defaults = Config()
        changed = [f"{s.name}={config.render(s.name)}" for s in SETTINGS
                   if config.render(s.name) != defaults.render(s.name)]
        log.log(logs.VERBOSE, "Settings that differ from the defaults: %s",
                " ".join(changed) or "none")
        if config.renames:
            log.log(logs.VERBOSE, "Renamed commands: %s", " ".join(
                f"{old}->{new or '(disabled)'}" for old, new in config.renames.items()))
    if log.isEnabledFor(logging.DEBUG):
        log.debug("Every setting: %s",
                  " ".join(f"{s.name}={config.render(s.name)}" for s in SETTINGS))


async def run(config: Config, loop_name: str) -> None:
    server = Server(config)
    await server.start()
    if server.stopping:  # asked to stop while loading
        await server.serve_until_stopped()
        return
    logging.getLogger("valqd").info(
        "valqd %s ready to accept connections on %s %s, pid %d, %s event loop, %s build",
        __version__, config["bind"], server.ports_text(), os.getpid(), loop_name, BUILD.name)
    await server.serve_until_stopped()


def loop_factory(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """`event-loop`: uvloop (the `fast` extra) runs valqd's callbacks with less overhead per
    command; `auto` takes it when it is installed."""
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("valqd: event-loop uvloop needs `pip install valqd[fast]`")
        else:
            return uvloop.new_event_loop, "uvloop"
    return None, "asyncio"


def check_aof_main(args: list[str]) -> int:
    """valqd check-aof [--fix [--yes]] FILE"""
    fix, yes = "--fix" in args, "--yes" in args
    files = [a for a in args if a not in ("--fix", "--yes")]
    if len(files) != 1 or any(a.startswith("-") for a in files) or (yes and not fix):
        print("Usage: valqd check-aof [--fix [--yes]] FILE", file=sys.stderr)
        return 2
    return check_aof(files[0], fix, yes)


LOCK_FILE = "valqd.lock"


def lock_directory(directory: str) -> int:
    """Hold an exclusive lock on `directory`'s lock file for the life of the process (two
    servers appending to one AOF corrupt it); the lock file says which pid holds it.
    Raises OSError naming the holder when another process has it."""
    path = os.path.join(directory, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise OSError(f"the data directory {directory} is in use by another valqd "
                      f"(pid {holder}, which holds the lock on {path})") from None
    os.ftruncate(fd, 0)
    os.write(fd, b"%d\n" % os.getpid())
    return fd


def worker_main(args: list[str]) -> int:
    """valqd worker MODULE:NAME [--queue Q ...] [--concurrency N] [--url URL] [--grace S]
    [--loglevel L]: exit code 0 after a clean stop, 1 after a forced one or an error, 2 on
    bad usage."""
    parser = argparse.ArgumentParser(
        prog="valqd worker", description="Run handlers over the messages of valqd queues.")
    parser.add_argument("target", metavar="MODULE:NAME",
                        help="a handler function (handles every --queue) or a Worker")
    parser.add_argument("--queue", action="append", default=[], metavar="Q",
                        help="a queue to serve (repeat for more; the first with a message "
                             "is served first); with a Worker, only these of its queues")
    parser.add_argument("--concurrency", type=int, metavar="N",
                        help="messages in flight at once, over every queue (default 8)")
    parser.add_argument("--url", help="valkey://[user:password@]host:port/db, valkeys:// for "
                                      "TLS (default $VALQD_URL or valkey://127.0.0.1:7400)")
    parser.add_argument("--grace", type=float, metavar="S",
                        help="seconds a stop waits for running handlers (default 30)")
    parser.add_argument("--loglevel", choices=list(logs.LEVELS), default="notice")
    options = parser.parse_args(args)
    if options.concurrency is not None and options.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    try:
        from .worker import WorkerError, load_worker
    except ImportError as exc:
        print(f"valqd worker: {exc}", file=sys.stderr)
        return 2
    logger = logs.setup("valqd.worker", options.loglevel, role="W")
    try:
        worker = load_worker(options.target, options.queue, url=options.url,
                             concurrency=options.concurrency, grace=options.grace)
    except (WorkerError, ValueError) as exc:
        print(f"valqd worker: {exc}", file=sys.stderr)
        return 2
    try:
        return worker.run()
    except (WorkerError, ValueError) as exc:
        logger.error("%s", exc)
        return 1


def load_functions_main(args: list[str]) -> int:
    """valqd load-functions URL: load (or upgrade) the valq library into the Valkey server
    of URL, for programs that call it with FCALL; 0 when loaded, 1 when it failed (a newer
    library there, the server unreachable), 2 on bad usage."""
    if len(args) != 1 or args[0].startswith("-"):
        print("Usage: valqd load-functions URL   (valkey://[user:password@]host:port[/db], "
              "valkeys://, redis://, rediss://, unix:///path, "
              "valkey+cluster://host:port[,...], valkey+sentinel://host:port[,...]/master)",
              file=sys.stderr)
        return 2
    from .store.url import parse_store_url
    from .store.valkey import LibraryError
    from .store.valkey.connection import StoreUnavailable
    from .store.valkey.store import deployment_client, load_library, node_calls
    try:
        url = parse_store_url(args[0])
    except ValueError as exc:
        print(f"valqd load-functions: {exc}", file=sys.stderr)
        return 2

    async def load() -> int:
        """On every primary of a cluster, or the one primary there is."""
        client = deployment_client(url, url.db, 5.0, "valqd-load-functions")
        try:
            await client.connect()
            return min([await load_library(call) for call in node_calls(client)])
        finally:
            await client.close()

    try:
        version = asyncio.run(load())
    except (LibraryError, StoreUnavailable, OSError) as exc:
        print(f"valqd load-functions: {exc}", file=sys.stderr)
        return 1
    print(f"valq library version {version} loaded into {url.address}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["load-functions"]:
        return load_functions_main(args[1:])
    if args[:1] == ["check-aof"]:
        return check_aof_main(args[1:])
    if args[:1] == ["worker"]:
        return worker_main(args[1:])
    if args[:1] == ["healthcheck"]:
        return healthcheck.main(args[1:])
    users: list[tuple[str, int, list[bytes]]] = []
    values, renames, config_file = parse_command_line(args, users)
    config = Config(values, renames, config_file, users)
    directory = str(config["dir"])
    try:
        os.makedirs(directory, exist_ok=True)
        config.values["dir"] = os.path.abspath(directory)
    except OSError as exc:
        print(f"valqd: can't use dir {directory!r}: {exc.strerror}", file=sys.stderr)
        return 1
    setup_logging(config)
    log_configuration(config)
    factory, loop_name = loop_factory(str(config["event-loop"]))
    try:
        if config["appendonly"] == "yes" and not config.str("store"):  # else no AOF here
            lock_directory(str(config["dir"]))
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(run(config, loop_name))
    except (OSError, ValueError) as exc:  # the port is taken, TLS files that do not work, ...
        logging.getLogger("valqd").error("Could not start: %s", exc)
        return 1
    except AofCorruption as exc:
        logging.getLogger("valqd").error("%s. Run 'valqd check-aof --fix %s' to cut the file "
                                         "at that offset (it asks first, and keeps what it "
                                         "cuts in a backup file).", exc, exc.path)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
