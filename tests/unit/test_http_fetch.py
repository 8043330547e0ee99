"""http_fetch against a real HTTP server on 127.0.0.1: allow-lists, refused addresses, redirects, no second lookup."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from services.worker_pool.settings import WorkerSettings
from services.worker_pool.tools import ToolContext, ToolError
from services.worker_pool.tools.builtin import HttpFetchTool, refusal

LOOPBACK = ("127.0.0.1/32",)  # the test server's network, reachable only where a test says so


class _Handler(BaseHTTPRequestHandler):
    requests: list[tuple[str, str]] = []  # (path, Host header) of every request served

    def do_GET(self) -> None:
        type(self).requests.append((self.path, self.headers.get("Host", "")))
        if self.path.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", "http://" + self.path.removeprefix("/to/"))
            self.end_headers()
            return
        body = b"y" * 5000 if self.path == "/big" else b"hello"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    """A real HTTP server on 127.0.0.1; yields its port."""
    _Handler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


@dataclass
class FakeDns:
    """Answers for names under .test, in order (the last one repeated), and the lookups made."""

    answers: dict[str, list[str]] = field(default_factory=dict)
    lookups: dict[str, list[str]] = field(default_factory=dict)


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    """A fake resolver for names under .test; other names resolve for real.

    It stands in for a DNS server whose answers an attacker controls, which cannot run here.
    """
    fake = FakeDns()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".test"):
            given = fake.lookups.setdefault(host, [])
            address = fake.answers[host][min(len(given), len(fake.answers[host]) - 1)]
            given.append(address)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return fake


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, ssl.SSLContext]]:
    """A real HTTPS server on 127.0.0.1 whose certificate names secure.test only; yields its port and the trust."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=secure.test",
         "-addext", "subjectAltName=DNS:secure.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    _Handler.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    httpd.socket = server_side.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], ssl.create_default_context(cafile=str(cert))
    httpd.shutdown()
    httpd.server_close()


def context() -> ToolContext:
    return ToolContext(run_id="r1", tenant="t", step_id="s1", agent_id="a1", attempt=1, settings=WorkerSettings())


async def test_an_allowed_host_port_and_network_is_fetched_within_the_size_limit(server: int) -> None:
    fetch = HttpFetchTool(("127.0.0.1",), max_bytes=1000, allowed_ports=(server,), allowed_networks=LOOPBACK)
    page = await fetch.call({"url": f"http://127.0.0.1:{server}/"}, context())
    assert isinstance(page, dict) and page["status"] == 200 and page["body"] == "hello"
    big = await fetch.call({"url": f"http://127.0.0.1:{server}/big"}, context())
    assert isinstance(big, dict) and big["truncated"] and len(big["body"]) == 1000


async def test_a_name_on_the_allow_list_that_resolves_to_loopback_is_refused(server: int) -> None:
    # The attack of issue #10: an allow-listed name pointing at 127.0.0.1 (here the real /etc/hosts entry).
    fetch = HttpFetchTool(("localhost",), max_bytes=1000, allowed_ports=(server,))
    with pytest.raises(ToolError, match=r"resolves to .*loopback address: refused"):
        await fetch.call({"url": f"http://localhost:{server}/"}, context())
    assert _Handler.requests == []


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://forbidden.example/", "not on the allow-list"),
        ("file:///etc/passwd", "only http and https"),
        ("http://127.0.0.1:{port}/", "loopback address: refused"),  # literal address, not in allowed networks
        ("http://[::ffff:127.0.0.1]:{port}/", "not on the allow-list"),
        ("http://127.0.0.1:22/", "port 22 is not on the allow-list"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata address"),
    ],
    ids=["host", "scheme", "loopback-literal", "mapped-v6", "port", "metadata"],
)
async def test_what_is_refused_before_any_connection(server: int, url: str, reason: str) -> None:
    fetch = HttpFetchTool(("127.0.0.1", "169.254.169.254"), max_bytes=1000, allowed_ports=(80, server),
                          allowed_networks=("169.254.0.0/16",))  # fmt: skip
    with pytest.raises(ToolError, match=reason):
        await fetch.call({"url": url.format(port=server)}, context())
    assert _Handler.requests == []


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.1", "private"),
        ("172.16.0.1", "private"), ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"), ("0.0.0.0", "unspecified"), ("100.64.0.1", "not a public address"),
        ("::ffff:127.0.0.1", "loopback"), ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"),
        ("93.184.215.14", None), ("2606:4700::1111", None),
    ],
)  # fmt: skip
def test_refused_addresses(address: str, expected: str | None) -> None:
    reason = refusal(ipaddress.ip_address(address), ())
    assert (reason is None) if expected is None else (reason is not None and expected in reason)


