#!/bin/bash
# hq-sql.sh setup|start|stop|status : the installation's private MariaDB instance (`make sql`).
#
# Everything lives inside the installation ($HQPATH = the directory above this script):
#   hqConf/hqdb.cnf            defaults file ([client] and [mariadbd]; no secrets)
#   var/mariadb/data           data directory
#   var/mariadb/mysqld.sock    socket (the path must stay under 108 bytes)
#   var/mariadb/mariadbd.pid   pid file          var/mariadb/mariadbd.err   error log
#   etc/hq-db.cfg              hq-server's connection ([DATABASE] keys, mode 0600)
#   etc/hq-report.cfg          read-only reporting account (same format, mode 0600)
#
# setup   installs the Debian packages if missing (as root; otherwise says what to install),
#         initializes and starts the instance, creates database `hq` and hq-server's account,
#         writes etc/hq-db.cfg, runs `hq-dbadmin upgrade` as hq-server's account (schema and
#         report_* views), creates `hq_report` with SELECT on the report_* views only and
#         writes etc/hq-report.cfg. Idempotent: starts what is missing and grants again, but
#         never changes an existing password or etc/hq-db.cfg (unless HQ_DB_REWRITE_CFG=yes).
# start   starts the instance if it is not running (after setup).
# stop    stops it: SIGTERM to the pid in the pid file, then waits until it is gone.
# status  says whether it runs; exit 0 if it does, 3 if not.
#
# Environment:
#   HQ_DB_PORT      TCP port on 127.0.0.1 (default: the one in hqConf/hqdb.cnf, else 2114)
#   HQ_SERVER_USER  OS account that runs hq-server (default: you). With unix_socket
#                   authentication its MariaDB account has the same name and no password.
#   HQ_DB_AUTH      unix_socket (default) or password: account `hq` with a generated password
#                   stored in etc/hq-db.cfg only
#   HQ_DB_OSUSER    as root only: account that runs mariadbd (default mysql)
#   HQ_DB_REWRITE_CFG=yes  write etc/hq-db.cfg (and a new password) even if it exists
#
# Admin shell on the instance: mariadb --defaults-file=hqConf/hqdb.cnf   (as the account that
# ran setup; MariaDB's unix_socket authentication maps it to the same-named MariaDB account)
#
# Secrets: passwords come from /dev/urandom, go to MariaDB through the client's stdin and to
# 0600 files; never onto a command line, into the environment or into a log.
set -euo pipefail
export LC_ALL=C
umask 022

HQPATH=$(cd "$(dirname "$0")/.." && pwd -P)
export HQPATH
VE=${HQ_VE_PATH:-$HQPATH/hqVE}
VAR=$HQPATH/var/mariadb
DATA=$VAR/data
SOCK=$VAR/mysqld.sock
PIDFILE=$VAR/mariadbd.pid
ERRLOG=$VAR/mariadbd.err
CNF=$HQPATH/hqConf/hqdb.cnf
DBCFG=$HQPATH/etc/hq-db.cfg
REPCFG=$HQPATH/etc/hq-report.cfg
DB=hq
REPORT_USER=hq_report
MARIADBD=/usr/sbin/mariadbd

say() { printf 'hq-sql: %s\n' "$*"; }
warn() { printf 'hq-sql: warning: %s\n' "$*" >&2; }
die() { printf 'hq-sql: error: %s\n' "$*" >&2; exit 1; }

