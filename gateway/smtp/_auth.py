"""SMTP AUTH users: the ``smtp.auth_users_file`` and its password hashes.

The file has one ``user:hash`` per line; blank lines and lines starting with ``#`` are
ignored. A hash is one of (passlib-compatible spellings):

    $scrypt$ln=<log2 N>,r=<r>,p=<p>$<salt b64>$<key b64>
    $pbkdf2-sha256$<iterations>$<salt b64>$<key b64>

Make one with ``python -m gateway.smtp._auth hash`` (reads the password from stdin, so it
never shows up in ``ps`` or the shell history)::

    printf '%s' 's3cret' | python -m gateway.smtp._auth hash --user relay1 >> users.txt

Checking a password is deliberately slow, so it runs in a worker thread (hashlib
releases the GIL) with a small concurrency cap: AUTH never stalls the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from gateway.errors import ConfigError
from gateway.textfile import read_text

__all__ = [
    "Authenticator",
    "hash_password",
    "load_users",
    "main",
    "verify_password",
]

DEFAULT_SCHEME = "scrypt"
SCRYPT_LN = 14  # N = 16384, r = 8: 16 MiB and ~0.1 s per check on a typical core
PBKDF2_ITERATIONS = 600_000  # OWASP 2023 for PBKDF2-HMAC-SHA256
_MAX_SCRYPT_LN = 20
_MAX_ITERATIONS = 10_000_000
_SCRYPT = re.compile(r"^\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d{1,2})\$([^$]+)\$([^$]+)$")
_PBKDF2 = re.compile(r"^\$pbkdf2-sha256\$(\d{1,8})\$([^$]+)\$([^$]+)$")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    # passlib writes "adapted" base64 ('.' for '+', no padding); accept both spellings.
    text = text.replace(".", "+")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, *, scheme: str = DEFAULT_SCHEME, cost: int | None = None) -> str:
    """A new salted hash of ``password`` (``cost``: scrypt log2 N or PBKDF2 iterations)."""
    salt = os.urandom(16)
    secret = password.encode("utf-8")
    if scheme == "scrypt":
        ln = SCRYPT_LN if cost is None else cost
        key = hashlib.scrypt(secret, salt=salt, n=2**ln, r=8, p=1, maxmem=2**27, dklen=32)
        return f"$scrypt$ln={ln},r=8,p=1${_b64(salt)}${_b64(key)}"
    if scheme == "pbkdf2-sha256":
        iterations = PBKDF2_ITERATIONS if cost is None else cost
        key = hashlib.pbkdf2_hmac("sha256", secret, salt, iterations)
        return f"$pbkdf2-sha256${iterations}${_b64(salt)}${_b64(key)}"
    raise ValueError(f"unknown scheme {scheme!r} (scrypt or pbkdf2-sha256)")


def check_hash_format(stored: str) -> str | None:
    """None when ``stored`` is a hash this module can verify, else what is wrong."""
    if m := _SCRYPT.match(stored):
        ln, r, p = (int(g) for g in m.group(1, 2, 3))
        if not 1 <= ln <= _MAX_SCRYPT_LN or not 1 <= r <= 32 or not 1 <= p <= 16:
            return f"scrypt parameters out of range (ln <= {_MAX_SCRYPT_LN})"
        salt, key = m.group(4, 5)
    elif m := _PBKDF2.match(stored):
        if not 1_000 <= int(m.group(1)) <= _MAX_ITERATIONS:
            return f"pbkdf2 iterations must be between 1000 and {_MAX_ITERATIONS}"
        salt, key = m.group(2, 3)
    else:
        return "not a $scrypt$ or $pbkdf2-sha256$ hash"
    try:
        if len(_unb64(salt)) < 8 or len(_unb64(key)) < 16:
            return "salt or key too short"
    except (binascii.Error, ValueError):
        return "salt or key is not base64"
    return None


def verify_password(password: bytes, stored: str) -> bool:
    """True when ``password`` matches ``stored`` (constant-time comparison). Blocking."""
    if check_hash_format(stored) is not None:
        return False
    if m := _SCRYPT.match(stored):
        ln, r, p = (int(g) for g in m.group(1, 2, 3))
        salt, expected = _unb64(m.group(4)), _unb64(m.group(5))
        maxmem = 128 * r * (2**ln) + 2**24
        actual = hashlib.scrypt(
            password, salt=salt, n=2**ln, r=r, p=p, maxmem=maxmem, dklen=len(expected)
        )
    elif m := _PBKDF2.match(stored):
        salt, expected = _unb64(m.group(2)), _unb64(m.group(3))
        actual = hashlib.pbkdf2_hmac("sha256", password, salt, int(m.group(1)), dklen=len(expected))
    else:  # pragma: no cover - check_hash_format rejected it above
        return False
    return hmac.compare_digest(actual, expected)


def load_users(path: str | Path) -> dict[str, str]:
    """Read a users file: ``{user: hash}``. Raises ConfigError naming file and line."""
    file = str(path)
    text = read_text(path)
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        # Hashes never contain ':', user names might: split on the last one.
        user, sep, stored = line.rpartition(":")
        if not sep or not user:
            raise ConfigError("expected user:hash", file=file, where=str(number))
        problem = check_hash_format(stored)
        if problem:
            raise ConfigError(f"user {user!r}: {problem}", file=file, where=str(number))
        if user in users:
            raise ConfigError(f"user {user!r} listed twice", file=file, where=str(number))
        users[user] = stored
    return users


class Authenticator:
    """Checks SMTP AUTH credentials against a users mapping, off the event loop."""

    def __init__(self, users: Mapping[str, str], *, concurrency: int = 2) -> None:
        self._users = dict(users)
        # An unknown user is checked against some real hash, so that the answer takes
        # as long as for a known user and does not reveal which names exist.
        self._decoy = next(iter(self._users.values()), None)
        self._slots = asyncio.Semaphore(concurrency)

    @classmethod
    def from_file(cls, path: str | Path) -> Authenticator:
        return cls(load_users(path))

    def __len__(self) -> int:
        return len(self._users)

    async def verify(self, user: str, password: bytes) -> bool:
        """True when ``user`` exists and ``password`` is theirs."""
        stored = self._users.get(user)
        candidate = stored if stored is not None else self._decoy
        if candidate is None:
            return False
        async with self._slots:
            ok = await asyncio.to_thread(verify_password, password, candidate)
        return ok and stored is not None


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gateway.smtp._auth hash [--user NAME] [--scheme ...]``: password from stdin."""
    parser = argparse.ArgumentParser(prog="python -m gateway.smtp._auth")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("hash", help="hash a password read from stdin (first line)")
    p.add_argument("--user", help="print user:hash, ready for the users file")
    p.add_argument("--scheme", choices=("scrypt", "pbkdf2-sha256"), default=DEFAULT_SCHEME)
    p.add_argument("--cost", type=int, help="scrypt log2 N, or PBKDF2 iterations")
    p = sub.add_parser("check", help="validate a users file")
    p.add_argument("file")
    args = parser.parse_args(argv)
    if args.command == "check":
        try:
            users = load_users(args.file)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{args.file}: {len(users)} user(s), all hashes valid")
        return 0
    line = sys.stdin.readline()
    password = line.removesuffix("\n").removesuffix("\r")
    if not password:
        print("error: empty password on stdin", file=sys.stderr)
        return 2
    if args.user is not None and (":" in args.user or not args.user.strip()):
        print("error: --user must be non-empty and contain no ':'", file=sys.stderr)
        return 2
    try:
        stored = hash_password(password, scheme=args.scheme, cost=args.cost)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if check_hash_format(stored) is not None:
        print(f"error: {check_hash_format(stored)}", file=sys.stderr)
        return 2
    print(f"{args.user}:{stored}" if args.user is not None else stored)
    return 0


if __name__ == "__main__":
    sys.exit(main())
