"""The usage report's page and files (hq.report.page, hq.report.data.histogram): text is
escaped, files are renamed into place without following links, --png directories are
checked."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pytest

from hq.errors import UsageError
from hq.report.data import Failure, HostBusy, Report, UserDay, bin_width, histogram
from hq.report.figures import FIGURES, Figure
from hq.report.page import html_page, png_directory, write_file, write_pngs

SINCE = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)


def tiny_report(reason: str) -> Report:
    return Report(since=SINCE, until=SINCE + dt.timedelta(hours=1), bin_s=60,
                  bin_starts=[SINCE + dt.timedelta(minutes=i) for i in range(60)],
                  hosts=[HostBusy(host="node1", cores=4, busy=[1.0] * 60, core_hours=1.0)],
                  user_days=[UserDay(day="2026-11-20", owner="alice", jobs=1, core_hours=1.0)],
                  wait=histogram([0.5]), run=histogram([3600.0]),
                  failures=[Failure(reason=reason, jobs=1)])


def test_the_page_escapes_what_users_and_hosts_wrote():
    figures = [Figure(name=name, title=title, png=b"\x89PNG") for name, title in FIGURES]
    page = html_page(tiny_report("<script>alert(1)</script>"), figures, SINCE)
    assert "<script" not in page
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td><td>1</td>" in page
    assert "default-src 'none'; img-src data:" in page


def test_histogram_bins_are_decades_and_an_hour_from_julianday_is_an_hour():
    h = histogram([-1.0, 0.999, 1.0, 9.9, 59.0, 60.0, 599.9, 3599.99996, 21600.0, 86400.0])
    assert h.counts == [2, 2, 1, 2, 0, 1, 1, 1]
    assert h.jobs == 10


def test_bin_width_gives_at_most_200_bins():
    assert bin_width(SINCE, SINCE + dt.timedelta(hours=3)) == 60
    assert bin_width(SINCE, SINCE + dt.timedelta(days=7)) == 3600
    assert bin_width(SINCE, SINCE + dt.timedelta(days=60)) == 86400


def test_a_file_is_renamed_into_place_and_a_link_at_the_target_is_not_followed(tmp_path):
    victim = tmp_path / "someone-elses-file"
    victim.write_text("keep me")
    target = tmp_path / "usage.html"
    target.symlink_to(victim)
    write_file(target, b"<html></html>", "--html")
    assert victim.read_text() == "keep me"
    assert not target.is_symlink() and target.read_bytes() == b"<html></html>"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644 & ~_umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["someone-elses-file", "usage.html"]


def test_a_directory_as_the_html_file_is_refused(tmp_path):
    with pytest.raises(UsageError, match=r"--html .*: is a directory"):
        write_file(tmp_path, b"x", "--html")


def test_png_directory_is_made_0755_and_a_link_is_refused(tmp_path):
    made = png_directory(tmp_path / "plots" / "new")
    assert stat.S_IMODE(made.stat().st_mode) == 0o755 & ~_umask()
    write_pngs(made, [Figure(name="cores-busy", title="t", png=b"\x89PNG")])
    assert (made / "cores-busy.png").read_bytes() == b"\x89PNG"
    (tmp_path / "link").symlink_to(made)
    with pytest.raises(UsageError, match=r"--png .*link: is a symbolic link"):
        png_directory(tmp_path / "link")
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match=r"--png .*file: not a directory"):
        png_directory(tmp_path / "file")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
