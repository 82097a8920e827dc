#!/bin/sh
# install-system-deps.sh [venv|mariadb|ssh|net|chromium ...] : make sure the Debian packages hq needs exist.
#   venv     python3-venv (Debian's /usr/bin/python3 -m venv)
#   mariadb  mariadb-server + mariadb-client (/usr/sbin/mariadbd, mariadb-install-db, mariadb)
#   ssh      openssh-server (/usr/sbin/sshd; the multi-host tests start their own sshd)
#   net      iproute2 (ip; the multi-host tests build network namespaces)
#   chromium chromium (headless; the test of hq-admin report's HTML page opens it)
# No argument: all of them. A fast no-op when everything is there.
# As root, installs what is missing with apt-get (no service is started: there is no init
# system to start one, and hq starts its own private instances). As another user, prints the
# apt-get line an administrator has to run and exits 1.
set -eu

[ $# -gt 0 ] || set -- venv mariadb ssh net chromium

missing=""
want() {  # want PACKAGE... : add to the list of packages to install (once each)
    for p in "$@"; do
        case " $missing " in *" $p "*) ;; *) missing="$missing $p" ;; esac
    done
}

for part in "$@"; do
    case $part in
        venv)
            /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || want python3-venv ;;
        mariadb)
            [ -x /usr/sbin/mariadbd ] || want mariadb-server
            [ -x /usr/bin/mariadb-install-db ] || want mariadb-server
            [ -x /usr/bin/mariadb ] || want mariadb-client ;;
        ssh)
            [ -x /usr/sbin/sshd ] || want openssh-server ;;
        net)
            [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || want iproute2 ;;
        chromium)
            [ -x /usr/bin/chromium ] || want chromium ;;
        *)
            echo "usage: $0 [venv|mariadb|ssh|net|chromium ...]" >&2
            exit 2 ;;
    esac
done

[ -n "$missing" ] || exit 0
missing=${missing# }

if [ "$(id -u)" != 0 ]; then
    echo "hq needs these Debian packages, which are not installed: $missing" >&2
    echo "Ask an administrator to run:" >&2
    echo "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing" >&2
    exit 1
fi

echo "install-system-deps: installing $missing" >&2
# Package scripts try to start services; there is no init system here, and hq starts its own
# private instances, so tell invoke-rc.d not to start anything (101 = action forbidden).
policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    made_policy=yes
fi
status=0
apt-get update -q || status=$?
if [ "$status" = 0 ]; then
    # $missing is a list of package names: split on purpose.
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing || status=$?
fi
[ -z "$made_policy" ] || rm -f "$policy"
if [ "$status" != 0 ]; then
    echo "install-system-deps: apt-get failed (exit $status) installing: $missing" >&2
    exit "$status"
fi
