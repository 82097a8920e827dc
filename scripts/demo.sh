#!/bin/sh
# make run: hq on this machine in one command. SQLite (the embedded default), this host as the
# only host, you as admin; starts hq-server, submits a 20-task jobs file, waits and shows it.
# Safe to re-run: existing etc/ files and a running hq-server are kept.
set -eu
HQPATH=$(cd "$(dirname "$0")/.." && pwd -P)
export HQPATH
bin=$HQPATH/bin
cd "$HQPATH"
umask 022
if [ ! -e etc/cluster.tab ]; then
    printf 'host\tcores\nlocalhost\t%s\n' "$(nproc)" > etc/cluster.tab
    echo "demo: wrote etc/cluster.tab: this machine (localhost, $(nproc) cores)"
fi
if [ ! -e etc/users ]; then
    printf '%s\tadmin\n' "$(id -un)" > etc/users
    echo "demo: wrote etc/users: $(id -un) is the admin"
fi
"$bin/hq-dbadmin" -q --create-tables --add-standard-entries
if ! "$bin/hq-admin" info >/dev/null 2>&1; then
    "$bin/hq-server" --daemon
    echo "demo: hq-server started (log: var/log/hq-server.log)"
else
    "$bin/hq-admin" reload >/dev/null
fi
mkdir -p var/demo
cd var/demo
: > tasks.tab
i=1
while [ "$i" -le 20 ]; do
    printf 'command::echo task {idx} ran on $(hostname) as $(id -un); sleep 0.%s\tname::demo-{idx}\n' "$((i % 5))" >> tasks.tab
    i=$((i + 1))
done
echo "demo: submitting var/demo/tasks.tab (20 tasks) and waiting for them"
"$bin/hq-submit" -f tasks.tab --wait
"$bin/hq-client" jobs --all --limit 20
echo
echo "demo: output of the first task ($HQPATH/var/demo):"
cat "$(ls hq-*.out | sort -t- -k2 -n | head -1)"
cat <<MSG

Next: '. $HQPATH/.hqrc' puts hq on your PATH; then try
  hq-submit "sleep 42"; hq-client status; hq-admin lscluster; hq-admin shutdown
MSG
