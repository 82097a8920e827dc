#!/bin/bash
# hosts.sh [N] : make (or repair) the ssh test hosts hqnode1..N (default 3). Run as root.
#
# Each host is a network namespace on bridge hqbr0 with its own sshd on port 22 and its own
# hostname (a UTS namespace), sharing this machine's filesystem, users and /home.
#   hqnodeI = 10.200.0.(10+I)    e.g. hqnode1 = 10.200.0.11; this machine = 10.200.0.1
# Idempotent: a second run starts only what is missing, so it is also "boot" after
# hostctl.sh kill/crash and "heal" after a partition.
#
# Writes, in ${HQ_TESTNET_DIR:-/tmp/hq-testnet}:
#   hosts          one line per host: NAME ADDRESS
#   known_hosts    the hosts' ed25519 keys, for ssh -o UserKnownHostsFile=... and paramiko
#   hqnodeI/       host key (kept across reboots, so known_hosts stays valid), sshd_config,
#                  sshd.log
# Undo with teardown.sh; test users come from users.sh.
set -euo pipefail
here=$(dirname "$0")
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
need_root
N=${1:-3}
case $N in ''|*[!0-9]*|0) echo "usage: $0 [N >= 1]" >&2; exit 2 ;; esac

# CI starts from a fresh machine: sshd (openssh-server) and ip/ss (iproute2). A no-op when
# they are there.
"$REPO/scripts/install-system-deps.sh" ssh net

mkdir -p "$STATE" /run/sshd   # /run/sshd: sshd's privilege-separation directory
chmod 755 "$STATE"            # test users read hosts and known_hosts from here

# Safety net: should the bridge ever be missing, 10.200.x must not fall through to the
# default route and leave this machine. teardown.sh keeps this route on purpose.
ip route replace unreachable 10.200.0.0/16 metric 4000
ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
ip addr replace "$NET.1/24" dev "$BRIDGE"
ip link set "$BRIDGE" up

: > "$STATE/hosts.new"
: > "$STATE/known_hosts.new"
for i in $(seq 1 "$N"); do
    ns=$(host_ns "$i") ip=$(host_ip "$i") link=$(host_link "$i") dir=$STATE/$(host_ns "$i")
    # A fixed MAC per host: after a "reboot" the peers' ARP caches still hold the right one.
    mac=$(printf '02:48:51:00:00:%02x' $((10 + i)))
    mkdir -p "$dir"
    [ -e "/run/netns/$ns" ] || ip netns add "$ns"
    if ! ip -n "$ns" link show eth0 >/dev/null 2>&1; then
        # (re)lay the cable; a half left over from a crash would block the name
        ip link del "$link" 2>/dev/null || true
        ip link add "$link" type veth peer name eth0 address "$mac" netns "$ns"
    fi
    ip link set "$link" master "$BRIDGE" up   # "up" also heals a partition
    ip -n "$ns" link set lo up
    ip -n "$ns" addr replace "$ip/24" dev eth0
    ip -n "$ns" link set eth0 up              # no default route inside: only 10.200.0.0/24

    [ -f "$dir/ssh_host_ed25519_key" ] ||
        ssh-keygen -q -t ed25519 -N '' -C "$ns" -f "$dir/ssh_host_ed25519_key"
    # UsePAM no: the test users have no password; sshd then refuses accounts whose password
    # field is locked ("!"), which is why users.sh sets it to "*".
    cat > "$dir/sshd_config" <<CFG
ListenAddress $ip
Port 22
HostKey $dir/ssh_host_ed25519_key
PidFile $dir/sshd.pid
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin no
MaxStartups 100:30:200
MaxSessions 100
UseDNS no
PrintMotd no
PrintLastLog no
Subsystem sftp /usr/lib/openssh/sftp-server
CFG
    if ! sshd_listening "$i"; then
        # Own UTS namespace, so that `hostname` prints hqnodeI in every session of this host.
        # sshd daemonizes; sessions run the users' login shells with sshd's default PATH
        # (/usr/local/bin:/usr/bin:/bin), so `python3` is Debian's /usr/bin/python3.
        # (sh gets the names as arguments, not pasted into its script; -E is sshd's log once
        # it has daemonized, the redirection catches what it says before that)
        # shellcheck disable=SC2016,SC2094
        ip netns exec "$ns" unshare --uts sh -c 'hostname "$1" && exec /usr/sbin/sshd -f "$2" -E "$3"' \
            sh "$ns" "$dir/sshd_config" "$dir/sshd.log" </dev/null >>"$dir/sshd.log" 2>&1
        for _ in $(seq 100); do sshd_listening "$i" && break; sleep 0.05; done
        if ! sshd_listening "$i"; then
            echo "hosts.sh: sshd of $ns does not listen; its log says:" >&2
            tail -5 "$dir/sshd.log" >&2
            exit 1
        fi
    fi
    echo "$ns $ip" >> "$STATE/hosts.new"
    # From the key file, not ssh-keyscan: no network needed, so repairing one host works while
    # another one is partitioned.
    echo "$ip $(cut -d' ' -f1-2 "$dir/ssh_host_ed25519_key.pub")" >> "$STATE/known_hosts.new"
done
chmod 644 "$STATE/hosts.new" "$STATE/known_hosts.new"
mv "$STATE/hosts.new" "$STATE/hosts"
mv "$STATE/known_hosts.new" "$STATE/known_hosts"
cat "$STATE/hosts"
