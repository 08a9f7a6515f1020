#!/bin/sh
# The Postfix of compose.yaml: an after-queue content filter built from the very snippets
# in deploy/postfix/ (the integration tests run real Postfix from the same files), with
# the loopback addresses swapped for the compose network, and a catch-all Maildir for the
# demo domains. Then runs CMD (`postfix start-fg`).
#
# `entrypoint.sh configure` only writes the configuration (the tests run it against a
# temporary POSTFIX_CONFIG_DIR).
set -eu

conf=${POSTFIX_CONFIG_DIR:-/etc/postfix}
templates=${POSTFIX_TEMPLATES:-/usr/share/postfix}
snippets=${CMGW_SNIPPETS:-/usr/local/share/cm-gateway/postfix}
gateway_host=${GATEWAY_HOST:-gateway}
gateway_port=${GATEWAY_PORT:-2525}
gateway_network=${GATEWAY_NETWORK:?set GATEWAY_NETWORK to the network the gateway connects from}
reinject_port=${REINJECT_PORT:-10026}
mail_domains=${MAIL_DOMAINS:-example.com example.org}
mail_hostname=${MAIL_HOSTNAME:-mx.example.com}

# Copy $1 to stdout with the one occurrence of $2 replaced by $3; fail if $2 is not there
# exactly once (the snippets changed: better no mail server than a wrong one).
replace_once() {
    awk -v old="$2" -v new="$3" '
        { n = index($0, old)
          if (n) { hits++; $0 = substr($0, 1, n - 1) new substr($0, n + length(old)) }
          print }
        END { if (hits != 1) { printf "entrypoint: expected one \"%s\" in %s\n", old, FILENAME > "/dev/stderr"; exit 1 } }
    ' "$1"
}

# Rebuilt from Debian's templates at every start, so a restarted container never
# appends the snippets twice.
cp "$templates/main.cf.debian" "$conf/main.cf"
cp "$templates/master.cf.dist" "$conf/master.cf"

{
    echo
    echo "# --- deploy/postfix/main.cf.snippet (gateway at [$gateway_host]:$gateway_port) ---"
    replace_once "$snippets/main.cf.snippet" "[127.0.0.1]:10025" "[$gateway_host]:$gateway_port"
} >> "$conf/main.cf"

tmp="$conf/master.cf.snippet.$$"
replace_once "$snippets/master.cf.snippet" "127.0.0.1:10026" "$reinject_port" > "$tmp"
replace_once "$tmp" "-o mynetworks=127.0.0.0/8" "-o mynetworks=$gateway_network" > "$tmp.1"
replace_once "$tmp.1" "-o smtpd_authorized_xforward_hosts=127.0.0.0/8" \
    "-o smtpd_authorized_xforward_hosts=$gateway_network" > "$tmp.2"
{
    echo
    echo "# --- deploy/postfix/master.cf.snippet (reinjection on :$reinject_port for $gateway_network) ---"
    cat "$tmp.2"
} >> "$conf/master.cf"
rm -f "$tmp" "$tmp.1" "$tmp.2"

# The demo around the filter: every recipient in $mail_domains ends in one catch-all
# Maildir (/var/mail/vhosts/catchall/), and nothing leaves for the Internet. Appended as
# text (not `postconf -e`, which orders new keys by hash) so every start writes the same file.
cat >> "$conf/main.cf" <<EOF

# --- cm-gateway demo (deploy/container/postfix/entrypoint.sh) ---
myhostname = $mail_hostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = all
inet_protocols = ipv4
mynetworks = 127.0.0.0/8 $gateway_network
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_tls_security_level = none
virtual_mailbox_domains = $mail_domains
virtual_mailbox_base = /var/mail/vhosts
virtual_mailbox_maps = static:catchall/
virtual_uid_maps = static:5000
virtual_gid_maps = static:5000
default_transport = error:5.7.1 this demo delivers to its own domains only
relay_transport = error:5.7.1 this demo delivers to its own domains only
# Docker's DNS answers for service names; native also reads /etc/hosts.
smtp_host_lookup = dns, native
maillog_file = /dev/stdout
EOF
# A chroot would need copies of resolv.conf and friends; the container is the sandbox.
postconf -c "$conf" -F '*/*/chroot = n'

if [ "${1:-}" = configure ]; then
    exit 0
fi
exec "$@"
