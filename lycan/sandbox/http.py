"""``http.get``, ``http.post``: public addresses only, checked on the socket that connects."""

import codecs
import http.client
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from urllib.parse import urlsplit

from lycan.errors import CapabilityError, LimitExceeded
from lycan.policy import CapabilityDenied
from lycan.sandbox._common import _checked_text, _policy, _seconds_left, _to_lycan
from lycan.values import Array, Map, to_json, type_name


def _networks(*pairs):
    return [(ipaddress.ip_network(network), f"{reason} ({network})") for network, reason in pairs]


_V4_REFUSED = _networks(
    ("0.0.0.0/8", "unspecified / this network"), ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"), ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"), ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"), ("192.0.2.0/24", "documentation"),
    ("192.168.0.0/16", "private"), ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"), ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved"),
)
_V6_REFUSED = _networks(
    ("::/128", "unspecified"), ("::1/128", "loopback"), ("::/96", "IPv4-compatible (deprecated)"),
    ("100::/64", "discard-only"), ("2001::/32", "Teredo"), ("2001:db8::/32", "documentation"),
    ("fc00::/7", "unique-local"), ("fe80::/10", "link-local"), ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_refusal(address):
    """Why a connection to ``address`` (an ``ipaddress`` address) is refused, or None if allowed.

    Refused, whatever the policy says: loopback, private (RFC 1918), link-local (including the
    cloud metadata address 169.254.169.254), multicast, unspecified, carrier-grade NAT
    (100.64.0.0/10), reserved and documentation ranges, unique-local and link-local IPv6, and
    any IPv6 address that embeds a refused IPv4 one (IPv4-mapped, NAT64, 6to4).
    """
    if address.version == 6:
        embedded = address.ipv4_mapped
        if embedded is not None:
            inner = address_refusal(embedded)
            return f"IPv4-mapped {embedded}: {inner}" if inner else None
        if address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        else:
            embedded = address.sixtofour
        if embedded is not None:
            inner = address_refusal(embedded)
            if inner:
                return f"embeds {embedded}: {inner}"
        blocks = _V6_REFUSED
    else:
        if address == ipaddress.IPv4Address("255.255.255.255"):
            return "broadcast (255.255.255.255/32)"
        blocks = _V4_REFUSED
    for network, reason in blocks:
        if address in network:
            if reason.startswith("link-local (169.254"):
                return "link-local (169.254.0.0/16, includes cloud metadata)"
            return reason
    if address.is_multicast:
        return "multicast"
    if not address.is_global:
        return "not a globally routable address"
    return None


# Test-only hook. The kernels look this name up on every connection so that tests can allow
# a local server (127.0.0.1) to check success, redirects, size caps and timeouts end to end.
# It is not reachable from a policy, a capsule or the command line; production code never
# changes it.
_ADDRESS_CHECK = address_refusal
# Test-only hook as well: the TLS context for https (tests trust their own certificate).
_TLS_CONTEXT = ssl.create_default_context

_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def _parse_url(kernel, url):
    if type(url) is not str:
        raise CapabilityError(kernel, "url", f"must be a string, got {type_name(url)}")
    if len(url) > 8192:
        raise CapabilityError(kernel, "url", "is longer than 8192 characters")
    if not url.isascii() or any(c <= " " or c == "\x7f" for c in url):
        raise CapabilityError(kernel, "url", "must be ASCII with no spaces or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise CapabilityError(kernel, "url", f"must be an http or https URL, got scheme {parts.scheme!r}")
    if "@" in parts.netloc:
        raise CapabilityError(kernel, "url", "must not hold a user name or password")
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        raise CapabilityError(kernel, "url", "has a bad port") from None
    if port == 0:
        raise CapabilityError(kernel, "url", "has a bad port")
    default = 443 if scheme == "https" else 80
    port = port or default
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
        name = host.removesuffix(".")
        if not name or len(name) > 253 or not all(_HOST_LABEL.match(label) for label in name.split(".")):
            raise CapabilityError(kernel, "url", f"has a bad host {host!r}")
        host = name
    shown = f"[{host}]" if literal is not None and literal.version == 6 else host
    host_header = shown if port == default else f"{shown}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, host, port, target, host_header


def _resolve(kernel, host, port, seconds):
    """getaddrinfo in a helper thread, so a slow resolver cannot outlast the timeout."""
    outcome = {}

    def work():
        try:
            outcome["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError) as error:
            outcome["error"] = error

    worker = threading.Thread(target=work, name="lycan-resolve", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise CapabilityError(kernel, "url", f"resolving {host!r} took longer than the timeout")
    if "error" in outcome:
        raise CapabilityError(kernel, "url", f"cannot resolve {host!r}: {outcome['error']}")
    return outcome["addresses"]


def _connect(kernel, host, port, deadline):
    """A socket connected to an address of ``host`` that passed ``_ADDRESS_CHECK``.

    Every address the name resolves to is checked first; if any is refused the request is
    refused (a name that points anywhere private is not trusted at all). The socket then
    connects to one of the checked addresses, never to the name, so nothing can change the
    answer between the check and the connection.
    """
    addresses = _resolve(kernel, host, port, max(deadline - time.monotonic(), 0.001))
    checked = []
    for family, kind, protocol, _, sockaddr in addresses:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(sockaddr[0].split("%")[0])
        refusal = _ADDRESS_CHECK(address)
        if refusal:
            raise CapabilityDenied(kernel, f"host {host!r} resolves to {address}, which is never "
                                           f"allowed: {refusal}", "url")
        checked.append((family, kind, protocol, sockaddr, address))
    if not checked:
        raise CapabilityError(kernel, "url", f"{host!r} has no IPv4 or IPv6 address")
    failure = None
    for family, kind, protocol, sockaddr, address in checked:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        connection = socket.socket(family, kind, protocol)
        try:
            connection.settimeout(left)
            connection.connect(sockaddr)
            peer = ipaddress.ip_address(connection.getpeername()[0].split("%")[0])
            if peer != address:  # cannot happen with a plain connect; checked all the same
                raise CapabilityDenied(kernel, f"connected to {peer}, not the checked {address}", "url")
            return connection
        except OSError as error:
            connection.close()
            failure = error
        except BaseException:
            connection.close()
            raise
    if failure is None:
        raise CapabilityError(kernel, "url", f"connecting to {host!r} took longer than the timeout")
    raise CapabilityError(kernel, "url", f"cannot connect to {host!r}: {failure}")


class _CheckedConnection(http.client.HTTPConnection):
    """An HTTPConnection that speaks over a socket connected (and checked) beforehand."""

    def __init__(self, host, port, sock, timeout):
        super().__init__(host, port, timeout=timeout)
        self._checked = sock

    def connect(self):
        self.sock = self._checked


def _request_body(kernel, body, cap):
    if type(body) is str:
        data, kind = body.encode("utf-8", "surrogatepass"), "text/plain; charset=utf-8"
    elif isinstance(body, (Array, Map)):
        data = json.dumps(to_json(body), ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        kind = "application/json"
    else:
        raise CapabilityError(kernel, "body", f"must be a string, array or map, got {type_name(body)}")
    if len(data) > cap:
        raise CapabilityError(kernel, "body", f"is {len(data)} bytes, more than http_max_request_bytes {cap}")
    return data, kind


def _charset(message):
    name = message.get_content_charset() or "utf-8"
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


def _http(context, kernel, method, url, body):
    policy = _policy(context, kernel)
    scheme, host, port, target, host_header = _parse_url(kernel, url)
    if not policy.hosts:
        raise CapabilityDenied(kernel, "the policy allows no hosts", "url")
    if not policy.host_allowed(host):
        raise CapabilityDenied(kernel, f"host {host!r} is not in the policy's allowed hosts", "url")
    limits = policy.limits
    headers = {"Host": host_header, "User-Agent": "lycan", "Accept-Encoding": "identity",
               "Connection": "close"}
    payload = None
    if method == "POST":
        payload, headers["Content-Type"] = _request_body(kernel, body, limits.http_max_request_bytes)
        headers["Content-Length"] = str(len(payload))
    seconds, binding = _seconds_left(context, kernel, limits.http_timeout_seconds, "http_timeout_seconds")
    deadline = time.monotonic() + seconds
    sock = _connect(kernel, host, port, deadline)
    expired = threading.Event()

    def expire():  # shut the socket at the deadline, so no slow server can hold the run
        expired.set()
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass

    watchdog = threading.Timer(max(deadline - time.monotonic(), 0), expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        if scheme == "https":
            sock = _TLS_CONTEXT().wrap_socket(sock, server_hostname=host)
        connection = _CheckedConnection(host, port, sock, seconds)
        connection.request(method, target, body=payload, headers=headers)
        response = connection.getresponse()
        cap = limits.http_max_response_bytes
        declared = response.getheader("Content-Length")
        if declared and declared.strip().isdigit() and int(declared) > cap:
            raise CapabilityError(kernel, "url", f"the response body is {int(declared)} bytes, more "
                                                 f"than http_max_response_bytes {cap}")
        chunks, total = [], 0
        while total <= cap:
            chunk = response.read(min(65536, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > cap:
            raise CapabilityError(kernel, "url", f"the response body is more than "
                                                 f"http_max_response_bytes {cap}")
        if expired.is_set():
            raise TimeoutError("timed out")
    except ssl.SSLCertVerificationError as error:
        raise CapabilityDenied(kernel, f"TLS certificate verification failed for {host!r}: "
                                       f"{error.verify_message}", "url") from None
    except (OSError, http.client.HTTPException, ValueError) as error:
        if expired.is_set() or isinstance(error, socket.timeout):
            if binding == "max_seconds":
                raise LimitExceeded("max_seconds", f"{kernel}: the request ran past the run's max_seconds") from None
            raise CapabilityError(kernel, "url", f"took longer than http_timeout_seconds "
                                                 f"{limits.http_timeout_seconds}") from None
        raise CapabilityError(kernel, "url", f"request to {host!r} failed: "
                                             f"{type(error).__name__}: {error}") from None
    finally:
        watchdog.cancel()
        sock.close()
    merged = {}
    for name, value in response.getheaders():
        name = name.lower()
        merged[name] = f"{merged[name]}, {value}" if name in merged else value
    text = b"".join(chunks).decode(_charset(response.msg), errors="replace")
    _checked_text(context, kernel, text)
    return _to_lycan(context, kernel, {"status": response.status, "headers": merged, "body": text})


def http_get(context, url):
    """GET ``url``; gives {status, headers, body}. Redirects come back as they are."""
    return _http(context, "http.get", "GET", url, None)


def http_post(context, url, body):
    """POST a string (text/plain) or an array or map (JSON) to ``url``; gives {status, headers, body}."""
    return _http(context, "http.post", "POST", url, body)
