"""Every setting valqd has, in one table: command-line flags, the config file, CONFIG GET/SET.

A config file holds `name value` lines as valkey.conf does (`#` starts a comment; values
may be quoted), plus `rename-command NAME NEWNAME` lines (an empty new name disables the
command) and `user NAME RULE ...` lines (ACL users, as in valkey.conf). Flags use the same
names (`--port 7400`, `--rename-command FLUSHALL ""`, `--user "alice on >pw +@read"`);
flags win over the file.
"""

import argparse
import os
from dataclasses import dataclass
from typing import Callable, Mapping

from . import BUILD, __version__
from .errors import CommandError
from .resp import split_inline

MAX_DATABASES = 4096  # an engine each: Valkey allows more, valqd sizes them up front
LOGLEVELS = ("debug", "verbose", "notice", "warning", "nothing")


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str
    kind: str = "str"  # str | int | port | enum | memory (bytes, Valkey's units) | secret | buffers
    choices: tuple[str, ...] = ()
    low: int = 0
    high: int = 2**63 - 1
    mutable: bool = False  # CONFIG SET may change it while running

    def parse(self, raw: str, current: object = None) -> object:
        """The value of `raw`; ValueError in Valkey's words. `current` is the value it
        replaces (output buffer limits change only the classes `raw` names)."""
        if self.kind == "port" and raw.strip().lower() == "auto":
            return AUTO_PORT
        if self.kind in ("int", "memory", "port"):
            if self.kind == "memory":
                value = parse_memory(raw)
            else:
                try:
                    value = int(raw)
                except ValueError:
                    raise ValueError("argument couldn't be parsed into an integer") from None
            if not self.low <= value <= self.high:
                raise ValueError(f"argument must be between {self.low} and {self.high} inclusive")
            return value
        if self.kind == "buffers":
            return parse_output_limits(raw, None if current is None else output_limits(current))
        if self.kind == "enum":
            if raw.lower() not in self.choices:
                raise ValueError(f"argument(s) must be one of the following: "
                                 f"{', '.join(self.choices)}")
            return raw.lower()
        return raw


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2,
          "g": 1000**3, "gb": 1024**3}


def parse_memory(raw: str) -> int:
    """`64mb`, `1gb`, `100` (bytes): Valkey's memory units."""
    text = raw.strip().lower()
    digits = text.rstrip("kmgb")
    unit = text[len(digits):]
    if not digits.isdigit() or not digits.isascii() or unit not in _UNITS:
        raise ValueError("argument must be a memory value")
    return int(digits) * _UNITS[unit]


OUTPUT_CLASSES = ("normal", "replica", "pubsub")


OutputLimits = dict[str, tuple[int, int, int]]  # client class -> (hard, soft, soft seconds)


def int_value(value: object) -> int:
    """The value of an `int`, `memory` or `port` setting, as its parser made it."""
    assert isinstance(value, int)
    return value


def output_limits(value: object) -> OutputLimits:
    """The value of a `buffers` setting, as its parser made it."""
    assert isinstance(value, dict)
    return value


def parse_output_limits(raw: str, base: OutputLimits | None = None) -> OutputLimits:
    """`normal 256mb 64mb 60 pubsub 32mb 8mb 60`: per client class a hard limit, a soft
    limit and how many seconds the soft limit may be exceeded."""
    words = raw.split()
    if not words or len(words) % 4:
        raise ValueError("wrong number of arguments in buffer limit configuration")
    limits = dict(base or OUTPUT_LIMIT_DEFAULTS)
    for i in range(0, len(words), 4):
        kind = {"slave": "replica"}.get(words[i].lower(), words[i].lower())
        if kind not in OUTPUT_CLASSES:
            raise ValueError("Invalid client class specified in buffer limit configuration")
        try:
            seconds = int(words[i + 3])
        except ValueError:
            raise ValueError("Error in soft_seconds setting in buffer limit configuration") from None
        limits[kind] = (parse_memory(words[i + 1]), parse_memory(words[i + 2]), seconds)
    return limits


