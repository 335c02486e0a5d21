"""The I/O kernels (lycan/sandbox/): sandboxed files, read-only SQLite, HTTP.

No test here touches the internet. HTTP refusals are checked with ``socket.getaddrinfo``
patched (and ``connect`` patched to fail the test if it is ever reached); the end-to-end
HTTP behaviour (success, redirects, size caps, timeouts, TLS) runs against a real
``http.server`` on 127.0.0.1.
"""

import http.server
import ipaddress
import json
import os
import socket
import sqlite3
import ssl
import threading
import time
import typing

import pytest

import lycan
from lycan import CapabilityError, LimitExceeded, Limits, sandbox
from lycan.capabilities import REGISTRY, RunContext
from lycan.policy import CapabilityDenied, Policy
from lycan.values import to_json


def make_policy(tmp_path, **fields):
    """policy.json in tmp_path with root tmp_path/sandbox (unless fields say otherwise)."""
    (tmp_path / "sandbox").mkdir(exist_ok=True)
    data = {"root": "sandbox", **fields}
    (tmp_path / "policy.json").write_text(json.dumps(data))
    return Policy.load(tmp_path / "policy.json")


def run(source, policy, **options):
    result = lycan.run(lycan.compile_source(source), None, policy=policy, **options)
    return to_json(result.value)


def cap(name, *arguments, policy, limits=None):
    context = RunContext(None, policy=policy, limits=limits)
    return to_json(REGISTRY[name].kernel(context, *[lycan.values.from_json(a, 64, 10**5, 10**6)
                                                    for a in arguments]))


@pytest.fixture
def box(tmp_path):
    """A sandbox with a file, a subdirectory and, next to it, a secret outside the sandbox."""
    policy = make_policy(tmp_path, read=True, write=True)
    root = tmp_path / "sandbox"
    (root / "notes.txt").write_text("hello sandbox")
    (root / "sub").mkdir()
    (root / "sub" / "deep.txt").write_text("deep")
    (tmp_path / "secret.txt").write_text("outside secret")
    return policy, root, tmp_path


# ---- files ----------------------------------------------------------------------------------

def test_read_exists_write_inside_the_sandbox(box):
    policy, root, _ = box
    assert run('(!cap "file.readText" "notes.txt")', policy) == "hello sandbox"
    assert run('(!cap "file.readText" "sub/deep.txt")', policy) == "deep"
    assert run('(A (!cap "file.exists" "notes.txt") (!cap "file.exists" "sub") '
               '(!cap "file.exists" "nope.txt") (!cap "file.exists" "no/such/dir.txt"))',
               policy) == [True, True, False, False]
    assert run('(!cap "file.writeText" "sub/out.txt" "héllo")', policy) == len("héllo".encode())
    assert (root / "sub" / "out.txt").read_text(encoding="utf-8") == "héllo"
    assert run('(!cap "file.writeText" "notes.txt" "replaced") (!cap "file.readText" "notes.txt")',
               policy) == "replaced"
    # Writes are atomic (temporary file + rename): nothing is left behind.
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt", "sub"]
    assert sorted(p.name for p in (root / "sub").iterdir()) == ["deep.txt", "out.txt"]


def test_write_replaces_the_file_rather_than_writing_through_it(box):
    policy, root, _ = box
    before = os.stat(root / "notes.txt").st_ino
    cap("file.writeText", "notes.txt", "new", policy=policy)
    assert os.stat(root / "notes.txt").st_ino != before  # renamed into place


@pytest.mark.parametrize("path", ["/etc/passwd", "../secret.txt", "sub/../../secret.txt",
                                  "sub/../notes.txt", "", "./notes.txt", "sub//deep.txt", "a\x00b"])
@pytest.mark.parametrize("kernel", ["file.exists", "file.readText", "file.writeText"])
def test_escaping_paths_are_refused(box, path, kernel):
    policy, _, tmp_path = box
    arguments = (path, "x") if kernel == "file.writeText" else (path,)
    with pytest.raises(CapabilityDenied) as caught:
        cap(kernel, *arguments, policy=policy)
    assert caught.value.capability == kernel and caught.value.argument == "path"
    assert (tmp_path / "secret.txt").read_text() == "outside secret"


