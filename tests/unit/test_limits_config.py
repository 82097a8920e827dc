"""hq.limits_config: group lines of etc/users, [limits] of hq-server.cfg, the precedence rule,
group membership from the real group database, and one-line errors naming file and line."""

from __future__ import annotations

import grp
import os
import pwd

import pytest
from fixtures.config_files import error_of, write

from hq.config import Installation, load_server, load_users
from hq.limits_config import Limit, load_limits

ME = pwd.getpwuid(os.getuid()).pw_name
MY_GROUP = grp.getgrgid(pwd.getpwuid(os.getuid()).pw_gid).gr_name
# an account whose primary group is not mine and that my group does not list
OTHER = next(p.pw_name for p in pwd.getpwall() if p.pw_gid != pwd.getpwuid(os.getuid()).pw_gid
             and p.pw_name not in grp.getgrnam(MY_GROUP).gr_mem)


def test_group_lines_in_etc_users_leave_the_original_format_alone(inst: Installation):
    write(inst.users_file, f"{ME} admin share=2\n@{MY_GROUP}\tmax_cores=8 max_running=3\n"
                           f"{OTHER} user\n")
    assert [u.name for u in load_users(inst.users_file)] == [ME, OTHER]
    limits = load_limits(inst, [ME, OTHER])
    group = limits.groups[MY_GROUP]
    assert group.limit == Limit(max_running=3, max_cores=8)
    assert group.members == {ME}   # by its primary group
    assert limits.groups_of(ME) == (MY_GROUP,) and limits.groups_of(OTHER) == ()


def test_limits_section_overrides_etc_users_key_by_key_and_default_fills_in(
        inst: Installation):
    write(inst.users_file, f"@{MY_GROUP} max_cores=8 max_running=3\n")
    write(inst.server_cfg, f"[scheduler]\nmax_running_per_user = 7\n[limits]\n"
                           f"group.{MY_GROUP} = max_cores=4\nuser.{ME} = max_running=2\n"
                           "default = max_running=50, max_cores=64\n")
    load_server(inst)   # the section is allowed there too
    limits = load_limits(inst, [ME])
    assert limits.groups[MY_GROUP].limit == Limit(max_running=3, max_cores=4)
    # [limits] user over etc/users, etc/users over default
    assert limits.of_user(ME, Limit(max_running=9, max_cores=16)) == Limit(2, 16)
    assert limits.of_user(OTHER, Limit()) == Limit(50, 64)


def test_no_files_no_limits(inst: Installation):
    limits = load_limits(inst, [ME])
    assert limits.groups == {} and limits.of_user(ME, Limit()) == Limit()


@pytest.mark.parametrize(("users", "cfg", "message"), [
    ("@nosuchgroup_hq max_cores=4\n", None,
     'etc/users:1: group: unknown Unix group "nosuchgroup_hq"'),
    ("# groups\n@{g} max_cores=4 cores=2\n", None,
     'etc/users:2: cores: unknown limit "cores" for group {g} (known: max_running, '
     'max_cores, as key=value)'),
    ("@{g} max_cores=none\n", None, 'etc/users:1: max_cores: not a positive integer: '
     '"none"'),
    ("@\n", None, 'etc/users:1: group: invalid group name "" after @'),
    ("@{g}\n", None, "etc/users:1: no limit for group {g} (use max_running=N, max_cores=N)"),
    ("@{g} max_cores=2\n@{g} max_running=2\n", None,
     'etc/users:2: group: duplicate group "{g}" (first on line 1)'),
    ("", "[limits]\ngroup.nosuchgroup_hq = max_cores=4\n",
     'etc/hq-server.cfg:2: group.nosuchgroup_hq: unknown Unix group "nosuchgroup_hq"'),
    ("", "[limits]\n\nteam.x = max_cores=4\n",
     "etc/hq-server.cfg:3: team.x: unknown key in [limits] (use user.NAME, group.NAME or "
     "default)"),
    ("", "[limits]\ndefault = max_running=0\n",
     'etc/hq-server.cfg:2: max_running: not a positive integer: "0"'),
])
def test_bad_limits_name_file_and_line(inst: Installation, monkeypatch, users, cfg, message):
    monkeypatch.chdir(inst.root)
    write(inst.users_file, users.format(g=MY_GROUP))
    if cfg is not None:
        write(inst.server_cfg, cfg)
    assert error_of(load_limits, Installation(inst.root.relative_to(inst.root)), [ME]) \
        == message.format(g=MY_GROUP)
