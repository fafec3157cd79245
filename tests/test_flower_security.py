"""The security layer of a multi-machine Flower deployment (emfl.flower.security): the certificates
and keys it makes, the transport it allows, the commands it returns, and real Flower processes on
this machine: a TLS SuperLink with SuperNode authentication that lets in a registered SuperNode and
refuses one whose key is not registered or that does not trust its CA.

The process tests need the extra (`pip install -e '.[flower]'`)."""

import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from emfl.flower import FlowerError
from emfl.flower import security as sec


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    pytest.importorskip("cryptography")
    folder = tmp_path_factory.mktemp("certs")
    return sec.make_certificates(folder, ["127.0.0.2", "::1", "superlink.example.org"])


def _load(path):
    from cryptography import x509

    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def _verify(server_pem, ca_pem, host):
    """Verify the server certificate as a TLS client does: chain to the CA, and ``host`` among its names."""
    from cryptography import x509
    from cryptography.x509.verification import PolicyBuilder, Store

    try:
        subject = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)
    verifier = PolicyBuilder().store(Store([_load(ca_pem)])).build_server_verifier(subject)
    verifier.verify(_load(server_pem), [])


# --- certificates and keys ----------------------------------------------------------------------

def test_certificate_names_exactly_the_hosts(certs):
    from cryptography import x509

    san = _load(certs["server"]).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.IPAddress)) == {ipaddress.ip_address("127.0.0.2"),
                                                           ipaddress.ip_address("::1")}
    assert san.get_values_for_type(x509.DNSName) == ["superlink.example.org"]
    assert sec.certificate_hosts(certs["server"]) == ["127.0.0.2", "::1", "superlink.example.org"]
    cert = _load(certs["server"])
    assert cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc) > datetime.timedelta(days=360)


def test_server_certificate_verifies_against_its_ca_only(certs, tmp_path):
    from cryptography.x509.verification import VerificationError

    for host in ("127.0.0.2", "::1", "superlink.example.org"):
        _verify(certs["server"], certs["ca"], host)
    with pytest.raises(VerificationError):
        _verify(certs["server"], certs["ca"], "127.0.0.1")  # a host it does not name
    other = sec.make_certificates(tmp_path, ["127.0.0.2"])
    with pytest.raises(VerificationError):
        _verify(certs["server"], other["ca"], "127.0.0.2")  # another CA


def test_key_files_are_private(certs, tmp_path):
    old = os.umask(0o022)
    try:
        private, public = sec.make_node_key(tmp_path, "node0")
    finally:
        os.umask(old)
    for path in (certs["ca_key"], certs["server_key"], private):
        assert (os.stat(path).st_mode & 0o777) == 0o600, path
    assert (os.stat(public).st_mode & 0o077) != 0  # the public key may be read by anyone


def test_node_key_is_what_flower_loads(tmp_path):
    # flower-supernode reads the private key with load_ssh_private_key, flwr supernode register the
    # public one with load_ssh_public_key; both want a NIST curve (P-384, as ssh-keygen -t ecdsa -b 384)
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private, public = sec.make_node_key(tmp_path, "node3")
    key = serialization.load_ssh_private_key(private.read_bytes(), None)
    pub = serialization.load_ssh_public_key(public.read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1)
    assert pub.public_numbers() == key.public_key().public_numbers()


def test_certificate_refuses_a_bind_all_address(tmp_path):
    pytest.importorskip("cryptography")
    with pytest.raises(ValueError, match="127.0.0.1 if the SuperLink listens on 0.0.0.0"):
        sec.make_certificates(tmp_path, ["0.0.0.0"])


# --- which transport an address allows ----------------------------------------------------------

@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_addresses(host):
    assert sec.is_loopback(host)
    sec.check_transport(host, insecure=True, tls=None, node_auth=False)


@pytest.mark.parametrize("host", ["10.0.0.5", "0.0.0.0", "::", "192.168.1.20", "superlink.example.org"])
def test_insecure_is_refused_off_loopback(host):
    assert not sec.is_loopback(host)
    with pytest.raises(ValueError, match="--insecure is only allowed on a loopback address"):
        sec.check_transport(host, insecure=True, tls=None, node_auth=True)
    with pytest.raises(ValueError, match="flower-keys"):
        sec.check_transport(host, insecure=False, tls=None, node_auth=True)
    with pytest.raises(ValueError, match="SuperNode authentication"):
        sec.check_transport(host, insecure=False, tls={"ca": "ca.pem"}, node_auth=False)
    sec.check_transport(host, insecure=False, tls={"ca": "ca.pem"}, node_auth=True)


# --- the commands of each role ------------------------------------------------------------------

