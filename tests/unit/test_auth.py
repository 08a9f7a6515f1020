"""AUTH users file and password hashes."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.smtp import Authenticator, load_users
from gateway.smtp._auth import hash_password, verify_password


@pytest.mark.parametrize(("scheme", "cost"), [("scrypt", 4), ("pbkdf2-sha256", 1000)])
def test_hash_then_verify_round_trip(scheme: str, cost: int):
    """A fresh hash verifies its own password and nothing else; two hashes of one
    password differ (random salt)."""
    stored = hash_password("s3cret pässword", scheme=scheme, cost=cost)
    assert stored.startswith(f"${scheme}$")
    assert verify_password("s3cret pässword".encode(), stored)
    assert not verify_password(b"s3cret password", stored)
    assert not verify_password(b"", stored)
    assert hash_password("x", scheme=scheme, cost=cost) != hash_password(
        "x", scheme=scheme, cost=cost
    )


def test_tampered_or_malformed_hashes_never_verify():
    """Changing one character of the key, or an unknown scheme, makes verification fail."""
    stored = hash_password("pw", scheme="pbkdf2-sha256", cost=1000)
    prefix, key = stored.rsplit("$", 1)
    flipped = ("A" if key[0] != "A" else "B") + key[1:]
    assert not verify_password(b"pw", f"{prefix}${flipped}")
    assert not verify_password(b"pw", "$md5$abc$def")
    assert not verify_password(b"pw", "plaintext")


def test_passlib_adapted_base64_is_accepted():
    """A pbkdf2-sha256 hash in passlib's spelling ('.' for '+', no padding) verifies."""
    salt = bytes(range(251, 256)) + b"\xfb\xff" * 6  # yields '+' and '/' in base64
    key = hashlib.pbkdf2_hmac("sha256", b"pw", salt, 1000)

    def ab64(data: bytes) -> str:
        return base64.b64encode(data).decode().rstrip("=").replace("+", ".")

    assert "." in ab64(salt) + ab64(key)
    assert verify_password(b"pw", f"$pbkdf2-sha256$1000${ab64(salt)}${ab64(key)}")


def test_users_file_is_read_with_comments_and_blank_lines(tmp_path: Path):
    """'user:hash' lines are read; '#' comments and blank lines are skipped; a user
    name may contain ':' (the last ':' separates the hash)."""
    one, two = (hash_password(p, cost=4) for p in ("a", "b"))
    path = tmp_path / "users"
    path.write_text(f"# relays\n\nrelay1:{one}\n  weird:name:{two}  \n", encoding="utf-8")
    assert load_users(path) == {"relay1": one, "weird:name": two}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("no-colon-here", "expected user:hash"),
        ("bob:$md5$x$y", "not a $scrypt$ or $pbkdf2-sha256$ hash"),
        ("bob:$pbkdf2-sha256$10$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5", "iterations"),
        ("bob:$scrypt$ln=30,r=8,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5", "out of range"),
    ],
)
def test_bad_users_file_line_is_reported_with_file_and_line(
    tmp_path: Path, line: str, message: str
):
    """A malformed line raises ConfigError naming the file, the line number and why."""
    path = tmp_path / "users"
    path.write_text(f"# header\n{line}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_users(path)
    assert err.value.file == str(path) and err.value.where == "2"
    assert message in err.value.message


def test_duplicate_user_and_missing_file_are_config_errors(tmp_path: Path):
    """A user listed twice, or a users file that cannot be read, is a ConfigError."""
    stored = hash_password("a", cost=4)
    path = tmp_path / "users"
    path.write_text(f"bob:{stored}\nbob:{stored}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="listed twice"):
        load_users(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_users(tmp_path / "missing")


async def test_authenticator_verifies_known_users_only():
    """verify() is True for the right password of a listed user; False for a wrong
    password, an unknown user (still checked against a decoy hash) or no users at all."""
    auth = Authenticator({"relay1": hash_password("pw", cost=4)})
    assert await auth.verify("relay1", b"pw")
    assert not await auth.verify("relay1", b"nope")
    assert not await auth.verify("someone", b"pw")
    assert not await Authenticator({}).verify("relay1", b"pw")


def test_hash_command_reads_password_from_stdin_and_prints_user_line(tmp_path: Path):
    """`python -m gateway.smtp._auth hash --user NAME` reads the password from stdin and
    prints a line the users file accepts; `check` validates the file."""
    run = subprocess.run(
        [sys.executable, "-m", "gateway.smtp._auth", "hash", "--user", "relay1", "--cost", "4"],
        input="correct horse\n",
        capture_output=True,
        text=True,
        check=True,
    )
    line = run.stdout.strip()
    assert line.startswith("relay1:$scrypt$ln=4,")
    assert "correct horse" not in run.stdout + run.stderr
    path = tmp_path / "users"
    path.write_text(line + "\n", encoding="utf-8")
    assert verify_password(b"correct horse", load_users(path)["relay1"])
    check = subprocess.run(
        [sys.executable, "-m", "gateway.smtp._auth", "check", str(path)],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and "1 user(s)" in check.stdout


def test_hash_command_refuses_empty_password():
    """An empty stdin is refused (exit 2) rather than hashing the empty string."""
    run = subprocess.run(
        [sys.executable, "-m", "gateway.smtp._auth", "hash"],
        input="",
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "empty password" in run.stderr