TMPFILES=()
cleanup() { [ ${#TMPFILES[@]} -eq 0 ] || rm -f "${TMPFILES[@]}"; }
trap cleanup EXIT

# ---------------------------------------------------------------- settings and checks

is_root() { [ "$(id -u)" = 0 ]; }

cfg_get() {  # cfg_get FILE KEY : value of KEY in an INI file (last one wins), empty if none
    sed -n "s/^[[:space:]]*$2[[:space:]]*[=:][[:space:]]*//p" "$1" | tail -n 1 |
        sed 's/[[:space:]]*$//'
}

valid_name() {  # account and database names go into SQL: allow only plain ones
    [[ $1 =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$ ]]
}

sql_str() {  # sql_str TEXT : TEXT as a quoted SQL string literal
    local s=${1//\\/\\\\}
    printf "'%s'" "${s//\'/\'\'}"
}

new_password() {  # 32 random bytes as hex
    od -An -tx1 -N32 /dev/urandom | tr -d ' \n'
}

settings() {
    local oldport=""
    [ ! -f "$CNF" ] || oldport=$(sed -n 's/^port=//p' "$CNF" | head -n 1)
    PORT=${HQ_DB_PORT:-${oldport:-2114}}
    if ! [[ $PORT =~ ^[0-9]{1,5}$ ]] || [ "$PORT" -lt 1 ] || [ "$PORT" -gt 65535 ]; then
        die "HQ_DB_PORT=$PORT is not a TCP port number"
    fi
    # sockaddr_un.sun_path holds 108 bytes including the terminating NUL
    [ ${#SOCK} -lt 108 ] ||
        die "socket path $SOCK is ${#SOCK} bytes; Unix sockets need under 108: install hq in a shorter path"
    if is_root; then
        OSUSER=${HQ_DB_OSUSER:-mysql}
        id -u "$OSUSER" >/dev/null 2>&1 ||
            die "account '$OSUSER' (HQ_DB_OSUSER) does not exist; it runs mariadbd when you are root"
        [ "$(id -u "$OSUSER")" != 0 ] ||
            die "mariadbd must not run as root: set HQ_DB_OSUSER to an unprivileged account"
        USER_OPT=(--user="$OSUSER")   # mariadbd refuses to run as root without --user
    else
        OSUSER=$(id -un)
        USER_OPT=()
    fi
}

need_binaries() {
    "$HQPATH/scripts/install-system-deps.sh" mariadb ||
        die "the MariaDB server and client are needed (see above)"
}

check_traversal() {  # check_traversal ACCOUNT PATH : ACCOUNT can search every directory down to PATH
    local acct=$1 path=$2 d="" part
    local -a parts
    is_root || return 0
    IFS=/ read -ra parts <<<"${path#/}"
    for part in / "${parts[@]}"; do
        [ "$part" = / ] && d=/ || d=${d%/}/$part
        [ -d "$d" ] || break
        runuser -u "$acct" -- test -x "$d" ||
            die "account '$acct' cannot enter directory $d (mode $(stat -c %A "$d"), owner $(stat -c %U "$d")): make it searchable (chmod o+x) or install hq elsewhere"
    done
}

write_cnf() {
    local tmp
    make_tmp tmp "$CNF"
    cat >"$tmp" <<CNF
# hq's private MariaDB instance, written by scripts/hq-sql.sh: edit the variables there
# (HQ_DB_PORT) rather than this file. No secrets here.
[client]
socket=$SOCK
port=$PORT

[mariadbd]
datadir=$DATA
socket=$SOCK
port=$PORT
bind-address=127.0.0.1
pid-file=$PIDFILE
log-error=$ERRLOG
skip-name-resolve
character-set-server=utf8mb4
collation-server=utf8mb4_unicode_ci
default-storage-engine=InnoDB
CNF
    chmod 644 "$tmp"
    if cmp -s "$tmp" "$CNF"; then
        rm -f "$tmp"
    else
        mv -f "$tmp" "$CNF"
        if running; then
            warn "hqConf/hqdb.cnf changed (port $PORT); the running instance uses it after: make sql-stop sql-start"
        fi
    fi
}

# ---------------------------------------------------------------- the instance

admin() {  # SQL from stdin, as the account running this script (its unix_socket account)
    mariadb --defaults-file="$CNF" --batch --skip-column-names
}

running() {  # the server answers on the socket (ping succeeds even when access is denied)
    [ -S "$SOCK" ] && mariadb-admin --defaults-file="$CNF" --connect-timeout=2 ping >/dev/null 2>&1
}

pid_of_server() {  # the pid in the pid file if it names a live mariadbd, else nothing
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = mariadbd ] || return 0
    case $(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1) in
        Z | X | "") return 0 ;;
    esac
    echo "$pid"
}

prepare_dirs() {
    mkdir -p "$HQPATH/var" "$HQPATH/etc" "$VAR"
    if is_root; then
        check_traversal "$OSUSER" "$VAR"
        if [ "$(stat -c %U "$VAR")" != "$OSUSER" ] ||
            { [ -d "$DATA" ] && [ "$(stat -c %U "$DATA")" != "$OSUSER" ]; }; then
            chown -R "$OSUSER:" "$VAR"
        fi
    fi
}

initialize() {
    [ ! -d "$DATA/mysql" ] || return 0
    say "initializing $DATA"
    if ! mariadb-install-db --defaults-file="$CNF" "${USER_OPT[@]}" --skip-test-db \
        --auth-root-authentication-method=socket >"$VAR/install.log" 2>&1; then
        tail -n 20 "$VAR/install.log" >&2
        die "mariadb-install-db failed (log: $VAR/install.log)"
    fi
}

start_server() {
    if running; then
        say "MariaDB is running (socket $SOCK)"
        return 0
    fi
    [ -d "$DATA/mysql" ] || die "no data directory $DATA: run 'make sql' first"
    say "starting MariaDB on $SOCK and 127.0.0.1:$PORT"
    # its own session, no terminal, no inherited descriptors (9 is our lock)
    setsid "$MARIADBD" --defaults-file="$CNF" "${USER_OPT[@]}" </dev/null >/dev/null 2>&1 9>&- &
    local pid=$!
    for _ in $(seq 600); do
        running && return 0
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$ERRLOG" >&2 || true
            die "mariadbd exited during start (log: $ERRLOG)"
        fi
        sleep 0.1
    done
    die "mariadbd did not answer within 60 s (log: $ERRLOG)"
}

stop_server() {
    local pid
    pid=$(pid_of_server)
    if [ -z "$pid" ]; then
        if running; then
            die "MariaDB answers on $SOCK but $PIDFILE names no live mariadbd; stop it by hand"
        fi
        say "MariaDB is not running"
        return 0
    fi
    say "stopping MariaDB (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1200); do
        [ -n "$(pid_of_server)" ] || { say "MariaDB stopped"; return 0; }
        sleep 0.1
    done
    die "mariadbd (pid $pid) did not stop within 120 s"
}

# ---------------------------------------------------------------- accounts and config files

make_tmp() {  # make_tmp VAR FILE : VAR := a new 0600 temp file beside FILE (removed on failure)
    local t
    t=$(umask 077 && mktemp "$2.XXXXXX")
    TMPFILES+=("$t")
    printf -v "$1" %s "$t"
}

write_cfg() {  # write_cfg FILE USER [PASSWORD] : the [DATABASE] section for this instance
    local file=$1 user=$2 pw=${3-}
    {
        echo "# hq database connection, written by scripts/hq-sql.sh for the private MariaDB"
        echo "# instance of this installation. Keep it mode 0600: hq refuses looser modes."
        echo "[DATABASE]"
        echo "database_dialect = mysql"
        echo "database_host = localhost"
        echo "database_port = $PORT"
        echo "database_socket = $SOCK"
        echo "database_name = $DB"
        echo "database_username = $user"
        [ -z "$pw" ] || printf 'database_password = %s\n' "$pw"
    } >"$file"
}

server_account() {  # decide hq-server's OS account, auth mode, MariaDB account, password
    REWRITE=no
    case ${HQ_DB_REWRITE_CFG:-} in yes | 1 | true) REWRITE=yes ;; esac
    NEWCFG=""
    if [ -f "$DBCFG" ] && [ "$REWRITE" = no ]; then
        local dialect socket
        dialect=$(cfg_get "$DBCFG" database_dialect)
        socket=$(cfg_get "$DBCFG" database_socket)
        if [ "$dialect" != mysql ] || [ "$socket" != "$SOCK" ]; then
            die "etc/hq-db.cfg points at another database (dialect '$dialect', socket '$socket'); leaving it alone: move it away or run with HQ_DB_REWRITE_CFG=yes"
        fi
        DBUSER=$(cfg_get "$DBCFG" database_username)
        PASSWORD=$(cfg_get "$DBCFG" database_password)
        if [ -n "$PASSWORD" ]; then AUTH=password; else AUTH=unix_socket; fi
        SRVUSER=$(stat -c %U "$DBCFG")   # setup gives the file to hq-server's account
        if [ -n "${HQ_DB_AUTH:-}" ] && [ "$HQ_DB_AUTH" != "$AUTH" ]; then
            warn "etc/hq-db.cfg uses $AUTH authentication; keeping it (HQ_DB_REWRITE_CFG=yes to change)"
        fi
        if [ -n "${HQ_SERVER_USER:-}" ] && [ "$HQ_SERVER_USER" != "$SRVUSER" ]; then
            warn "etc/hq-db.cfg belongs to $SRVUSER, not HQ_SERVER_USER=$HQ_SERVER_USER; keeping it (HQ_DB_REWRITE_CFG=yes to change)"
        fi
        [ "$AUTH" = password ] || [ "$DBUSER" = "$SRVUSER" ] ||
            die "etc/hq-db.cfg names MariaDB account '$DBUSER' for unix_socket authentication but belongs to OS account '$SRVUSER'; they must be equal"
        local oldport
        oldport=$(cfg_get "$DBCFG" database_port)
        [ "$oldport" = "$PORT" ] ||
            warn "etc/hq-db.cfg says database_port = $oldport, the instance uses $PORT; keeping the file"
    else
        AUTH=${HQ_DB_AUTH:-unix_socket}
        SRVUSER=${HQ_SERVER_USER:-$(id -un)}
        case $AUTH in
            unix_socket) DBUSER=$SRVUSER PASSWORD="" ;;
            password) DBUSER=hq PASSWORD=$(new_password) ;;
            *) die "HQ_DB_AUTH=$AUTH: use unix_socket or password" ;;
        esac
        make_tmp NEWCFG "$DBCFG"
        write_cfg "$NEWCFG" "$DBUSER" "$PASSWORD"
    fi
    id -u "$SRVUSER" >/dev/null 2>&1 || die "OS account '$SRVUSER' (HQ_SERVER_USER) does not exist"
    valid_name "$DBUSER" || die "'$DBUSER' is not a usable MariaDB account name"
    if ! is_root && [ "$SRVUSER" != "$(id -un)" ]; then
        die "hq-server's account '$SRVUSER' is not you ($(id -un)): run this as $SRVUSER, or as root"
    fi
}