def test_a_symlink_to_outside_is_refused(box):
    policy, root, tmp_path = box
    os.symlink(tmp_path / "secret.txt", root / "link.txt")
    for kernel, arguments in [("file.readText", ("link.txt",)), ("file.exists", ("link.txt",)),
                              ("file.writeText", ("link.txt", "pwned"))]:
        with pytest.raises(CapabilityDenied, match="symbolic link"):
            cap(kernel, *arguments, policy=policy)
    assert (tmp_path / "secret.txt").read_text() == "outside secret"
    assert os.path.islink(root / "link.txt")


def test_a_symlink_is_refused_even_when_it_points_inside(box):
    policy, root, _ = box
    os.symlink("notes.txt", root / "alias.txt")
    with pytest.raises(CapabilityDenied, match="symbolic link"):
        cap("file.readText", "alias.txt", policy=policy)


def test_a_symlinked_directory_component_is_refused(box):
    policy, root, tmp_path = box
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.txt").write_text("outside")
    os.symlink(tmp_path / "elsewhere", root / "door")
    for kernel, arguments in [("file.readText", ("door/x.txt",)), ("file.exists", ("door/x.txt",)),
                              ("file.writeText", ("door/new.txt", "pwned"))]:
        with pytest.raises(CapabilityDenied, match="'door' is a symbolic link"):
            cap(kernel, *arguments, policy=policy)
    assert sorted(os.listdir(tmp_path / "elsewhere")) == ["x.txt"]


def test_special_files_and_directories_are_not_read(box):
    policy, root, _ = box
    os.mkfifo(root / "pipe")
    started = time.monotonic()
    with pytest.raises(CapabilityDenied, match="special file"):
        cap("file.readText", "pipe", policy=policy)
    with pytest.raises(CapabilityDenied, match="special file"):
        cap("file.exists", "pipe", policy=policy)
    with pytest.raises(CapabilityDenied, match="special file"):
        cap("file.writeText", "pipe", "x", policy=policy)
    assert time.monotonic() - started < 1  # never blocked opening the FIFO
    with pytest.raises(CapabilityDenied, match="a directory, not a regular file"):
        cap("file.readText", "sub", policy=policy)
    with pytest.raises(CapabilityError, match="not a directory"):
        cap("file.readText", "notes.txt/x", policy=policy)


def test_flags_are_needed(tmp_path):
    policy = make_policy(tmp_path, read=True)
    (tmp_path / "sandbox" / "a.txt").write_text("a")
    with pytest.raises(CapabilityDenied, match="file.writeText: denied: the policy does not set 'write'"):
        run('(!cap "file.writeText" "a.txt" "b")', policy)
    assert (tmp_path / "sandbox" / "a.txt").read_text() == "a"
    write_only = make_policy(tmp_path, write=True)
    for source in ['(!cap "file.readText" "a.txt")', '(!cap "file.exists" "a.txt")']:
        with pytest.raises(CapabilityDenied, match="does not set 'read'"):
            run(source, write_only)
    no_root = Policy.from_dict({"read": True, "write": True})
    with pytest.raises(CapabilityDenied, match="no root"):
        run('(!cap "file.readText" "a.txt")', no_root)


def test_the_policy_file_is_never_written(tmp_path):
    # The sandbox is the capsule's own directory, which holds policy.json.
    (tmp_path / "policy.json").write_text(json.dumps({"root": ".", "read": True, "write": True}))
    policy = Policy.load(tmp_path / "policy.json")
    original = (tmp_path / "policy.json").read_text()
    with pytest.raises(CapabilityDenied, match="policy file"):
        run('(!cap "file.writeText" "policy.json" "{\\"hosts\\": [\\"*.com\\"]}")', policy)
    assert (tmp_path / "policy.json").read_text() == original
    # Nor through a hard link to it.
    os.link(tmp_path / "policy.json", tmp_path / "other.json")
    with pytest.raises(CapabilityDenied, match="policy file"):
        cap("file.writeText", "other.json", "{}", policy=policy)
    assert (tmp_path / "policy.json").read_text() == original
    # Reading it, and writing other files, is fine.
    assert json.loads(cap("file.readText", "policy.json", policy=policy))["write"] is True
    assert cap("file.writeText", "state.json", "{}", policy=policy) == 2


