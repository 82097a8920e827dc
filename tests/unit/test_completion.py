"""Shell completion through click's protocol, as bash, zsh and fish call the programs: option
names, host names from etc/cluster.tab, and the scripts `make` writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def complete(module: str, prog: str, words: str, root: Path, protocol: str = "bash",
             **env: str) -> list[str]:
    """What ``prog`` offers for the last word of ``words`` (bash: one ``type,value`` per line)."""
    variable = "_" + prog.upper().replace("-", "_") + "_COMPLETE"
    split = words.split(" ")
    full = {k: v for k, v in os.environ.items() if k not in ("HQPATH", "HQ_VE_PATH")}
    full.update({variable: f"{protocol}_complete", "COMP_WORDS": words,
                 "COMP_CWORD": str(len(split) - 1), "HQPATH": str(root), **env})
    done = subprocess.run([sys.executable, "-P", "-m", module], env=full, capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return [line for line in done.stdout.splitlines() if line]


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    """An installation directory whose etc/cluster.tab lists node01, node02 and gpu1."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "cluster.tab").write_text(
        "host\tcores\tinfo\nnode01\t2\tsmall\nnode02\t4\t-\ngpu1\t8\tA100s\n")
    return tmp_path


def test_option_names_are_completed(cluster: Path) -> None:
    assert complete("hq.cli.submit", "hq-submit", "hq-submit --exclude-h", cluster) == [
        "plain,--exclude-hosts"]
    offered = complete("hq.cli.client", "hq-client", "hq-client ca", cluster)
    assert offered == ["plain,cancel"]


def test_host_names_come_from_cluster_tab(cluster: Path) -> None:
    assert complete("hq.cli.submit", "hq-submit", "hq-submit -E node", cluster) == [
        "plain,node01", "plain,node02"]
    # in a comma list, the last item; hosts already named are not offered again
    assert complete("hq.cli.submit", "hq-submit", "hq-submit -E node01,", cluster) == [
        "plain,node01,node02", "plain,node01,gpu1"]
    assert complete("hq.cli.admin", "hq-admin", "hq-admin deactivatehost g", cluster) == [
        "plain,gpu1"]
    assert complete("hq.cli.admin", "hq-admin", "hq-admin drain node01 n", cluster) == [
        "plain,node01", "plain,node02"]


def test_zsh_and_fish_get_the_hosts_info_as_help(cluster: Path) -> None:
    zsh = complete("hq.cli.admin", "hq-admin", "hq-admin events g", cluster, protocol="zsh")
    assert zsh == ["plain", "gpu1", "A100s"]
    # fish passes the incomplete word itself as COMP_CWORD
    fish = complete("hq.cli.admin", "hq-admin", "hq-admin events node0", cluster, protocol="fish",
                    COMP_CWORD="node0")
    assert fish == ["plain,node01\tsmall", "plain,node02"]


def test_no_cluster_tab_means_no_hosts_and_no_error(tmp_path: Path) -> None:
    assert complete("hq.cli.submit", "hq-submit", "hq-submit -E n", tmp_path) == []


def test_make_writes_the_scripts_and_hqrc_loads_the_bash_one_in_bash_only() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("HQPATH", "HQ_VE_PATH")}
    subprocess.run(["make", "-s", "doc/completion/hq.bash", ".hqrc"], cwd=REPO, env=env,
                   check=True, capture_output=True, timeout=120)
    for name in ("hq.bash", "hq.zsh", "fish/hq-submit.fish", "fish/hq-client.fish",
                 "fish/hq-admin.fish", "fish/hq-dbadmin.fish"):
        path = REPO / "doc" / "completion" / name
        assert path.stat().st_mode & 0o044 == 0o044, name   # every account may read it
    assert "compdef _hq_client_completion hq-client" in (
        REPO / "doc" / "completion" / "hq.zsh").read_text()
    hqrc = str(REPO / ".hqrc")
    shown = subprocess.run(["bash", "-c", '. "$1" && complete -p hq-submit hq-client hq-admin',
                            "bash", hqrc], env=env, capture_output=True, text=True, check=True)
    assert "-F _hq_submit_completion hq-submit" in shown.stdout
    assert "-F _hq_admin_completion hq-admin" in shown.stdout
    # sh (dash) sources it without complaint and without the bash functions
    plain = subprocess.run(["sh", "-c", '. "$1" && echo loaded', "sh", hqrc], env=env,
                           capture_output=True, text=True, check=True)
    assert (plain.stdout, plain.stderr) == ("loaded\n", "")
