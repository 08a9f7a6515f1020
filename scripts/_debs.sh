# Sourced: install the Debian packages the tests need (postfix for smtp-source/smtp-sink
# and the content-filter and milter tests, swaks, redis-server, miltertest), without prompts.
set -euo pipefail
need=()
command -v postfix >/dev/null 2>&1 || [ -x /usr/sbin/postfix ] || need+=(postfix)
command -v swaks >/dev/null 2>&1 || need+=(swaks)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# The Dovecot shared-inbox test (LMTP + IMAP + Sieve, started privately by the test).
[ -x /usr/lib/dovecot/lmtp ] || need+=(dovecot-lmtpd)
[ -x /usr/lib/dovecot/imap ] || need+=(dovecot-imapd)
command -v sievec >/dev/null 2>&1 || need+=(dovecot-sieve)
# The milter front's conformance tests (OpenDKIM's Lua-scripted MTA side).
command -v miltertest >/dev/null 2>&1 || need+=(miltertest)
if [ "${#need[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "cm-gateway: installing Debian packages: ${need[*]} ..." >&2
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >&2
fi