def test_a_policy_outside_the_sandbox_is_out_of_reach(box):
    policy, _, tmp_path = box
    original = (tmp_path / "policy.json").read_text()
    with pytest.raises(CapabilityDenied, match="holds '..'"):
        cap("file.writeText", "../policy.json", "{}", policy=policy)
    with pytest.raises(CapabilityDenied, match="absolute"):
        cap("file.writeText", str(tmp_path / "policy.json"), "{}", policy=policy)
    assert (tmp_path / "policy.json").read_text() == original


def test_size_caps(tmp_path):
    policy = make_policy(tmp_path, read=True, write=True, limits={"file_max_bytes": 10})
    root = tmp_path / "sandbox"
    (root / "ten.txt").write_text("0123456789")
    (root / "eleven.txt").write_text("0123456789A")
    assert cap("file.readText", "ten.txt", policy=policy) == "0123456789"
    with pytest.raises(CapabilityError, match="more than file_max_bytes 10"):
        cap("file.readText", "eleven.txt", policy=policy)
    assert cap("file.writeText", "w.txt", "é" * 5, policy=policy) == 10
    with pytest.raises(CapabilityError, match="11 bytes, more than file_max_bytes 10") as caught:
        cap("file.writeText", "w.txt", "0123456789A", policy=policy)
    assert caught.value.argument == "text"
    assert (root / "w.txt").read_text(encoding="utf-8") == "é" * 5


def test_read_results_obey_the_run_limits_and_utf8(box):
    policy, root, _ = box
    with pytest.raises(LimitExceeded) as caught:
        run('(!cap "file.readText" "notes.txt")', policy, limits=Limits(max_string_length=5))
    assert caught.value.limit == "max_string_length"
    (root / "binary.bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CapabilityError, match="not UTF-8"):
        cap("file.readText", "binary.bin", policy=policy)


def test_bad_arguments_name_the_kernel_and_argument(box):
    policy, _, _ = box
    with pytest.raises(CapabilityError) as caught:
        run('(!cap "file.readText" 5)', policy)
    assert (caught.value.capability, caught.value.argument) == ("file.readText", "path")
    with pytest.raises(CapabilityError) as caught:
        run('(!cap "file.writeText" "a.txt" 1.5)', policy)
    assert (caught.value.capability, caught.value.argument) == ("file.writeText", "text")
    with pytest.raises(CapabilityError, match="does not exist"):
        run('(!cap "file.readText" "missing.txt")', policy)
    with pytest.raises(CapabilityError, match="directory of 'no/x.txt' does not exist"):
        run('(!cap "file.writeText" "no/x.txt" "x")', policy)


# ---- sqlite ---------------------------------------------------------------------------------

@pytest.fixture
def db(tmp_path):
    policy = make_policy(tmp_path, sqlite=["data/m.db", "data/link.db"],
                         limits={"sql_max_rows": 3, "sql_max_seconds": 0.3})
    (tmp_path / "sandbox" / "data").mkdir()
    path = tmp_path / "sandbox" / "data" / "m.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (a INTEGER, b TEXT, c REAL, d BLOB)")
        connection.executemany("INSERT INTO t VALUES (?, ?, ?, ?)",
                               [(1, "one", 1.5, None), (2, "two", None, b"\x00"), (3, None, 3.0, None)])
    connection.close()
    return policy, path


def count_rows(path):
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT count(*) FROM t").fetchone()[0]


def test_select_gives_arrays_of_maps(db):
    policy, _ = db
    assert run('(!cap "sql.sqliteQuery" "data/m.db" "SELECT a, b, c FROM t ORDER BY a" null)', policy) == [
        {"a": 1, "b": "one", "c": 1.5}, {"a": 2, "b": "two", "c": None}, {"a": 3, "b": None, "c": 3.0}]
    assert run('(!cap "sql.sqliteQuery" "data/m.db" "select b from t where a > ? and b = ?" (A 1 "two"))',
               policy) == [{"b": "two"}]
    assert cap("sql.sqliteQuery", "data/m.db",
               "-- a comment\n WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3) "
               "SELECT x, upper('q') AS q FROM n", None, policy=policy) == [
        {"x": 1, "q": "Q"}, {"x": 2, "q": "Q"}, {"x": 3, "q": "Q"}]
    assert cap("sql.sqliteQuery", "data/m.db", "SELECT a FROM t WHERE 0", [], policy=policy) == []