def render_output_limits(limits: OutputLimits) -> str:
    return " ".join(f"{kind} {hard} {soft} {seconds}"
                    for kind, (hard, soft, seconds) in limits.items())


OUTPUT_LIMIT_DEFAULTS = {"normal": (256 << 20, 64 << 20, 60), "replica": (256 << 20, 64 << 20, 60),
                         "pubsub": (32 << 20, 8 << 20, 60)}
YES_NO = ("yes", "no")
AUTO_PORT = -1  # `auto`: the system picks a free port; the startup line and INFO show it
SETTINGS: tuple[Setting, ...] = (
    Setting("port", "7400", "TCP port for plain RESP (0: none, TLS only, as in Valkey; auto: "
            "a free port the system picks, named in the startup line)", "port", high=65535),
    Setting("bind", "127.0.0.1", "address to listen on"),
    Setting("dir", ".", "working directory, where persistence files live"),
    Setting("loglevel", "notice", "how much to log", "enum", LOGLEVELS, mutable=True),
    Setting("logfile", "", "log to this file instead of standard error"),
    Setting("log-format", "valkey", "log lines as Valkey writes them, or as JSON objects "
            "(ts, pid, role, level, msg), one a line", "enum", ("valkey", "json")),
    Setting("event-loop", "auto", "asyncio, or uvloop (`pip install valqd[fast]`); auto takes "
            "uvloop when it is installed", "enum", ("auto", "asyncio", "uvloop")),
    Setting("lean-path", "yes", "serve the usual forms of VALQ PUSH, POP, ACK, EXTEND and NACK "
            "on a shorter path that skips the checks they cannot fail (no: every command "
            "through the general dispatcher; the replies are the same)", "enum",
            ("yes", "no"), mutable=True),
    Setting("requirepass", "", "password every client must give with AUTH (empty: none); "
            "never shown by CONFIG GET; also from the environment variable "
            "VALQD_REQUIREPASS", "secret", mutable=True),
    Setting("requirepass-file", "", "read requirepass from this file, its first line (a "
            "Docker or Kubernetes secret), so that no command line shows it"),
    Setting("aclfile", "", "file of ACL users (`user alice on #<sha256> ~jobs:* +@read`) that "
            "ACL LOAD reads and ACL SAVE writes; loaded at start (empty: users come from "
            "`user` lines of the config file)"),
    Setting("acllog-max-len", "128", "entries the ACL LOG keeps", "int", mutable=True),
    Setting("protected-mode", "yes", "with no password, refuse clients that are not on the "
            "loopback interface", "enum", YES_NO, mutable=True),
    Setting("databases", "16", "numbered databases, each its own set of queues (SELECT)",
            "int", low=1, high=MAX_DATABASES),
    Setting("maxclients", "10000", "most client connections at once", "int", low=1,
            mutable=True),
    Setting("tcp-backlog", "511", "connections the kernel queues before valqd accepts them "
            "(as Valkey; the kernel caps it at net.core.somaxconn)", "int", high=65535),
    Setting("timeout", "0", "close a client idle for this many seconds (0: never; blocked "
            "and subscribed clients are never idle)", "int", mutable=True),
    Setting("client-output-buffer-limit", render_output_limits(OUTPUT_LIMIT_DEFAULTS),
            "per client class: hard limit, soft limit, soft seconds of unread replies before "
            "the client is disconnected (normal clients have a limit, unlike Valkey's 0 0 0)",
            "buffers", mutable=True),
    Setting("client-query-buffer-limit", "1gb", "largest request being received", "memory",
            low=1 << 20, mutable=True),  # Valkey's minimums: below, no client gets in
    Setting("proto-max-bulk-len", "512mb", "largest single argument", "memory",
            low=1 << 20, mutable=True),
    Setting("max-message-size", "1mb", "largest message body PUSH accepts", "memory",
            mutable=True),
    Setting("maxmemory", "0", "refuse commands that add data above this much memory (0: no "
            "limit); pops, acks and deletes keep working", "memory", mutable=True),
    Setting("tls-port", "0", "also accept TLS connections on this port (0: off; auto: a "
            "free port the system picks)", "port", high=65535),
    Setting("tls-cert-file", "", "server certificate (PEM) for TLS"),
    Setting("tls-key-file", "", "private key (PEM) of the server certificate"),
    Setting("tls-ca-cert-file", "", "CA certificates (PEM) that sign client certificates"),
    Setting("tls-auth-clients", "yes", "whether TLS clients must present a certificate",
            "enum", ("yes", "no", "optional")),
    Setting("slowlog-log-slower-than", "10000", "log commands slower than this many "
            "microseconds (negative: none, 0: all)", "int", low=-1, mutable=True),
    Setting("slowlog-max-len", "128", "entries the slow log keeps", "int", mutable=True),
    Setting("http-port", "0", "serve the JSON API, the dashboard and Prometheus /metrics "
            "over HTTP on this port (0: off; auto: a free port the system picks); "
            "`metrics-port` is another name for it", "port", high=65535),
    Setting("http-bind", "127.0.0.1", "addresses the HTTP listener binds (loopback unless "
            "told otherwise)"),
    Setting("http-timeout", "10", "seconds a client may take to send a whole HTTP request, "
            "and may stay idle between requests, before it is disconnected", "int", low=1,
            high=86400, mutable=True),
    Setting("http-max-request-size", "8mb", "largest HTTP request body", "memory",
            low=1024, mutable=True),
    Setting("metrics-queue-series", "100", "/metrics has series per queue for at most this "
            "many queues, the first in name order (totals always)", "int", mutable=True),
    Setting("save", "", "snapshot rules; valqd persists with the AOF only, so always empty "
            "(Valkey tools read it)", "enum", ("",)),
    Setting("store", "", "where the queues live: empty for the embedded engine and its AOF, "
            "or a Valkey URL (valkey://[user:password@]host:port[/db], valkeys:// for TLS, "
            "redis://, rediss://, unix:///path; valkey+cluster://host:port[,...][/db], "
            "valkey+sentinel://host:port[,...]/master[/db]) whose valq library serves them; "
            "see README, Running on Valkey"),
    Setting("store-timeout", "5000", "milliseconds a command waits for an unreachable store "
            "before it is answered -TRYAGAIN", "int", low=1, high=3_600_000),
    Setting("store-wait-replicas", "0", "with a store: reply to a write only once this many "
            "replicas have it (Valkey's WAIT, one per event-loop turn for every write of the "
            "turn); 0: as soon as the primary applied it", "int", low=0, high=1000),
    Setting("store-wait-timeout", "1000", "milliseconds store-wait-replicas waits; a write "
            "fewer replicas acknowledged in time is answered -NOREPLICAS (it was applied)",
            "int", low=1, high=3_600_000),
    Setting("store-wait-aof", "no", "with a store: reply to a write only once the primary's "
            "AOF (and store-wait-replicas replicas' AOFs) fsynced it (Valkey's WAITAOF, one "
            "per event-loop turn), else -NOREPLICAS after store-wait-timeout", "enum", YES_NO),
    Setting("appendonly", "yes", "persist every change to the append-only file", "enum",
            YES_NO),
    Setting("appendfilename", "appendonly.aof", "name of the append-only file, in dir"),
    Setting("appendfsync", "everysec", "when to fsync the AOF", "enum",
            ("always", "everysec", "no"), mutable=True),
    Setting("aof-load-truncated", "yes", "start even if the AOF's last batch was cut short",
            "enum", YES_NO, mutable=True),
    Setting("auto-aof-rewrite-percentage", "100", "rewrite when the AOF grew by this percent "
            "since the last rewrite (0: never)", "int", mutable=True),
    Setting("auto-aof-rewrite-min-size", "64mb", "no automatic rewrite below this size",
            "memory", mutable=True),
)
ALIASES = {"metrics-port": "http-port"}  # older names a flag or config file may use
BY_NAME = {s.name: s for s in SETTINGS}


