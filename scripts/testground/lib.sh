# shellcheck shell=bash disable=SC2034
# (SC2034: the variables are used by the scripts that source this file)
# lib.sh: settings shared by the test-ground scripts (sourced by them, not run).
#
# The test ground is hq's own small "cluster" on one machine: hosts hqnode1..N are network
# namespaces on the bridge hqbr0, each with its own sshd and hostname, all sharing this
# machine's filesystem, users and /home (like hosts that mount the same NFS homes).
#   this machine (root namespace) = 10.200.0.1 on hqbr0
#   hqnodeI                       = 10.200.0.(10+I) on its eth0, cable hqvI <-> hqbr0
# Traffic stays on hqbr0: the namespaces have no default route.

STATE=${HQ_TESTNET_DIR:-/tmp/hq-testnet}   # host keys, sshd configs and logs, host list
BRIDGE=hqbr0
NET=10.200.0
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

host_ns() { echo "hqnode$1"; }          # network namespace (and hostname) of host I
host_ip() { echo "$NET.$((10 + $1))"; }  # its address
host_link() { echo "hqv$1"; }            # the root-namespace end of its cable

need_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "$(basename "$0"): must run as root (network namespaces, sshd, useradd)" >&2
        exit 1
    fi
}

# Whether sshd listens on port 22 inside host I's namespace. A pid file is no proof: it may
# name a zombie or a reused pid; a listening socket is what clients need.
sshd_listening() {
    [ -e "/run/netns/$(host_ns "$1")" ] &&
        [ -n "$(ip netns exec "$(host_ns "$1")" ss -Hltn 'sport = :22' 2>/dev/null)" ]
}