def test_superlink_and_supernode_commands(certs):
    assert sec.superlink_args("127.0.0.1", 9092) == [
        "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", "9092",
        "--disable-runtime-dependency-installation"]
    assert sec.superlink_args("127.0.0.2", 9092, certs, node_auth=True) == [
        "flower-superlink", "--ssl-ca-certfile", str(certs["ca"]), "--ssl-certfile", str(certs["server"]),
        "--ssl-keyfile", str(certs["server_key"]), "--enable-supernode-auth", "--host", "127.0.0.2",
        "--port", "9092", "--disable-runtime-dependency-installation"]
    with pytest.raises(ValueError, match="--insecure is only allowed"):
        sec.superlink_args("0.0.0.0", 9092)
    # on 0.0.0.0 the SuperLink's ServerApp process dials 127.0.0.1, which this certificate does not name
    with pytest.raises(ValueError, match="connects to 127.0.0.1"):
        sec.superlink_args("0.0.0.0", 9092, certs, node_auth=True)
    assert sec.supernode_args("127.0.0.2:9092", certs["ca"], "n.key", port=9100, max_retries=1) == [
        "flower-supernode", "--root-certificates", str(certs["ca"]), "--superlink", "127.0.0.2:9092",
        "--auth-supernode-private-key", "n.key", "--host", "127.0.0.1", "--port", "9100", "--max-retries", "1"]
    assert sec.supernode_args("[::1]:9092", port=9100)[:4] == ["flower-supernode", "--insecure", "--superlink",
                                                               "[::1]:9092"]
    with pytest.raises(ValueError, match="SuperNode authentication"):
        sec.supernode_args("10.0.0.5:9092", certs["ca"], None)
    with pytest.raises(ValueError, match="keep it on 127.0.0.1"):
        sec.supernode_args("10.0.0.5:9092", certs["ca"], "n.key", host="0.0.0.0")


def test_connection_toml(tmp_path):
    import tomllib

    doc = tomllib.loads(sec.connection_toml("emfl", "10.0.0.5:8000", tmp_path / "ca.pem"))
    assert doc == {"superlink": {"default": "emfl", "emfl": {
        "address": "10.0.0.5:8000", "root-certificates": str((tmp_path / "ca.pem").resolve())}}}
    doc = tomllib.loads(sec.connection_toml("local", "127.0.0.1:8000", None, default=False))
    assert doc == {"superlink": {"local": {"address": "127.0.0.1:8000", "insecure": True}}}


def test_register_nodes_reports_the_key_that_failed():
    calls = []

    def run(argv):
        assert argv[0] == "flwr"
        calls.append(argv[1:])
        if argv[3] == "b.pub":  # what flwr 1.42 answers (exit status 0!) when the SuperLink refuses
            out = {"success": False, "error-message": "[code: 23] Public key already in use."}
        else:
            out = {"success": True, "node-id": 7}
        return subprocess.CompletedProcess(argv, 0, json.dumps(out), "")

    assert sec.register_nodes(["a.pub"], "emfl", run=run) == [7]
    assert calls == [["supernode", "register", "a.pub", "emfl", "--format", "json"]]
    with pytest.raises(FlowerError, match=r"register b.pub emfl failed.*already in use"):
        sec.register_nodes(["a.pub", "b.pub", "c.pub"], "emfl", run=run)
    assert [c[2] for c in calls[1:]] == ["a.pub", "b.pub"]  # stops at the first failure


def test_flower_keys_command(tmp_path, capsys):
    pytest.importorskip("cryptography")
    assert sec.main_keys(["--dir", str(tmp_path), "--host", "10.0.0.5", "--host", "superlink.lan",
                          "--nodes", "2"]) == 0
    out = capsys.readouterr().out
    names = {"ca.pem", "ca.key", "server.pem", "server.key", "node0.key", "node0.pub", "node1.key", "node1.pub"}
    assert {p.name for p in tmp_path.iterdir()} == names
    assert sec.certificate_hosts(tmp_path / "server.pem") == ["10.0.0.5", "superlink.lan"]
    assert "to the SuperLink machine: ca.pem server.pem server.key node0.pub node1.pub" in out
    assert "to SuperNode 1's machine: ca.pem node1.key" in out
    assert "--auth-supernode-private-key node1.key" in out and "--enable-supernode-auth" in out
    assert sec.main_keys(["--dir", str(tmp_path / "x"), "--host", "0.0.0.0", "--nodes", "1"]) == 2


# --- real Flower processes on this machine ------------------------------------------------------