setup_database() {
    local hosts=(localhost) h sql
    [ "$AUTH" = unix_socket ] || hosts+=(127.0.0.1)
    sql="CREATE DATABASE IF NOT EXISTS \`$DB\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;"
    for h in "${hosts[@]}"; do
        if [ "$AUTH" = unix_socket ]; then
            sql+="CREATE USER IF NOT EXISTS '$DBUSER'@'$h' IDENTIFIED VIA unix_socket;"
        else
            sql+="CREATE USER IF NOT EXISTS '$DBUSER'@'$h' IDENTIFIED BY $(sql_str "$PASSWORD");"
            # a newly generated password replaces the old one; an existing file's stays
            [ -z "$NEWCFG" ] || sql+="ALTER USER '$DBUSER'@'$h' IDENTIFIED BY $(sql_str "$PASSWORD");"
        fi
        sql+="GRANT ALL PRIVILEGES ON \`$DB\`.* TO '$DBUSER'@'$h';"
    done
    printf '%s\n' "$sql" | admin || die "could not create database $DB or account $DBUSER"
    if [ -n "$NEWCFG" ]; then
        is_root && chown "$SRVUSER:" "$NEWCFG"
        mv -f "$NEWCFG" "$DBCFG"
        say "wrote etc/hq-db.cfg ($AUTH authentication, MariaDB account $DBUSER, for OS account $SRVUSER)"
    fi
    say "database $DB ready; hq-server's account: $DBUSER ($AUTH)"
}

