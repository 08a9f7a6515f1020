# shared-inbox.sieve: files mail by the headers cm-gateway's shipped rule set
# (rules/shared-inbox-triage.yaml) writes, for a Dovecot shared inbox fed over LMTP.
#
#   X-Triage-Priority: high   -> the message is flagged (\Flagged: the star in mail clients)
#   X-Triage-Queue: <queue>   -> the message goes into the folder of that name, created
#                                on first use; "general" (and no queue) stays in INBOX
#
# Install it as a script that runs before each user's own (dovecot/conf.d/90-sieve.conf:
# sieve_before), compile it with `sievec`, and see deploy/dovecot/README.md. Only the
# queue names listed here create folders: a header value someone made up cannot.
require ["fileinto", "imap4flags", "mailbox"];

if header :is "X-Triage-Priority" "high" {
  addflag "\\Flagged";
}

if header :is "X-Triage-Queue" "complaints" {
  fileinto :create "complaints";
} elsif header :is "X-Triage-Queue" "finance" {
  fileinto :create "finance";
} elsif header :is "X-Triage-Queue" "customer-service" {
  fileinto :create "customer-service";
} elsif header :is "X-Triage-Queue" "it" {
  fileinto :create "it";
} elsif header :is "X-Triage-Queue" "hr" {
  fileinto :create "hr";
} elsif header :is "X-Triage-Queue" "legal" {
  fileinto :create "legal";
} elsif header :is "X-Triage-Queue" "compliance" {
  fileinto :create "compliance";
} elsif header :is "X-Triage-Queue" "notifications" {
  fileinto :create "notifications";
} elsif header :is "X-Triage-Queue" "human-review" {
  fileinto :create "human-review";
}