class Config:
    def __init__(self, overrides: dict[str, str] | None = None,
                 renames: dict[str, str] | None = None, path: str = "",
                 users: list[tuple[str, int, list[bytes]]] | None = None) -> None:
        self.values: dict[str, object] = {s.name: s.parse(s.default) for s in SETTINGS}
        self.on_change: dict[str, Callable[[object], None]] = {}
        # CONFIG SET asks these before it changes anything: ValueError refuses the value
        self.checks: dict[str, Callable[[object], None]] = {}
        self.renames = dict(renames or {})  # command -> new name ("" disables it)
        self.path = os.path.abspath(path) if path else ""  # the config file, for REWRITE
        # `user` lines of the config file and --user flags: (source, line number, words)
        self.users = list(users or [])
        for name, raw in (overrides or {}).items():
            setting = BY_NAME[ALIASES.get(name, name)]
            self.values[setting.name] = setting.parse(raw)
        self.asked = dict(self.values)  # as started, before the server fills in `auto` ports

    def __getitem__(self, name: str) -> object:
        return self.values[name]

    def render(self, name: str) -> str:
        kind = BY_NAME[name].kind
        value = self.values[name]
        if kind == "secret":
            return "********" if value else ""
        if kind == "buffers":
            return render_output_limits(output_limits(value))
        if kind == "port" and value == AUTO_PORT:
            return "auto"
        return str(value)

    def set(self, name: str, raw: str) -> None:
        """CONFIG SET one value; raises CommandError in Valkey's words."""
        self.set_many([(name, raw)])

    def set_many(self, pairs: list[tuple[str, str]]) -> None:
        """CONFIG SET name value [name value ...]: every name is checked, then every value
        parsed, before anything changes (as Valkey, all or nothing); CommandError in
        Valkey's words."""
        settings, seen = [], set()
        for name, _ in pairs:
            setting = BY_NAME.get(name.lower())
            if setting is None:
                raise CommandError(
                    f"Unknown option or number of arguments for CONFIG SET - '{name}'")
            problem = ("can't set immutable config" if not setting.mutable else
                       "duplicate parameter" if setting.name in seen else None)
            if problem:
                raise CommandError(f"CONFIG SET failed (possibly related to argument "
                                   f"'{name}') - {problem}")
            seen.add(setting.name)
            settings.append(setting)
        values = []
        for setting, (name, raw) in zip(settings, pairs):
            try:
                values.append(setting.parse(raw, self.values[setting.name]))
                check = self.checks.get(setting.name)
                if check is not None:
                    check(values[-1])
            except ValueError as exc:
                raise CommandError(f"CONFIG SET failed (possibly related to argument "
                                   f"'{name}') - {exc}") from None
        for setting, value in zip(settings, values):
            self.values[setting.name] = value
            hook = self.on_change.get(setting.name)
            if hook is not None:
                hook(value)


    def rewrite(self) -> None:
        """CONFIG REWRITE, as Valkey does it: the file the server started with gets the
        current value of each setting on the line that set it (repeats of a setting are
        dropped), comments and other lines stay as they are, and settings that differ from
        their defaults but had no line are added at the end. The new file replaces the old
        one in one rename. CommandError in Valkey's words."""
        if not self.path:
            raise CommandError("The server is running without a config file")
        try:
            with open(self.path, "rb") as f:
                old_lines = f.read().decode("utf-8", "surrogateescape").splitlines()
        except FileNotFoundError:
            old_lines = []  # as Valkey: a file removed meanwhile is written anew
        except OSError as exc:
            raise CommandError(f"Rewriting config file: {exc.strerror}") from None
        lines, written = [], set()
        for line in old_lines:
            name = _directive(line)
            if name not in BY_NAME:
                lines.append(line)  # comments, blank lines, rename-command, ...
            elif name not in written:
                written.add(name)
                lines.append(self._file_line(name))
        if self.values["requirepass-file"]:  # the password stays in its own file
            written.add("requirepass")
        added = [s.name for s in SETTINGS if s.name not in written
                 and self.values[s.name] != s.parse(s.default)]
        if added and REWRITE_MARK not in lines:
            lines.append(REWRITE_MARK)
        lines += (self._file_line(name) for name in added)
        text = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")
        try:
            _replace_file(self.path, text)
        except OSError as exc:
            raise CommandError(f"Rewriting config file: {exc.strerror}") from None

    def _file_line(self, name: str) -> str:
        """`name value` as the config file holds it (output buffer limits as several words,
        the password in clear, as Valkey writes them; a port asked for as `auto` stays
        `auto`, not the port it got this time)."""
        value = self.values[name]
        if BY_NAME[name].kind == "port" and self.asked.get(name) == AUTO_PORT:
            return f"{name} auto"
        if BY_NAME[name].kind == "buffers":
            return f"{name} {render_output_limits(output_limits(value))}"
        return f"{name} {_quoted(str(value))}"

    # Last in the class: below these two, `int` and `str` in an annotation of the class body
    # would name the methods, not the types.
    def int(self, name: str) -> int:
        return int_value(self.values[name])

    def str(self, name: str) -> str:
        return str(self.values[name])