dbadmin_available() {
    [ -x "$HQPATH/bin/hq-dbadmin" ] && [ -x "$VE/bin/python" ] &&
        "$VE/bin/python" -c 'import importlib.util as u, sys
sys.exit(u.find_spec("hq.cli.dbadmin") is None)' 2>/dev/null
}

upgrade_schema() {
    if ! dbadmin_available; then
        die "hq is not installed here yet (no hqVE/ with hq-dbadmin), so the schema and its report_* views cannot be made: run 'make', then 'make sql' again (it keeps what it made so far)"
    fi
    say "hq-dbadmin upgrade (as $SRVUSER)"
    if is_root && [ "$SRVUSER" != root ]; then
        check_traversal "$SRVUSER" "$VAR"
        runuser -u "$SRVUSER" -- test -r "$DBCFG" ||
            die "account '$SRVUSER' cannot read $DBCFG"
        (cd "$HQPATH" && runuser -u "$SRVUSER" -- env HQPATH="$HQPATH" "$HQPATH/bin/hq-dbadmin" upgrade) ||
            die "'hq-dbadmin upgrade' failed (as $SRVUSER)"
    else
        (cd "$HQPATH" && "$HQPATH/bin/hq-dbadmin" upgrade) || die "'hq-dbadmin upgrade' failed"
    fi
}

