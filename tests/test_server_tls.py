"""TLS: bearer tokens never cross a network in plaintext unless the operator says so."""

import datetime
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from syntra.client import Client, SyntraRpcError
from syntra.errors import InvalidConfig
from syntra.server.app import ServerConfig
from tests.grpc_server import ServerProcess


def self_signed(directory):
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "syntra-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    return directory / "cert.pem", directory / "key.pem", cert_pem


def test_plaintext_off_loopback_is_refused_unless_asked_for():
    with pytest.raises(InvalidConfig, match="plaintext"):
        ServerConfig(listen="0.0.0.0:7443", admin_key="k" * 40).check()
    ServerConfig(listen="0.0.0.0:7443", admin_key="k" * 40, plaintext=True).check()
    ServerConfig(listen="127.0.0.1:7443", admin_key="k" * 40).check()
    with pytest.raises(InvalidConfig, match="both"):
        ServerConfig(listen="0.0.0.0:7443", admin_key="k" * 40, tls_cert="cert.pem").check()


def test_a_tls_server_serves_tls_clients_only(tmp_path):
    cert, key, cert_pem = self_signed(tmp_path)
    with ServerProcess(tmp_path / "data", args=("--tls-cert", str(cert), "--tls-key", str(key))) as server:
        with Client(server.address, token=server.admin_key, tls=cert_pem, timeout=10) as client:
            client.install_capsule("tenants/tls/jobs/j", "c", options=["a", "b"])
            d = client.decide("tenants/tls/jobs/j/capsules/c", context_key="k")
            assert d.option in ("a", "b") and client.feedback(d, reward=1.0)
        from syntra.cli import main

        assert main(["capsule", "get", "tenants/tls/jobs/j/capsules/c", "--server", server.address,
                     "--token", server.admin_key, "--tls-ca", str(cert), "--json"]) == 0
        assert main(["capsule", "get", "tenants/tls/jobs/j/capsules/c", "--server", server.address,
                     "--token", server.admin_key, "--timeout", "2"]) == 1   # plaintext: UNAVAILABLE
        with Client(server.address, token=server.admin_key, timeout=2, retries=0) as plain:
            with pytest.raises(SyntraRpcError) as refused:
                plain.decide("tenants/tls/jobs/j/capsules/c", context_key="k")
            assert refused.value.code.name == "UNAVAILABLE"
