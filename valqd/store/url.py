"""`--store URL`: which Valkey deployment a front end serves its queues from. No I/O.

    valkey://[[user]:password@]host[:port][/db]     a standalone server or a primary
    valkeys://...                                   the same over TLS
    redis://..., rediss://...                       the same, as redis-py spells them
    unix://[[user]:password@]/path/to/socket[?db=n] a Unix socket
    valkey+sentinel://[...@]host:port[,host:port...]/master-name[/db]
        the primary that the sentinels at host:port,... name master-name; the user and
        password are the primary's (and its replicas'); sentinels that need their own
        take `sentinel_username=` and `sentinel_password=` options; a sentinel's port
        is 26379 unless given
    valkey+cluster://[...@]host:port[,host:port...][/db]
        a Valkey Cluster: any of its nodes as seeds (one is enough; the others are
        tried when it does not answer); `/db` where the cluster has databases (Valkey 9's
        cluster-databases)
    valkeys+..., redis+..., rediss+...                  the same, over TLS or as spelled
                                                        by redis clients

TLS takes two query options: `tls_ca_cert_file=PATH` (the CAs that sign the server's
certificate; default: the system's) and `tls_verify=no` (no verification, for tests only).
Passwords and user names may be percent-encoded, as in every client's URL.
"""

from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
PLAIN_SCHEMES = {"valkey": False, "redis": False, "valkeys": True, "rediss": True}
SENTINEL_SCHEMES = ("valkey+sentinel", "redis+sentinel", "valkeys+sentinel", "rediss+sentinel")
CLUSTER_SCHEMES = ("valkey+cluster", "redis+cluster", "valkeys+cluster", "rediss+cluster")
TLS_OPTIONS = ("tls_ca_cert_file", "tls_verify")
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True)
class StoreUrl:
    """One parsed `--store` URL. `kind` is standalone, sentinel or cluster; `hosts` holds
    one (host, port) for a standalone server, the seeds or sentinels otherwise."""

    kind: str
    hosts: tuple[tuple[str, int], ...] = ()
    unix_path: str = ""
    tls: bool = False
    username: str = ""
    password: str = ""
    db: int = 0
    master_name: str = ""  # sentinel only
    sentinel_username: str = ""  # the sentinels' own credentials (sentinel only)
    sentinel_password: str = ""
    tls_ca_cert_file: str = ""
    tls_verify: bool = True
    text: str = field(default="", compare=False)  # the URL with the password masked

    @property
    def address(self) -> str:
        """Where it connects, for logs and errors: host:port or the socket's path."""
        if self.unix_path:
            return self.unix_path
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)


def _db(text: str, url: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise ValueError(f"store URL {url!r}: the database must be a number, not {text!r}")
    return int(text)


def _hosts(netloc: str, url: str,
           default_port: int = DEFAULT_PORT) -> tuple[tuple[str, int], ...]:
    hosts = []
    for part in netloc.split(","):
        if part.startswith("["):  # [ipv6]:port
            host, _, rest = part[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_text = part.partition(":")
        if not host:
            raise ValueError(f"store URL {url!r} names no host")
        port = default_port
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"store URL {url!r}: bad port {port_text!r}")
            port = int(port_text)
        hosts.append((host, port))
    return tuple(hosts)


def _masked(url: str, password: str) -> str:
    return url.replace(":" + password + "@", ":***@") if password else url


def parse_store_url(url: str) -> StoreUrl:
    """The StoreUrl of `url`; ValueError saying what is wrong."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    known = (*PLAIN_SCHEMES, "unix", *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)
    if not sep or scheme not in known:
        raise ValueError(f"store URL {url!r} must start with valkey://, valkeys://, redis://, "
                         "rediss:// or unix:// (valkey://[user:password@]host:port[/db])")
    credentials, at, location = rest.rpartition("@")
    if not at:
        credentials, location = "", rest
    username, _, password = credentials.partition(":")
    username, password = unquote(username), unquote(password)
    location, _, query_text = location.partition("?")
    query = {k: v[-1] for k, v in parse_qs(query_text, keep_blank_values=True).items()}
    unknown = set(query) - {*TLS_OPTIONS, "db",
                            *(SENTINEL_OPTIONS if scheme in SENTINEL_SCHEMES else ())}
    if unknown:
        raise ValueError(f"store URL {_masked(url, password)!r}: unknown option "
                         f"{sorted(unknown)[0]!r}")
    tls = PLAIN_SCHEMES.get(scheme.split("+")[0], False)
    common = dict(username=username, password=password, tls=tls,
                  tls_ca_cert_file=query.get("tls_ca_cert_file", ""),
                  tls_verify=query.get("tls_verify", "yes").lower() not in ("no", "0", "false"),
                  text=_masked(url, password))
    if scheme == "unix":
        path = urlsplit("unix://" + location).path if location.startswith("/") else location
        if not path:
            raise ValueError(f"store URL {url!r} names no socket path")
        return StoreUrl("standalone", unix_path=path, db=_db(query.get("db", "0"), url),
                        **common)  # type: ignore[arg-type]
    netloc, _, path = location.partition("/")
    if scheme in SENTINEL_SCHEMES:
        master, _, db_text = path.partition("/")
        if not master:
            raise ValueError(f"store URL {url!r}: a Sentinel URL names the master after the "
                             "sentinels: valkey+sentinel://host:26379,host:26380/mymaster")
        sentinel_password = query.get("sentinel_password", "")
        if sentinel_password:
            common["text"] = str(common["text"]).replace(
                "sentinel_password=" + sentinel_password, "sentinel_password=***")
        return StoreUrl("sentinel", _hosts(netloc, url, DEFAULT_SENTINEL_PORT), master_name=unquote(master),
                        db=_db(db_text, url) if db_text else 0,
                        sentinel_username=query.get("sentinel_username", ""),
                        sentinel_password=sentinel_password,
                        **common)  # type: ignore[arg-type]
    if scheme in CLUSTER_SCHEMES:
        db_text = path.strip("/")
        return StoreUrl("cluster", _hosts(netloc, url), db=_db(db_text, url) if db_text else 0,
                        **common)  # type: ignore[arg-type]
    hosts = _hosts(netloc, url)
    if len(hosts) != 1:
        raise ValueError(f"store URL {url!r}: one host for a standalone server (several are "
                         "a Sentinel or cluster URL: valkey+sentinel://, valkey+cluster://)")
    db_text = path.strip("/") or query.get("db", "0")
    return StoreUrl("standalone", hosts, db=_db(db_text, url), **common)  # type: ignore[arg-type]