setup_report_account() {
    local pw newcfg="" views v h sql
    if [ -f "$REPCFG" ] && [ "$REWRITE" = no ]; then
        pw=$(cfg_get "$REPCFG" database_password)
        [ -n "$pw" ] || die "etc/hq-report.cfg has no database_password; move it away to get a new one"
    else
        pw=$(new_password)
        make_tmp newcfg "$REPCFG"
        write_cfg "$newcfg" "$REPORT_USER" "$pw"
    fi
    views=$(printf '%s\n' "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = '$DB' AND TABLE_NAME LIKE 'report\\_%' ORDER BY TABLE_NAME;" | admin) ||
        die "could not list the report views"
    sql=""
    for h in localhost 127.0.0.1; do
        sql+="CREATE USER IF NOT EXISTS '$REPORT_USER'@'$h' IDENTIFIED BY $(sql_str "$pw");"
        [ -z "$newcfg" ] || sql+="ALTER USER '$REPORT_USER'@'$h' IDENTIFIED BY $(sql_str "$pw");"
        # start from nothing so that only the current views are readable, never a table
        sql+="REVOKE ALL PRIVILEGES, GRANT OPTION FROM '$REPORT_USER'@'$h';"
        for v in $views; do
            valid_name "$v" || die "unexpected view name '$v'"
            sql+="GRANT SELECT ON \`$DB\`.\`$v\` TO '$REPORT_USER'@'$h';"
        done
    done
    printf '%s\n' "$sql" | admin || die "could not set up the reporting account $REPORT_USER"
    if [ -n "$newcfg" ]; then
        mv -f "$newcfg" "$REPCFG"
        say "wrote etc/hq-report.cfg (read-only account $REPORT_USER)"
    fi
    if [ -z "$views" ]; then
        warn "no report_* views in database $DB yet: $REPORT_USER can read nothing until 'make sql' runs after 'hq-dbadmin upgrade'"
    else
        say "$REPORT_USER may SELECT: ${views//$'\n'/ }"
    fi
}

# ---------------------------------------------------------------- commands

lock() {  # one setup/start/stop at a time per installation
    exec 9>"$VAR/hq-sql.lock"
    flock 9
}

cmd=${1:-}
case $cmd in
    setup)
        settings
        need_binaries
        prepare_dirs
        lock
        server_account   # first: refuse early when etc/hq-db.cfg points elsewhere
        write_cnf
        initialize
        start_server
        setup_database
        upgrade_schema
        setup_report_account
        say "done: socket $SOCK, port 127.0.0.1:$PORT, connection in etc/hq-db.cfg"
        ;;
    start)
        settings
        need_binaries
        prepare_dirs
        lock
        write_cnf
        start_server
        ;;
    stop)
        settings
        [ -d "$VAR" ] || { say "MariaDB is not set up here"; exit 0; }
        lock
        stop_server
        ;;
    status)
        settings
        if running; then
            say "running: pid $(pid_of_server), socket $SOCK, port 127.0.0.1:$PORT"
        else
            say "not running"
            exit 3
        fi
        ;;
    *)
        echo "usage: $0 setup|start|stop|status" >&2
        exit 2
        ;;
esac
