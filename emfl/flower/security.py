"""The security layer of a Flower deployment on several machines: TLS certificates, SuperNode keys,
and the exact commands of each role.

On one machine, ``--insecure`` on 127.0.0.1 is what :mod:`emfl.flower.deploy` uses.  As soon as the
SuperLink listens on an address another machine can reach, two things are needed (flwr 1.42):

* **TLS**: the SuperLink serves its one HTTPS port (Fleet, Control and Runtime APIs) with a server
  certificate whose subjectAltName names the address the others dial; every SuperNode and the
  ``flwr`` CLI check it against the CA certificate (``ca.pem``);
* **SuperNode authentication**: ``flower-superlink --enable-supernode-auth`` accepts only the
  SuperNodes whose public keys were registered with ``flwr supernode register KEY.pub CONNECTION``;
  each SuperNode signs its requests with its private key (``--auth-supernode-private-key``).

Register the keys before the SuperNodes start: a SuperNode whose key the SuperLink does not know is
refused at once and exits (it does not wait).  The same port serves the Control API (``flwr run``,
``flwr supernode register``), which has no user accounts in Flower's open-source build: whoever
reaches the port and has ``ca.pem`` can register a key or submit a run, so let only your own
machines reach it.

``python -m emfl flower-keys --dir DIR --host HOST --nodes N`` (:func:`main_keys`) writes test
certificates and N node key pairs; the functions below return the command lines a user types::

    flower-superlink --ssl-ca-certfile ca.pem --ssl-certfile server.pem --ssl-keyfile server.key \\
        --enable-supernode-auth --host HOST --port PORT --disable-runtime-dependency-installation
    flwr supernode register node0.pub emfl          # config.toml: address + root-certificates
    flower-supernode --root-certificates ca.pem --superlink HOST:PORT \\
        --auth-supernode-private-key node0.key --host 127.0.0.1 --port 9094

The certificates made here are for tests and courses (a CA without a passphrase, on disk beside its
certificate); a real deployment gets its server certificate from the organisation's CA.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from emfl.flower.errors import FlowerError

__all__ = ["make_certificates", "make_node_key", "is_loopback", "check_transport", "superlink_args",
           "supernode_args", "connection_toml", "register_nodes", "split_address", "certificate_hosts",
           "join_address", "flwr_executable", "main_keys"]

KEYS_COMMAND = "python -m emfl flower-keys --dir DIR --host HOST --nodes N"
DEFAULT_PORT = 8000  # flower-superlink's default --port


def _write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)  # an existing file keeps its mode in os.open


def _san(host: str):
    """An IP address as an IP SAN, anything else as a DNS SAN."""
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def make_certificates(folder, hosts: list[str], days: int = 365) -> dict:
    """Write a test CA (``ca.pem``, ``ca.key``) and a server certificate it signs (``server.pem``,
    ``server.key``) for ``hosts``: IP addresses as IP SANs, names as DNS SANs, exactly the hosts
    given.  Keys are written 0600.  Returns the paths as ``{"ca", "ca_key", "server", "server_key"}``.

    The SuperLink's own ServerApp process connects back to the address the SuperLink listens on
    (127.0.0.1 when it listens on 0.0.0.0): that address must be among ``hosts`` too."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    hosts = list(dict.fromkeys(h.strip() for h in hosts if h.strip()))
    if not hosts:
        raise ValueError("give at least one host: the address or name the SuperNodes dial (--host)")
    for h in hosts:
        if h in ("0.0.0.0", "::", "[::]"):
            raise ValueError(f"{h} is where a SuperLink listens, not an address anyone dials: give the "
                             "machine's address or name (and 127.0.0.1 if the SuperLink listens on 0.0.0.0)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    pem, raw = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8

    def key_bytes(key) -> bytes:
        return key.private_bytes(pem, raw, serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "emfl test CA"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "emfl test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA384()))

    key = ec.generate_private_key(ec.SECP384R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
              .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(start).not_valid_after(end)
              .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                             critical=False)
              .sign(ca_key, hashes.SHA384()))

    paths = {"ca": folder / "ca.pem", "ca_key": folder / "ca.key",
             "server": folder / "server.pem", "server_key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(pem))
    _write_private(paths["ca_key"], key_bytes(ca_key))
    paths["server"].write_bytes(server.public_bytes(pem))
    _write_private(paths["server_key"], key_bytes(key))
    return paths


def make_node_key(folder, name: str) -> tuple[Path, Path]:
    """Write a SuperNode's key pair: ``NAME.key`` (P-384, OpenSSH private key, 0600; what
    ``flower-supernode --auth-supernode-private-key`` loads) and ``NAME.pub`` (OpenSSH public key,
    one line ``ecdsa-sha2-nistp384 ...``; what ``flwr supernode register`` loads), as
    ``ssh-keygen -t ecdsa -b 384 -N "" -f NAME`` would.  Returns ``(private, public)``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    _write_private(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                              serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH) + f" {name}\n".encode())
    return private, public


def split_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as ``(host, port)``."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"{address!r} is not HOST:PORT (write an IPv6 address as [::1]:PORT)")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only: 127.0.0.0/8, ::1 or ``localhost``."""
    host = host.strip().strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_transport(host: str, insecure: bool, tls: dict | None, node_auth: bool) -> None:
    """Raise ``ValueError`` unless the transport fits the address: ``--insecure`` only on a loopback
    address; any other address needs TLS certificates and SuperNode authentication."""
    if is_loopback(host):
        if insecure and tls:
            raise ValueError("--insecure and TLS certificates contradict each other: drop one")
        return
    if insecure:
        raise ValueError(f"--insecure is only allowed on a loopback address (127.0.0.1, ::1, localhost); "
                         f"{host} can be reached from other machines: use TLS certificates (test ones: "
                         f"{KEYS_COMMAND}) and SuperNode authentication")
    if not tls:
        raise ValueError(f"{host} can be reached from other machines: it needs TLS certificates (test ones: "
                         f"{KEYS_COMMAND}; the server certificate must name {host})")
    if not node_auth:
        raise ValueError(f"{host} can be reached from other machines: it needs SuperNode authentication "
                         f"(--enable-supernode-auth on the SuperLink, each SuperNode's public key registered "
                         f"with flwr supernode register; key pairs: {KEYS_COMMAND})")


def certificate_hosts(server_pem) -> list[str]:
    """The hosts a certificate names (its subjectAltName: IP addresses, then DNS names)."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(Path(server_pem).read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName)


def _names(host: str, names: list[str]) -> bool:
    """Whether ``host`` is among a certificate's ``names`` (IP addresses compared as addresses)."""
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host.lower() in (n.lower() for n in names)
    for n in names:
        try:
            if ipaddress.ip_address(n) == ip:
                return True
        except ValueError:
            pass
    return False


def superlink_args(host: str, port: int, tls: dict | None = None, node_auth: bool = False) -> list[str]:
    """``flower-superlink ...`` for a SuperLink listening on ``host:port`` (one HTTPS port for the
    Fleet, Control and Runtime APIs); ``tls``: the paths of :func:`make_certificates` (``ca``,
    ``server``, ``server_key``), None for ``--insecure`` (loopback only); ``node_auth``:
    ``--enable-supernode-auth``.  With TLS, the server certificate must name ``host`` (127.0.0.1 for
    0.0.0.0, ::1 for ::): the SuperLink's ServerApp process connects there, and it checks the
    certificate too."""
    check_transport(host, tls is None, tls, node_auth)
    args = ["flower-superlink"]
    if tls is None:
        args.append("--insecure")
    else:
        dialled = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host)
        names = certificate_hosts(tls["server"])
        if not _names(dialled, names):
            raise ValueError(f"the server certificate {tls['server']} names {', '.join(names) or 'no host'}, "
                             f"not {dialled}: the SuperLink's own ServerApp process connects to {dialled} and "
                             f"would be refused; make one that names it ({KEYS_COMMAND} --host {dialled})")
        args += ["--ssl-ca-certfile", str(tls["ca"]), "--ssl-certfile", str(tls["server"]),
                 "--ssl-keyfile", str(tls["server_key"])]
    if node_auth:
        args.append("--enable-supernode-auth")
    return args + ["--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]


def supernode_args(superlink: str, tls_ca=None, private_key=None, host: str = "127.0.0.1", port: int = 9094,
                   node_config: str | None = None, max_retries: int | None = None,
                   max_wait_time: float | None = None) -> list[str]:
    """``flower-supernode ...`` for a SuperNode dialling ``superlink`` (``HOST:PORT``): ``tls_ca``
    the CA certificate (None for ``--insecure``, loopback only), ``private_key`` its key (None:
    no SuperNode authentication); ``host:port`` is where its own Runtime API listens (one free
    port per SuperNode on a machine; it serves the node's own ClientApp processes, always on a
    loopback address)."""
    if not is_loopback(host):
        raise ValueError(f"the SuperNode's Runtime API ({host}) serves only its own ClientApp processes and "
                         "has no TLS here: keep it on 127.0.0.1 (--host 127.0.0.1)")
    check_transport(split_address(superlink)[0], tls_ca is None, {"ca": tls_ca} if tls_ca else None,
                    private_key is not None)
    args = ["flower-supernode"]
    args += ["--insecure"] if tls_ca is None else ["--root-certificates", str(tls_ca)]
    args += ["--superlink", superlink]
    if private_key is not None:
        args += ["--auth-supernode-private-key", str(private_key)]
    args += ["--host", host, "--port", str(port)]
    if node_config:
        args += ["--node-config", node_config]
    if max_retries is not None:
        args += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        args += ["--max-wait-time", f"{max_wait_time:g}"]
    return args


def connection_toml(name: str, address: str, ca_path=None, default: bool = True) -> str:
    """The ``$FLWR_HOME/config.toml`` text of connection ``name`` to the SuperLink at ``address``:
    ``root-certificates`` (the CA certificate, as an absolute path) for TLS, ``insecure = true``
    without; ``default`` also makes it the connection ``flwr`` uses when none is named."""
    head = f'[superlink]\ndefault = {json.dumps(name)}\n\n' if default else ""
    body = f"[superlink.{name}]\naddress = {json.dumps(address)}\n"
    if ca_path is None:
        body += "insecure = true\n"
    else:
        body += f"root-certificates = {json.dumps(str(Path(ca_path).expanduser().resolve()))}\n"
    return head + body


def flwr_executable() -> str:
    """The `flwr` command of this environment (beside its Python), else the first on PATH."""
    path = shutil.which("flwr", path=str(Path(sys.executable).parent)) or shutil.which("flwr")
    if path is None:
        raise FlowerError("flwr not found: install Flower into this environment (pip install -e '.[flower]')")
    return path


def register_nodes(public_keys, connection: str, env: dict | None = None, run=None, timeout: float = 60) -> list[int]:
    """``flwr supernode register KEY.pub CONNECTION`` for each public key (``env``: the environment
    ``flwr`` runs in, e.g. with ``FLWR_HOME``; ``run(argv)``: a function that runs ``argv``, which
    starts with ``"flwr"``, and returns a ``CompletedProcess``).  Returns the node ids; raises
    :class:`~emfl.flower.FlowerError` at the first key the SuperLink does not take."""
    if run is None:
        def run(argv):
            return subprocess.run([flwr_executable(), *argv[1:]], env=env, capture_output=True, text=True,
                                  timeout=timeout)
    ids = []
    for key in public_keys:
        r = run(["flwr", "supernode", "register", str(key), connection, "--format", "json"])
        try:
            doc = json.loads(r.stdout)
        except (TypeError, ValueError):
            doc = {}
        if r.returncode == 0 and doc.get("success") and "node-id" in doc:
            ids.append(int(doc["node-id"]))
            continue
        # flwr 1.42 exits with 0 when the SuperLink refuses (``"success": false``)
        why = doc.get("error-message") or ((r.stdout or "") + (r.stderr or "")).strip()[-600:]
        hint = ""
        if "Connection to the SuperLink is unavailable" in why:
            hint = (f"; with TLS, check that root-certificates of connection {connection} in "
                    "$FLWR_HOME/config.toml is the CA that signed the SuperLink's certificate, and that "
                    "the certificate names the address")
        raise FlowerError(f"flwr supernode register {key} {connection} failed (exit code {r.returncode}): "
                          f"{why.strip()}{hint}")
    return ids


def join_address(host: str, port: int) -> str:
    """``HOST:PORT``, with an IPv6 address in brackets (``[::1]:PORT``)."""
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main_keys(argv: list[str] | None = None) -> int:
    """``python -m emfl flower-keys --dir DIR --host HOST [--host HOST ...] --nodes N``: a test CA,
    a server certificate for the hosts and N SuperNode key pairs; prints which file goes where and
    the commands of each machine.  Returns the exit status (0; 2 for wrong arguments)."""
    p = argparse.ArgumentParser(prog="python -m emfl flower-keys",
                                description="Test TLS certificates and SuperNode keys for a Flower deployment "
                                            "on several machines.")
    p.add_argument("--dir", required=True, help="folder to write into (made if missing)")
    p.add_argument("--host", action="append", required=True,
                   help="an address or name the SuperNodes dial (repeat for several; add 127.0.0.1 if the "
                        "SuperLink listens on 0.0.0.0)")
    p.add_argument("--nodes", type=int, required=True, help="how many SuperNode key pairs")
    p.add_argument("--days", type=int, default=365, help="validity of the certificates (default 365)")
    try:
        args = p.parse_args(argv)
    except SystemExit as err:
        return int(err.code or 0)
    if args.nodes < 0:
        print(f"error: --nodes must be at least 0; got {args.nodes}", file=sys.stderr)
        return 2
    folder = Path(args.dir).expanduser().resolve()
    try:
        certs = make_certificates(folder, args.host, days=args.days)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    nodes = [make_node_key(folder, f"node{i}") for i in range(args.nodes)]
    hosts = list(dict.fromkeys(args.host))
    print(f"wrote into {folder}:")
    print("  ca.pem, ca.key          the test CA (ca.key signs certificates: keep it off the machines)")
    print(f"  server.pem, server.key  the SuperLink's certificate for {', '.join(hosts)}, and its key")
    for i in range(len(nodes)):
        print(f"  node{i}.key, node{i}.pub  SuperNode {i}'s private and public key")
    print("to the SuperLink machine: ca.pem server.pem server.key"
          + "".join(f" node{i}.pub" for i in range(len(nodes))))
    for i in range(len(nodes)):
        print(f"to SuperNode {i}'s machine: ca.pem node{i}.key")
    print("to the machine you run flwr on: ca.pem")
    host, port = hosts[0], DEFAULT_PORT
    address = join_address(host, port)
    short = {str(v): Path(v).name for v in certs.values()}
    print("on the SuperLink machine (in the folder with its files):")
    print("  " + " ".join(short.get(a, a) for a in superlink_args(host, port, certs, node_auth=True)))
    print("on the machine you run flwr on: this connection in $FLWR_HOME/config.toml "
          "(root-certificates: where ca.pem is there)")
    for line in connection_toml("emfl", address, folder / "ca.pem").splitlines():
        print(f"    {line}".rstrip())
    for i in range(len(nodes)):
        print(f"  flwr supernode register node{i}.pub emfl")
    if nodes:
        print("  (before the SuperNodes start: a SuperNode whose key is not registered is refused and exits)")
    for i in range(len(nodes)):
        print(f"on SuperNode {i}'s machine:")
        print("  " + " ".join(supernode_args(address, "ca.pem", f"node{i}.key")))
    print("The SuperLink's port also serves its Control API (flwr run, flwr supernode register), which has no "
          "user accounts in Flower's open-source build: let only your own machines reach it (a firewall).")
    return 0
