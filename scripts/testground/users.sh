#!/bin/bash
# users.sh USER... : Unix test users who can ssh to the test hosts with their own keys.
# Run as root. Idempotent (an existing user keeps account, uid and key). For each user:
#   - the account (useradd -m, bash), its password field "*" instead of "!" (see below)
#   - ~/.ssh/id_ed25519 (no passphrase), and its public key in ~/.ssh/authorized_keys: /home
#     is shared by all test hosts, so this one file authorizes the user everywhere
#   - the test hosts' keys in ~/.ssh/known_hosts (older lines for their addresses replaced),
#     if hosts.sh has run; run users.sh again after hosts.sh made new host keys
# All of them are also in the group "hqteam" (supplementary; TEAM_GROUP=name to change it),
# for limits per Unix group.
# Remove them with REMOVE_USERS="..." teardown.sh (REMOVE_GROUP=hqteam removes the group).
set -euo pipefail
here=$(dirname "$0")
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
need_root
[ $# -gt 0 ] || { echo "usage: $0 USER..." >&2; exit 2; }
"$REPO/scripts/install-system-deps.sh" ssh   # ssh-keygen

team=${TEAM_GROUP:-hqteam}
getent group "$team" >/dev/null || groupadd "$team"
for u in "$@"; do
    id "$u" >/dev/null 2>&1 || useradd -m -s /bin/bash "$u"
    id -nG "$u" | tr ' ' '\n' | grep -qxF "$team" || usermod -aG "$team" "$u"
    # useradd leaves the password field "!" (locked). sshd without PAM refuses locked accounts
    # even for public-key logins; "*" means "no password can match" without "locked".
    case "$(getent shadow "$u" | cut -d: -f2)" in '!'*) usermod -p '*' "$u" ;; esac
    h=$(getent passwd "$u" | cut -d: -f6)
    install -d -m 700 -o "$u" -g "$u" "$h/.ssh"
    if [ ! -f "$h/.ssh/id_ed25519" ]; then
        # made by the user, so that the key belongs to them from the start
        runuser -u "$u" -- ssh-keygen -q -t ed25519 -N '' -C "$u@hq-test" -f "$h/.ssh/id_ed25519"
    fi
    keys=$h/.ssh/authorized_keys
    touch "$keys"
    grep -qxF "$(cat "$h/.ssh/id_ed25519.pub")" "$keys" || cat "$h/.ssh/id_ed25519.pub" >> "$keys"
    chown "$u:" "$keys"
    chmod 600 "$keys"
    if [ -f "$STATE/known_hosts" ]; then
        kh=$h/.ssh/known_hosts
        touch "$kh"
        # drop lines for the test hosts' addresses (keys of an older test ground), then add
        awk 'NR == FNR {drop[$1] = 1; next} !($1 in drop)' "$STATE/known_hosts" "$kh" > "$kh.tmp"
        cat "$STATE/known_hosts" >> "$kh.tmp"
        mv "$kh.tmp" "$kh"
        chown "$u:" "$kh"
        chmod 644 "$kh"
    fi
    echo "$u $(id -u "$u") $h"
done