@pytest.mark.parametrize("query", [
    "INSERT INTO t (a) VALUES (9)", "UPDATE t SET a = 9", "DELETE FROM t",
    "ATTACH DATABASE 'x.db' AS x", "PRAGMA user_version = 7", "DROP TABLE t",
    "CREATE TABLE u (x)", "VACUUM", "/* SELECT */ DELETE FROM t", "REPLACE INTO t (a) VALUES (1)",
])
def test_writes_are_refused_by_the_statement_filter(db, query):
    policy, path = db
    with pytest.raises(CapabilityDenied, match="only statements starting with SELECT or WITH") as caught:
        cap("sql.sqliteQuery", "data/m.db", query, None, policy=policy)
    assert caught.value.argument == "query"
    assert count_rows(path) == 3


@pytest.mark.parametrize("query", [
    "WITH x AS (SELECT 9) INSERT INTO t (a) SELECT * FROM x",
    "WITH x AS (SELECT 9) DELETE FROM t",
    "WITH x AS (SELECT 9) UPDATE t SET a = 0",
    "SELECT load_extension('/tmp/evil')",
    "SELECT * FROM pragma_table_info('t')",
])
def test_writes_past_the_filter_are_refused_by_the_authorizer(db, query):
    policy, path = db
    with pytest.raises(CapabilityError) as caught:
        cap("sql.sqliteQuery", "data/m.db", query, None, policy=policy)
    assert caught.value.capability == "sql.sqliteQuery" and caught.value.argument == "query"
    assert count_rows(path) == 3


def test_the_authorizer_alone_refuses_writes_on_a_writable_connection(db):
    # Independent of mode=ro and of the SELECT/WITH filter: the authorizer is its own layer.
    _, path = db
    connection = sqlite3.connect(path, isolation_level=None)
    connection.set_authorizer(sandbox.sqlite._authorize)
    for statement in ["INSERT INTO t (a) VALUES (9)", "UPDATE t SET a = 0", "DELETE FROM t",
                      "PRAGMA user_version = 3", "ATTACH DATABASE ':memory:' AS x", "CREATE TABLE u (x)",
                      "WITH x AS (SELECT 1) INSERT INTO t (a) SELECT * FROM x", "BEGIN",
                      "SELECT load_extension('x')", "SELECT writefile('x', 'y')"]:
        with pytest.raises(sqlite3.DatabaseError):
            connection.execute(statement)
    assert connection.execute("SELECT count(*) FROM t").fetchone() == (3,)
    connection.close()


def test_two_statements_are_refused(db):
    policy, path = db
    with pytest.raises(CapabilityError, match="one statement"):
        cap("sql.sqliteQuery", "data/m.db", "SELECT 1; DELETE FROM t", None, policy=policy)
    assert count_rows(path) == 3


def test_the_row_cap_is_an_error(db):
    policy, path = db
    with sqlite3.connect(path) as connection:
        connection.execute("INSERT INTO t (a) VALUES (4)")
    connection.close()
    with pytest.raises(CapabilityError, match="more than sql_max_rows 3 rows"):
        cap("sql.sqliteQuery", "data/m.db", "SELECT a FROM t", None, policy=policy)
    assert len(cap("sql.sqliteQuery", "data/m.db", "SELECT a FROM t LIMIT 3", None, policy=policy)) == 3


def test_the_query_time_limit(db):
    policy, _ = db
    started = time.monotonic()
    with pytest.raises(CapabilityError, match="sql_max_seconds"):
        cap("sql.sqliteQuery", "data/m.db",
            "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT count(*) FROM n",
            None, policy=policy)
    assert time.monotonic() - started < 2


def test_values_must_be_lycan_values(db):
    policy, _ = db
    with pytest.raises(CapabilityError, match="blob"):
        cap("sql.sqliteQuery", "data/m.db", "SELECT d FROM t WHERE a = 2", None, policy=policy)
    with pytest.raises(CapabilityError, match="not finite"):
        cap("sql.sqliteQuery", "data/m.db", "SELECT 1e999 AS x", None, policy=policy)
    with pytest.raises(CapabilityError, match="duplicate column"):
        cap("sql.sqliteQuery", "data/m.db", "SELECT 1 AS x, 2 AS x", None, policy=policy)
    with pytest.raises(CapabilityError) as caught:
        cap("sql.sqliteQuery", "data/m.db", "SELECT ?", [True], policy=policy)
    assert caught.value.argument == "params"
    with pytest.raises(CapabilityError) as caught:
        cap("sql.sqliteQuery", "data/m.db", "SELECT ?", {"a": 1}, policy=policy)
    assert caught.value.argument == "params"