REWRITE_MARK = "# Generated by CONFIG REWRITE"


def _directive(line: str) -> str:
    """The lower-case first word of a config-file line ("" for blanks and comments)."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return ""
    return stripped.split(None, 1)[0].lower()


def _quoted(text: str) -> str:
    """A value as one word of a config-file line, quoted (as split_inline reads it back)
    when it is empty or holds spaces, quotes, backslashes or control characters."""
    if text and all(c.isprintable() and c not in " \"'\\" for c in text):
        return text
    out = []
    for c in text:
        if c in "\"\\":
            out.append("\\" + c)
        elif c.isprintable():
            out.append(c)
        else:
            out += ("\\x%02x" % b for b in c.encode())
    return '"' + "".join(out) + '"'


def _replace_file(path: str, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, keep the old file's mode
    and rename it over `path`: a crash leaves the old file or the new one, never half."""
    temporary = f"{path}.rewrite-{os.getpid()}"
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def reference() -> str:
    """The README's settings table, in Markdown."""
    lines = ["| setting | default | CONFIG SET | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        bar = " \\| "
        choices = f" ({bar.join(s.choices)})" if s.kind == "enum" and all(s.choices) else ""
        default = f"`{s.default}`" if s.default else '`""`'
        lines.append(f"| `{s.name}` | {default} | {'yes' if s.mutable else 'no'} | "
                     f"{s.help}{choices} |")
    return "\n".join(lines)


def read_config_file(path: str, renames: dict[str, str] | None = None,
                     users: list[tuple[str, int, list[bytes]]] | None = None) -> dict[str, str]:
    """The file's settings; `rename-command` lines go into `renames`, `user` lines (as
    (path, line number, words)) into `users`."""
    values: dict[str, str] = {}
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise SystemExit(f"valqd: can't read config file {path}: {exc.strerror}") from None
    with f:
        for number, raw_line in enumerate(f, 1):
            line = raw_line.strip()
            if not line or line.startswith(b"#"):
                continue
            try:
                raw_words = split_inline(line)
                words = [w.decode() for w in raw_words]
            except Exception:
                raise SystemExit(f"{path}:{number}: unbalanced quotes") from None
            if words[0].lower() == "user" and users is not None:
                users.append((path, number, [b"user", *raw_words[1:]]))
                continue
            if len(words) == 3 and words[0].lower() == "rename-command" and renames is not None:
                renames[words[1].lower()] = words[2].lower()
                continue
            words[0] = ALIASES.get(words[0].lower(), words[0])
            setting = BY_NAME.get(words[0].lower())
            if len(words) > 2 and setting is not None and setting.kind == "buffers":
                words = [words[0], " ".join(words[1:])]
            if len(words) != 2 or words[0].lower() not in BY_NAME:
                raise SystemExit(f"{path}:{number}: bad directive or wrong number of arguments: "
                                 f"{line.decode(errors='replace')}")
            values[words[0].lower()] = words[1]
    return values


def parse_command_line(argv: list[str], users: list[tuple[str, int, list[bytes]]] | None = None,
                       environ: Mapping[str, str] = os.environ,
                       ) -> tuple[dict[str, str], dict[str, str], str]:
    """Flags and `--config FILE` merged: ({setting: raw value}, {command: new name}, the
    config file or ""); the config file's `user` lines and `--user` flags go into `users`,
    as (source, line number, words). The password comes from `requirepass`, else from the
    file `requirepass-file` names, else from VALQD_REQUIREPASS in `environ`."""
    parser = argparse.ArgumentParser(
        prog="valqd", description="A job-queue server speaking RESP and the VALQ commands.")
    parser.add_argument("--version", action="version",
                        version=f"valqd {__version__} {BUILD.describe()}")
    parser.add_argument("--config", metavar="FILE",
                        help="valkey.conf-style file of 'name value' lines")
    parser.add_argument("--rename-command", nargs=2, action="append", default=[],
                        metavar=("COMMAND", "NEWNAME"),
                        help="rename a command; an empty new name disables it")
    parser.add_argument("--user", action="append", default=[], metavar="RULES",
                        help='an ACL user, as a config file\'s user line: "alice on >pw '
                        '~jobs:* +@read"')
    for s in SETTINGS:
        choices = f" ({'|'.join(s.choices)})" if s.choices else ""
        aliases = [f"--{alias}" for alias, name in ALIASES.items() if name == s.name]
        parser.add_argument(f"--{s.name}", *aliases, metavar="VALUE", dest=s.name,
                            help=f"{s.help}{choices}; default {s.default!r}")
    options = parser.parse_args(argv)
    renames: dict[str, str] = {}
    if users is None:
        users = []
    values = read_config_file(options.config, renames, users) if options.config else {}
    for number, rules in enumerate(options.user, 1):
        try:
            users.append(("--user", number, [b"user", *split_inline(rules.encode())]))
        except Exception:
            parser.error(f"--user: unbalanced quotes in {rules!r}")
    for command, new_name in options.rename_command:
        renames[command.lower()] = new_name.lower()
    for s in SETTINGS:
        given = getattr(options, s.name)
        if given is not None:
            values[s.name] = given
    if values.get("requirepass-file"):
        if "requirepass" in values:
            parser.error("requirepass and requirepass-file both give the password: keep one")
        values["requirepass"] = _read_secret(values["requirepass-file"], parser)
    elif "requirepass" not in values and environ.get(REQUIREPASS_ENV):
        values["requirepass"] = environ[REQUIREPASS_ENV]
    for name, raw in values.items():
        try:
            BY_NAME[name].parse(raw)
        except ValueError as exc:
            parser.error(f"{name}: {exc}")
    if users and values.get("aclfile"):
        parser.error("Configuring users in the config file and an ACL file is not "
                     "supported: use one or the other")
    return values, renames, options.config or ""


REQUIREPASS_ENV = "VALQD_REQUIREPASS"


def read_secret_file(path: str) -> str:
    """A password file's first line, without its line end; ValueError when it cannot be read
    or holds no password."""
    try:
        with open(path, "rb") as f:
            first = f.readline(1 << 16)
    except OSError as exc:
        raise ValueError(f"can't read {path}: {exc.strerror}") from None
    password = first.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
    if not password:
        raise ValueError(f"{path} holds no password (its first line is empty)")
    return password


def _read_secret(path: str, parser: argparse.ArgumentParser) -> str:
    try:
        return read_secret_file(path)
    except ValueError as exc:
        parser.error(f"requirepass-file: {exc}")
