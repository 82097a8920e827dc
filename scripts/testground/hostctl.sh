#!/bin/bash
# hostctl.sh ACTION I : faults on test host hqnodeI (made by hosts.sh). Run as root.
#   partition  unplug the cable: packets are dropped silently both ways; processes keep running
#              and TCP connections survive if healed before their own timeouts
#   heal       plug it back in
#   kill       kill -9 every process of the host (sshd, exec-servers, jobs): the kernel closes
#              their sockets, so peers see FIN/RST at once, like a crashed daemon
#   crash      power-off: cut the cable first, then kill -9 everything and drop the namespace,
#              so peers see nothing at all; their connections hang until their own timeouts
#   boot       bring the host back after kill or crash (also heals): re-runs hosts.sh for as
#              many hosts as the test ground has, which starts only what is missing
set -euo pipefail
here=$(dirname "$0")
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$here/lib.sh"
need_root
usage() { echo "usage: $0 partition|heal|kill|crash|boot I" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1 i=$2
case $i in ''|*[!0-9]*|0) usage ;; esac
ns=$(host_ns "$i") link=$(host_link "$i")

# every process in the host's network namespace, killed and waited for
kill_all() {
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9
    for _ in $(seq 200); do
        [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && return 0
        sleep 0.05
    done
    echo "hostctl.sh: processes of $ns survived kill -9: $(ip netns pids "$ns" | tr '\n' ' ')" >&2
    return 1
}

case $action in
    partition|heal)
        if ! ip link show "$link" >/dev/null 2>&1; then
            echo "hostctl.sh: $ns has no cable ($link): is it made (hosts.sh) or crashed?" >&2
            exit 1
        fi
        if [ "$action" = partition ]; then ip link set "$link" down; else ip link set "$link" up; fi ;;
    kill)
        [ -e "/run/netns/$ns" ] || { echo "hostctl.sh: no host $ns" >&2; exit 1; }
        kill_all ;;
    crash)
        ip link del "$link" 2>/dev/null || true
        if [ -e "/run/netns/$ns" ]; then
            kill_all
            ip netns del "$ns"
        fi ;;
    boot)
        n=$(wc -l < "$STATE/hosts" 2>/dev/null || echo 0)
        "$here/hosts.sh" "$(( n > i ? n : i ))" >/dev/null ;;
    *) usage ;;
esac