def _free_port(host="127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _far_host() -> str:
    """127.0.0.2 where this machine has it (Linux routes all of 127/8 to lo), so that the certificate
    names an address that is not 127.0.0.1; 127.0.0.1 elsewhere."""
    try:
        _free_port("127.0.0.2")
        return "127.0.0.2"
    except OSError:
        return "127.0.0.1"


class Processes:
    """Flower processes of one test in a temporary FLWR_HOME, each in its own session."""

    def __init__(self, home: Path):
        pytest.importorskip("flwr", reason="Flower is an optional extra: pip install -e '.[flower]'")
        self.home = home
        home.mkdir(exist_ok=True)
        bindir = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
                    "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "PYTHONUNBUFFERED": "1"}
        self.procs = {}

    def start(self, name, args) -> subprocess.Popen:
        with open(self.home / f"{name}.log", "wb") as fh:
            self.procs[name] = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                                cwd=self.home, start_new_session=True)
        return self.procs[name]

    def log(self, name) -> str:
        return (self.home / f"{name}.log").read_text(errors="replace")

    def wait_for(self, what, done, timeout=30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if done():
                return
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; logs in {self.home}")

    def superlink(self, host, tls, node_auth=True) -> str:
        port = _free_port(host)
        self.start("superlink", sec.superlink_args(host, port, tls, node_auth))
        ctx = ssl.create_default_context(cafile=str(tls["ca"]))

        def healthy():
            assert self.procs["superlink"].poll() is None, self.log("superlink")
            try:
                with urllib.request.urlopen(f"https://{host}:{port}/health", timeout=1, context=ctx) as r:
                    return r.status == 200
            except OSError:
                return False

        self.wait_for("the SuperLink", healthy)
        address = sec.join_address(host, port)
        (self.home / "config.toml").write_text(sec.connection_toml("emfl", address, tls["ca"]))
        return address

    def running(self) -> list:
        """Live processes (not zombies) with this FLWR_HOME: what was started and what it started
        in sessions of its own (the SuperExec of the SuperLink and of each SuperNode)."""
        needle = f"FLWR_HOME={self.home}".encode()
        found = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                env = Path(f"/proc/{d}/environ").read_bytes().split(b"\0")
                state = Path(f"/proc/{d}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if needle in env and state != b"Z":
                found.append(int(d))
        return found

    def stop(self) -> list:
        """SIGTERM to every session (SuperNodes first), SIGKILL after 10 s; returns the processes
        with this FLWR_HOME still running 10 s later (and kills them)."""
        order = sorted(self.procs, key=lambda n: n == "superlink")
        for name in order:
            try:
                os.killpg(self.procs[name].pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        end = time.monotonic() + 10
        for name in order:
            p = self.procs[name]
            try:
                p.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        end = time.monotonic() + 10
        while (left := self.running()) and time.monotonic() < end:
            time.sleep(0.2)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left


@pytest.fixture
def flower(tmp_path):
    procs = Processes(tmp_path / "flwr-home")
    yield procs
    assert procs.stop() == [], "processes left running"  # in case a test did not stop them


@pytest.fixture
def keys(tmp_path):
    pytest.importorskip("cryptography")
    host = _far_host()
    tls = sec.make_certificates(tmp_path / "link", [host])
    nodes = [sec.make_node_key(tmp_path / "nodes", f"node{i}") for i in range(2)]
    return host, tls, nodes


def test_registered_supernode_connects_over_tls(flower, keys):
    host, tls, nodes = keys
    address = flower.superlink(host, tls)
    (node_id,) = sec.register_nodes([nodes[0][1]], "emfl", env=flower.env)
    node = flower.start("node0", sec.supernode_args(address, tls["ca"], nodes[0][0], port=_free_port(),
                                                    max_retries=2, max_wait_time=20))

    def activated():
        assert node.poll() is None, flower.log("node0")  # a refused SuperNode exits
        return f"Activated node_id={node_id}" in flower.log("superlink")

    flower.wait_for("the SuperNode", activated)
    assert node.poll() is None and f"SuperNode ID: {node_id}" in flower.log("node0")
    assert flower.stop() == []
    assert node.poll() is not None


def test_unregistered_supernode_is_refused(flower, keys):
    host, tls, nodes = keys
    address = flower.superlink(host, tls)
    node = flower.start("node1", sec.supernode_args(address, tls["ca"], nodes[1][0], port=_free_port(),
                                                    max_retries=2, max_wait_time=20))
    # refused at once (HTTP 412, not retried): the SuperNode exits with status 1 and says why
    assert node.wait(timeout=30) == 1
    log = flower.log("node1")
    assert "Exit Code: 305" in log and "[code: 2004] Failed to activate SuperNode." in log
    assert "[/v1/fleet/activate-node][ApiError:2004]" in flower.log("superlink")
    assert "Activated node_id" not in flower.log("superlink")
    assert flower.stop() == []


def test_supernode_without_the_ca_cannot_connect(flower, keys, tmp_path):
    host, tls, nodes = keys
    address = flower.superlink(host, tls)
    other = sec.make_certificates(tmp_path / "other", [host])  # same host, another CA
    wrong = flower.start("wrong-ca", sec.supernode_args(address, other["ca"], nodes[0][0], port=_free_port(),
                                                        max_retries=2, max_wait_time=20))
    args = sec.supernode_args(address, tls["ca"], nodes[0][0], port=_free_port(), max_retries=2, max_wait_time=20)
    i = args.index("--root-certificates")
    system = flower.start("system-roots", args[:i] + args[i + 2:])  # no CA given: the system's roots
    for name, p in (("wrong-ca", wrong), ("system-roots", system)):
        assert p.wait(timeout=30) == 1, name
        log = flower.log(name)
        assert "Exit Code: 305" in log and "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed" in log, name
    assert "Activated node_id" not in flower.log("superlink")
    # flwr itself, trusting the other CA, cannot reach the Control API either
    (flower.home / "config.toml").write_text(sec.connection_toml("other", address, other["ca"]))
    with pytest.raises(FlowerError, match="Connection to the SuperLink is unavailable.*root-certificates"):
        sec.register_nodes([nodes[1][1]], "other", env=flower.env)
    assert flower.stop() == []
