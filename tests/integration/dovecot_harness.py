"""A private Dovecot (LMTP + IMAP + Sieve) for integration tests, configured with the
shipped deploy/dovecot/99-cm-gateway.conf and shared-inbox.sieve.

Everything lives in one temp root: the config, base_dir (sockets, pid), state, the log
and the mailboxes (``ROOT/mail/<user>``, Maildir). Listeners are on loopback at free
ports; no system service or system config file is touched. Any user logs in over IMAP,
or over SASL through the auth service's TCP listener (``auth_port``, what Postfix's
``smtpd_sasl_path = inet:...`` talks to), with the password ``test`` (static, test only).

Run as a normal user, every Dovecot process runs as that user. Run as root (CI
containers), Dovecot insists on unprivileged users: its own ``dovecot`` and ``dovenull``
accounts (created by Debian's package) run the services and own the mail.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["DEPLOY_DIR", "DovecotInstance", "dovecot_available", "running_dovecot"]

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "dovecot"
PASSWORD = "test"


def dovecot_available() -> bool:
    """Debian's dovecot with the LMTP, IMAP and Sieve parts is installed."""
    return (
        all(
            shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()
            for tool in ("dovecot", "sievec")
        )
        and Path("/usr/lib/dovecot/lmtp").exists()
        and Path("/usr/lib/dovecot/imap").exists()
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DovecotInstance:
    root: Path
    lmtp_port: int
    imap_port: int
    auth_port: int = 0  # Dovecot's SASL service for Postfix (smtpd_sasl_type = dovecot)

    @property
    def lmtp_url(self) -> str:
        return f"lmtp://127.0.0.1:{self.lmtp_port}"

    @property
    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _accounts() -> tuple[str, str, str, str]:
    """(internal user, its group, login user, mail user) for this process."""
    if os.getuid() != 0:
        me = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        return me, group, me, me
    return "dovecot", "dovecot", "dovenull", "dovecot"


def _config(root: Path, lmtp_port: int, imap_port: int, sieve: Path, auth_port: int) -> str:
    internal, group, login, mail_user = _accounts()
    snippet = (DEPLOY_DIR / "99-cm-gateway.conf").read_text()
    assert snippet.count("port = 24\n") == 1, "99-cm-gateway.conf: expected one 'port = 24'"
    before = "sieve_before = /etc/dovecot/sieve/shared-inbox.sieve"
    assert snippet.count(before) == 1, f"99-cm-gateway.conf: expected one {before!r}"
    snippet = snippet.replace("port = 24\n", f"port = {lmtp_port}\n")
    snippet = snippet.replace(before, f"sieve_before = {sieve}")
    harness = f"""
base_dir = {root}/run
state_dir = {root}/state
instance_name = cmgw-test-{lmtp_port}
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = {internal}
default_internal_group = {group}
default_login_user = {login}
first_valid_uid = 1
mail_location = maildir:{root}/mail/%n
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={mail_user} gid={mail_user if os.getuid() == 0 else group} home={root}/mail/%n
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service auth {{
  inet_listener {{
    address = 127.0.0.1
    port = {auth_port}
  }}
}}
service pop3-login {{
  chroot =
}}
service submission-login {{
  chroot =
}}
"""
    return harness + snippet


@contextlib.contextmanager
def running_dovecot() -> Iterator[DovecotInstance]:
    """Start a private Dovecot; stop it (and remove its files) afterwards."""
    if not dovecot_available():
        pytest.skip("Debian's dovecot-lmtpd, dovecot-imapd and dovecot-sieve are needed")
    root = Path(tempfile.mkdtemp(prefix="cmgw-dc-"))
    for sub in ("run", "state", "mail", "sieve"):
        (root / sub).mkdir()
    sieve = root / "sieve" / "shared-inbox.sieve"
    shutil.copy(DEPLOY_DIR / "shared-inbox.sieve", sieve)
    # Global scripts must be compiled ahead: Dovecot may not write next to them.
    subprocess.run(["sievec", str(sieve)], check=True, capture_output=True)
    if os.getuid() == 0:
        os.chmod(root, 0o755)
        shutil.chown(root / "mail", "dovecot", "dovecot")
    instance = DovecotInstance(root, _free_port(), _free_port(), _free_port())
    config = root / "dovecot.conf"
    config.write_text(
        _config(root, instance.lmtp_port, instance.imap_port, sieve, instance.auth_port)
    )
    dovecot = shutil.which("dovecot") or "/usr/sbin/dovecot"
    # Output to a file, not a pipe: the daemon inherits it, and a pipe would never close.
    with open(root / "start.log", "wb") as out:
        started = subprocess.run(
            [dovecot, "-c", str(config)], stdout=out, stderr=subprocess.STDOUT, timeout=30
        )
    if started.returncode != 0:
        text = (root / "start.log").read_text(errors="replace")
        raise RuntimeError(f"dovecot did not start: {text}\n{instance.log}")
    pid_file = root / "run" / "master.pid"
    try:
        deadline = time.monotonic() + 15
        ports = (instance.lmtp_port, instance.imap_port, instance.auth_port)
        while not all(_listening(port) for port in ports if port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"dovecot is not listening:\n{instance.log}")
            time.sleep(0.05)
        yield instance
    finally:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.05)
        shutil.rmtree(root, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
