"""Certificates and keys for the local control plane, made with the openssl CLI.

One CA signs the API server's serving certificate and the admin's client certificate
(group system:masters); a separate RSA key pair signs ServiceAccount tokens.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

API_SERVER_SANS = (
    "IP:127.0.0.1",
    "IP:10.96.0.1",
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise RuntimeError("the openssl command is needed to make the cluster's certificates")
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {done.stderr.strip()}")


def _signed(pki: Path, name: str, subject: str, extensions: str) -> None:
    _openssl("genrsa", "-out", f"{name}.key", "2048", cwd=pki)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    (pki / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3650",
        "-sha256",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.crt",
        cwd=pki,
    )


def make_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("genrsa", "-out", "ca.key", "2048", cwd=pki)
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=imageserver-sre-local-ca",
        "-days",
        "3650",
        "-sha256",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        "ca.crt",
        cwd=pki,
    )
    _signed(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={','.join(API_SERVER_SANS)}\n",
    )
    _signed(
        pki,
        "admin",
        "/O=system:masters/CN=kubernetes-admin",
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def admin_kubeconfig(pki: Path, server: str) -> str:
    """A self-contained kubeconfig (certificates embedded) for the cluster admin."""
    return f"""apiVersion: v1
kind: Config
clusters:
- name: imageserver-sre
  cluster:
    server: {server}
    certificate-authority-data: {_b64(pki / "ca.crt")}
users:
- name: admin
  user:
    client-certificate-data: {_b64(pki / "admin.crt")}
    client-key-data: {_b64(pki / "admin.key")}
contexts:
- name: imageserver-sre
  context:
    cluster: imageserver-sre
    user: admin
current-context: imageserver-sre
"""


def client_credentials(pki: Path, name: str, common_name: str, organization: str = "") -> None:
    """A client certificate `<name>.crt` (and key) signed by the cluster CA, once."""
    if (pki / f"{name}.crt").exists():
        return
    subject = (f"/O={organization}" if organization else "") + f"/CN={common_name}"
    _signed(
        pki,
        name,
        subject,
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