def test_databases_must_be_listed_and_inside(db, tmp_path):
    policy, path = db
    (tmp_path / "sandbox" / "data" / "other.db").write_bytes(path.read_bytes())
    with pytest.raises(CapabilityDenied, match="not listed"):
        cap("sql.sqliteQuery", "data/other.db", "SELECT 1", None, policy=policy)
    with pytest.raises(CapabilityDenied, match="holds '..'"):
        cap("sql.sqliteQuery", "data/../data/m.db", "SELECT 1", None, policy=policy)
    with pytest.raises(CapabilityDenied, match="absolute"):
        cap("sql.sqliteQuery", str(path), "SELECT 1", None, policy=policy)
    # A listed name that is a symbolic link to a database outside the sandbox.
    outside = tmp_path / "outside.db"
    outside.write_bytes(path.read_bytes())
    os.symlink(outside, tmp_path / "sandbox" / "data" / "link.db")
    with pytest.raises(CapabilityDenied, match="symbolic link"):
        cap("sql.sqliteQuery", "data/link.db", "SELECT 1", None, policy=policy)
    with pytest.raises(CapabilityDenied, match="lists no sqlite databases"):
        cap("sql.sqliteQuery", "data/m.db", "SELECT 1", None, policy=Policy.from_dict({}))


# ---- http: refusals (no network) ------------------------------------------------------------

REFUSED = ["127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254",
           "100.64.0.1", "100.127.255.254", "0.0.0.0", "224.0.0.1", "239.255.255.250",
           "255.255.255.255", "240.0.0.1", "::1", "::", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
           "::ffff:169.254.169.254", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1",
           "64:ff9b::7f00:1", "2002:7f00:1::1", "2001:db8::1", "192.0.2.1"]
