#!/bin/bash
# teardown.sh : remove the test ground. Run as root. Idempotent.
#   - every hqnodeN namespace: kill -9 all its processes (sshd, sessions, jobs), delete it
#   - the cables hqvN and the bridge hqbr0
#   - the state directory's files (host keys, sshd configs and logs, host list, known_hosts)
#   - REMOVE_USERS="hqalice hqbob": kill those users' processes, then userdel -r
#   - REMOVE_GROUP=hqteam: groupdel (the group users.sh puts every test user in)
# Keeps the "unreachable 10.200.0.0/16" route of hosts.sh: a safety net that keeps 10.200.x
# from ever leaving this machine (remove by hand: ip route del unreachable 10.200.0.0/16).
set -uo pipefail
here=$(dirname "$0")
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
need_root

for ns in $(ip netns list | awk '$1 ~ /^hqnode[0-9]+$/ {print $1}'); do
    ip netns pids "$ns" | xargs -r kill -9
    for _ in $(seq 100); do [ -z "$(ip netns pids "$ns")" ] && break; sleep 0.05; done
    ip netns del "$ns"
done
for link in $(ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); print $2}' | grep -E '^hqv[0-9]+$'); do
    ip link del "$link" 2>/dev/null
done
ip link del "$BRIDGE" 2>/dev/null

# Only what hosts.sh writes, never the whole of a directory someone pointed HQ_TESTNET_DIR at.
if [ -d "$STATE" ]; then
    for dir in "$STATE"/hqnode*/; do
        [ -d "$dir" ] || continue
        rm -f "$dir"ssh_host_ed25519_key "$dir"ssh_host_ed25519_key.pub "$dir"sshd_config \
              "$dir"sshd.pid "$dir"sshd.log
        rmdir "$dir" 2>/dev/null
    done
    rm -f "$STATE/hosts" "$STATE/known_hosts" "$STATE/hosts.new" "$STATE/known_hosts.new"
    rmdir "$STATE" 2>/dev/null
fi

for u in ${REMOVE_USERS:-}; do
    id "$u" >/dev/null 2>&1 || continue
    ps -o pid= -u "$u" | xargs -r kill -9
    for _ in $(seq 40); do [ -z "$(ps -o pid= -u "$u")" ] && break; sleep 0.05; done
    userdel -r "$u" 2>/dev/null && echo "user $u removed"
done
if [ -n "${REMOVE_GROUP:-}" ] && getent group "$REMOVE_GROUP" >/dev/null; then
    groupdel "$REMOVE_GROUP" && echo "group $REMOVE_GROUP removed"
fi
exit 0