def test_allowed_networks_open_private_ranges_but_never_metadata() -> None:
    allowed = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("169.254.0.0/16"))
    assert refusal(ipaddress.ip_address("10.1.2.3"), allowed) is None
    assert refusal(ipaddress.ip_address("169.254.169.254"), allowed) == "a cloud metadata address"


async def test_every_redirect_is_checked_like_the_first_url(server: int, fake_dns: FakeDns) -> None:
    fake_dns.answers.update({"internal.test": ["10.0.0.5"], "metadata.test": ["169.254.169.254"]})
    fetch = HttpFetchTool(("127.0.0.1", "internal.test", "metadata.test"), max_bytes=1000, allowed_ports=(80, server),
                          allowed_networks=LOOPBACK)  # fmt: skip
    for target, reason in [(f"internal.test:{server}/", "10.0.0.5, a private address"),
                           ("metadata.test/latest/meta-data/", "cloud metadata address"),
                           ("127.0.0.1:22/", "port 22")]:  # fmt: skip
        with pytest.raises(ToolError, match=reason):
            await fetch.call({"url": f"http://127.0.0.1:{server}/to/{target}"}, context())
    # Only the redirecting URLs were served: no redirect was followed.
    assert [path.split(":")[0].split("/")[2] for path, _ in _Handler.requests] == [
        "internal.test", "metadata.test", "127.0.0.1"
    ]  # fmt: skip


async def test_the_connection_goes_to_the_checked_address_without_a_second_lookup(
    server: int, fake_dns: FakeDns
) -> None:
    # DNS rebinding: the first answer passes the check, any later one would point elsewhere (10.0.0.9
    # is private and refused; had the client looked the name up again it would not reach the server).
    fake_dns.answers["rebind.test"] = ["127.0.0.1", "10.0.0.9"]
    fetch = HttpFetchTool(("rebind.test",), max_bytes=1000, allowed_ports=(server,), allowed_networks=LOOPBACK)
    page = await fetch.call({"url": f"http://rebind.test:{server}/"}, context())
    assert isinstance(page, dict) and page["body"] == "hello"
    assert fake_dns.lookups["rebind.test"] == ["127.0.0.1"]
    assert _Handler.requests == [("/", f"rebind.test:{server}")]  # the name travels in the Host header


async def test_https_goes_to_the_checked_address_and_verifies_the_certificate_for_the_name(
    tls_server: tuple[int, ssl.SSLContext], fake_dns: FakeDns
) -> None:
    port, trust = tls_server
    fake_dns.answers.update({"secure.test": ["127.0.0.1"], "impostor.test": ["127.0.0.1"]})
    fetch = HttpFetchTool(("secure.test", "impostor.test"), max_bytes=1000, allowed_ports=(port,),
                          allowed_networks=LOOPBACK, verify=trust)  # fmt: skip
    page = await fetch.call({"url": f"https://secure.test:{port}/"}, context())
    assert isinstance(page, dict) and page["body"] == "hello"
    # The same server under a name its certificate does not carry: refused although the address is the same.
    with pytest.raises(ToolError, match=r"CERTIFICATE_VERIFY_FAILED|hostname"):
        await fetch.call({"url": f"https://impostor.test:{port}/"}, context())
    assert _Handler.requests == [("/", f"secure.test:{port}")]