ALLOWED = ["8.8.8.8", "93.184.215.14", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", REFUSED)
def test_address_refusal_refuses(address):
    assert sandbox.address_refusal(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ALLOWED)
def test_address_refusal_allows_public_addresses(address):
    assert sandbox.address_refusal(ipaddress.ip_address(address)) is None


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if a socket ever connects; record what getaddrinfo was asked."""
    def connect(self, address):
        raise AssertionError(f"tried to connect to {address}")
    monkeypatch.setattr(socket.socket, "connect", connect)


def fake_dns(monkeypatch, table):
    asked = []

    def getaddrinfo(host, port, *args, **kwargs):
        asked.append(host)
        answers = []
        for address in table[host]:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
            answers.append((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return answers

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_a_name_resolving_to_loopback_is_refused_before_connecting(monkeypatch, no_network):
    asked = fake_dns(monkeypatch, {"evil.example": ["127.0.0.1"], "mixed.example": ["8.8.8.8", "10.0.0.1"],
                                   "meta.example": ["169.254.169.254"], "v6.example": ["::ffff:127.0.0.1"]})
    policy = Policy.from_dict({"hosts": ["*.example"]})
    for host, shown in [("evil.example", "127.0.0.1"), ("mixed.example", "10.0.0.1"),
                        ("meta.example", "169.254.169.254"), ("v6.example", "127.0.0.1")]:
        with pytest.raises(CapabilityDenied, match="resolves to .*never allowed") as caught:
            run(f'(!cap "http.get" "http://{host}/")', policy)
        assert caught.value.capability == "http.get" and shown in str(caught.value)
    assert asked == ["evil.example", "mixed.example", "meta.example", "v6.example"]


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
                                  "224.0.0.1", "[::ffff:127.0.0.1]", "[fc00::1]", "[fe80::1]", "[::1]"])
def test_literal_private_addresses_are_refused_even_when_listed(host, no_network):
    policy = Policy.from_dict({"hosts": [host]})
    with pytest.raises(CapabilityDenied, match="never allowed"):
        cap("http.get", f"http://{host}/latest/meta-data", policy=policy)
    with pytest.raises(CapabilityDenied, match="never allowed"):
        cap("http.post", f"http://{host}:8080/x", "body", policy=policy)


def test_hosts_not_on_the_list_are_refused_without_resolving(monkeypatch, no_network):
    asked = fake_dns(monkeypatch, {})
    policy = Policy.from_dict({"hosts": ["api.example.com", "*.example.org"]})
    for url in ["http://evil.com/", "https://example.org/", "http://api.example.com.evil.com/",
                "http://notexample.org/", "http://8.8.8.8/"]:
        with pytest.raises(CapabilityDenied, match="not in the policy's allowed hosts") as caught:
            cap("http.get", url, policy=policy)
        assert caught.value.argument == "url"
    with pytest.raises(CapabilityDenied, match="allows no hosts"):
        cap("http.get", "http://api.example.com/", policy=Policy.from_dict({}))
    assert asked == []


@pytest.mark.parametrize("url, message", [
    ("ftp://api.example.com/", "http or https"), ("file:///etc/passwd", "http or https"),
    ("http://user:pw@api.example.com/", "user name"), ("http://api.example.com/a b", "spaces"),
    ("http://api.example.com/\r\nX-Evil: 1", "control"), ("http://api.example.com:99999/", "bad port"),
    ("http://api.example.com:0/", "bad port"), ("http://exa_mple.com/", "bad host"),
    ("http:///path", "bad host"), ("http://ex\u00e4mple.com/", "ASCII"),
])
def test_bad_urls(url, message, no_network):
    policy = Policy.from_dict({"hosts": ["api.example.com"]})
    with pytest.raises(CapabilityError, match=message) as caught:
        cap("http.get", url, policy=policy)
    assert caught.value.argument == "url"


def test_post_body_checks(no_network):
    policy = Policy.from_dict({"hosts": ["api.example.com"], "limits": {"http_max_request_bytes": 4}})
    with pytest.raises(CapabilityError) as caught:
        cap("http.post", "http://api.example.com/", 5, policy=policy)
    assert (caught.value.capability, caught.value.argument) == ("http.post", "body")
    with pytest.raises(CapabilityError, match="more than http_max_request_bytes 4"):
        cap("http.post", "http://api.example.com/", "12345", policy=policy)


# ---- http: end to end against a local server ------------------------------------------------
#
# Loopback is refused by design, so a local test server is unreachable through any policy.
# These tests replace the module's internal ``_ADDRESS_CHECK`` hook (which no policy, capsule
# or command-line flag can reach) with one that lets 127.0.0.1 through and still refuses
# everything else, so the real socket, HTTP and limit code runs end to end.

class Handler(http.server.BaseHTTPRequestHandler):
    seen: typing.ClassVar[list] = []

    def log_message(self, *args):
        pass

    def reply(self, status, body, headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        Handler.seen.append((self.command, self.path, self.headers.get("Host")))
        if self.path == "/ok?x=1":
            self.reply(200, "héllo".encode(), [("Content-Type", "text/plain; charset=utf-8"),
                                               ("X-Test", "a"), ("X-Test", "b")])
        elif self.path == "/redirect":
            self.reply(302, b"moved", [("Location", "http://169.254.169.254/latest/meta-data")])
        elif self.path == "/big":
            self.reply(200, b"x" * 5000)
        elif self.path == "/big-unsized":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"y" * 5000)
        elif self.path == "/slow":
            time.sleep(1.5)
            self.reply(200, b"late")
        else:
            self.reply(404, b"no")

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        Handler.seen.append((self.command, self.path, self.headers.get("Host")))
        self.reply(201, json.dumps({"type": self.headers["Content-Type"], "body": body.decode()}).encode(),
                   [("Content-Type", "application/json")])


@pytest.fixture
def server(monkeypatch):
    Handler.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    loopback = ipaddress.ip_address("127.0.0.1")
    monkeypatch.setattr(sandbox.http, "_ADDRESS_CHECK",
                        lambda address: None if address == loopback else sandbox.address_refusal(address))
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def local_policy(**limits):
    return Policy.from_dict({"hosts": ["127.0.0.1"], "limits": limits})


def test_get_and_post_succeed(server):
    base = f"http://127.0.0.1:{server}"
    result = run(f'(!cap "http.get" "{base}/ok?x=1#frag")', local_policy())
    assert result["status"] == 200 and result["body"] == "héllo"
    assert result["headers"]["x-test"] == "a, b"
    assert result["headers"]["content-type"] == "text/plain; charset=utf-8"
    assert Handler.seen == [("GET", "/ok?x=1", f"127.0.0.1:{server}")]
    posted = cap("http.post", f"{base}/echo", "plain text", policy=local_policy())
    assert posted["status"] == 201
    assert json.loads(posted["body"]) == {"type": "text/plain; charset=utf-8", "body": "plain text"}
    posted = cap("http.post", f"{base}/echo", {"k": [1, 2]}, policy=local_policy())
    assert json.loads(posted["body"]) == {"type": "application/json", "body": '{"k":[1,2]}'}
    assert run(f'(I (!cap "http.get" "{base}/missing") "status")', local_policy()) == 404


def test_redirects_are_returned_not_followed(server):
    result = cap("http.get", f"http://127.0.0.1:{server}/redirect", policy=local_policy())
    assert result["status"] == 302
    assert result["headers"]["location"] == "http://169.254.169.254/latest/meta-data"
    assert [path for _, path, _ in Handler.seen] == ["/redirect"]


def test_response_size_cap(server):
    policy = local_policy(http_max_response_bytes=1000)
    for path in ["/big", "/big-unsized"]:
        with pytest.raises(CapabilityError, match="more than http_max_response_bytes 1000"):
            cap("http.get", f"http://127.0.0.1:{server}{path}", policy=policy)
    assert len(cap("http.get", f"http://127.0.0.1:{server}/big", policy=local_policy())["body"]) == 5000


def test_timeouts(server):
    started = time.monotonic()
    with pytest.raises(CapabilityError, match="longer than http_timeout_seconds 0.3"):
        cap("http.get", f"http://127.0.0.1:{server}/slow", policy=local_policy(http_timeout_seconds=0.3))
    assert time.monotonic() - started < 1.2
    # The run's own max_seconds bounds the request too.
    started = time.monotonic()
    with pytest.raises(LimitExceeded) as caught:
        run(f'(!cap "http.get" "http://127.0.0.1:{server}/slow")', local_policy(),
            limits=Limits(max_seconds=0.3))
    assert caught.value.limit == "max_seconds" and time.monotonic() - started < 1.2


def test_the_hook_still_refuses_other_private_addresses(server, monkeypatch, no_network):
    fake_dns(monkeypatch, {"internal.example": ["10.1.2.3"]})
    with pytest.raises(CapabilityDenied, match="never allowed"):
        cap("http.get", "http://internal.example/", policy=Policy.from_dict({"hosts": ["internal.example"]}))


# ---- https ----------------------------------------------------------------------------------

@pytest.fixture
def tls_server(tmp_path, monkeypatch):
    """An https server on 127.0.0.1 whose self-signed certificate names secure.test."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "secure.test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("secure.test")]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server_names = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.sni_callback = lambda sslobj, server_name, ctx: server_names.append(server_name)
    Handler.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    loopback = ipaddress.ip_address("127.0.0.1")
    monkeypatch.setattr(sandbox.http, "_ADDRESS_CHECK",
                        lambda address: None if address == loopback else sandbox.address_refusal(address))
    fake_dns(monkeypatch, {"secure.test": ["127.0.0.1"]})
    yield httpd.server_address[1], cert_file, server_names
    httpd.shutdown()
    httpd.server_close()


def test_https_verifies_the_certificate_and_sends_sni(tls_server, monkeypatch):
    port, cert_file, server_names = tls_server
    policy = Policy.from_dict({"hosts": ["secure.test"]})
    url = f"https://secure.test:{port}/ok?x=1"
    with pytest.raises(CapabilityDenied, match="TLS certificate verification failed"):
        cap("http.get", url, policy=policy)  # the system trust store does not know this certificate
    monkeypatch.setattr(sandbox.http, "_TLS_CONTEXT", lambda: ssl.create_default_context(cafile=str(cert_file)))
    result = cap("http.get", url, policy=policy)
    assert result["status"] == 200 and result["body"] == "héllo"
    assert server_names[-1] == "secure.test"
    assert Handler.seen[-1] == ("GET", "/ok?x=1", f"secure.test:{port}")
