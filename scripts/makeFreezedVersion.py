#!/usr/bin/env python3
"""Build self-contained ("frozen") hq programs into var/frozen/ (the original hQ's name).

A frozen hq-exec-server runs on a compute host that cannot run the installation's virtualenv
(another OS release, no shared filesystem): copy ``var/frozen/hq-exec-server/`` to the same
path there and the user-server runs it instead of the virtualenv's Python (doc/admin-guide.md).
The programs in bin/ run ``var/frozen/PROGRAM`` instead of the virtualenv when it is there and
newer than the installed code (``HQ_FROZEN=no`` opts out).

Forms (benchmarks/startup.py measures them; doc/admin-guide.md says which to use for what):

- ``onedir``: PyInstaller, a directory ``var/frozen/PROGRAM/`` with the executable
  ``PROGRAM`` and its libraries. Starts fastest; the form the exec-server must use (the job's
  parent is the process the exec-server recognises, no unpacking child in between).
- ``onefile``: PyInstaller, one file ``var/frozen/PROGRAM`` that unpacks itself into a
  temporary directory at every start (slower start-up, easiest to copy).
- ``zipapp``: hq's own code in ``var/frozen/PROGRAM.pyz`` (stdlib zipapp), run by the
  virtualenv's Python: not self-contained (its packages come from hqVE/), for comparison only.

Usage::

    scripts/makeFreezedVersion.py                          # hq-exec-server, onedir
    scripts/makeFreezedVersion.py --programs hq-exec-server,hq-submit --form onedir
    scripts/makeFreezedVersion.py --form zipapp --dest /tmp/frozen --programs hq-submit

Run it with the installation's Python (``hqVE/bin/python``, or through ``make frozen``); the
pinned PyInstaller comes from hqConf/requirements-frozen.txt and is installed into hqVE/ when
missing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipapp
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = REPO / "hqConf" / "requirements-frozen.txt"
FORMS = ("onedir", "onefile", "zipapp")
# Packages only the dashboard (textual) and the usage report (matplotlib) import; left out of
# every program that has neither, so its build is smaller and starts faster.
HEAVY = ("matplotlib", "numpy", "PIL", "textual", "contourpy", "kiwisolver", "fontTools",
         "tkinter")


@dataclass(frozen=True)
class Program:
    """One hq program: its module, and the modules it starts as ``sys.executable -P -m M``
    (the frozen executable is that sys.executable, so it must carry them too)."""

    name: str
    module: str
    starts: tuple[str, ...] = ()
    heavy: bool = False   # needs textual/matplotlib (the top and report commands)


PROGRAMS = {p.name: p for p in (
    Program("hq-exec-server", "hq.execd.main"),
    Program("hq-user-server", "hq.userd.main", ("hq.execd.main",)),
    Program("hq-submit", "hq.cli.submit", ("hq.userd.main", "hq.execd.main")),
    Program("hq-client", "hq.cli.client", ("hq.userd.main", "hq.execd.main"), heavy=True),
    Program("hq-admin", "hq.cli.admin", ("hq.userd.main", "hq.execd.main"), heavy=True),
    Program("hq-dbadmin", "hq.cli.dbadmin"),
    Program("hq-server", "hq.server.main", ("hq.monitor.main",)),
    Program("hq-monitor", "hq.monitor.main"),
)}

# The frozen executable's __main__. hq starts its own daemons as ``sys.executable -P -m
# MODULE ARGS`` (the bridge its exec-server daemon, hq-submit its user-server); frozen,
# sys.executable is this program, so that form is accepted for the modules it carries. The
# arguments stay in /proc/PID/cmdline as they were, which is how hq recognises its daemons.
ENTRY = '''\
"""Frozen {name}: runs {module}, or a module hq starts as ``sys.executable -P -m M``."""
import importlib
import os
import sys

# The bootloader's own variables must not reach what this program starts or records (a job's
# environment is hq-submit's): a job would load this bundle's libraries, and a daemon started
# as sys.executable would take itself for part of this process and use its unpack directory.
for key in [k for k in os.environ if k.startswith(("_PYI_", "_MEIPASS"))]:
    del os.environ[key]
_bundle = getattr(sys, "_MEIPASS", None)
if "LD_LIBRARY_PATH_ORIG" in os.environ:
    os.environ["LD_LIBRARY_PATH"] = os.environ.pop("LD_LIBRARY_PATH_ORIG")
elif _bundle and "LD_LIBRARY_PATH" in os.environ:
    _kept = [d for d in os.environ["LD_LIBRARY_PATH"].split(":") if d != _bundle]
    if _kept:
        os.environ["LD_LIBRARY_PATH"] = ":".join(_kept)
    else:
        del os.environ["LD_LIBRARY_PATH"]

DEFAULT = {module!r}
STARTS = {starts!r}

args = sys.argv[1:]
module = DEFAULT
if len(args) >= 3 and args[0] == "-P" and args[1] == "-m" and args[2] in (DEFAULT, *STARTS):
    module, args = args[2], args[3:]
sys.argv = [sys.argv[0], *args]
importlib.import_module(module).main()
'''


def fail(message: str) -> None:
    print(f"makeFreezedVersion: error: {message}", file=sys.stderr)
    sys.exit(1)


def ensure_pyinstaller() -> None:
    """Install the pinned PyInstaller into this Python's environment when it is missing."""
    try:
        import PyInstaller  # noqa: F401
        return
    except ImportError:
        pass
    if sys.prefix == sys.base_prefix:
        fail("PyInstaller is missing and this is not a virtualenv: run me with hqVE/bin/python "
             "(or `make frozen`)")
    print(f"installing PyInstaller from {REQUIREMENTS.relative_to(REPO)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", "-r", str(REQUIREMENTS)], check=False)
    if done.returncode != 0:
        fail(f"pip could not install {REQUIREMENTS}")


def build_pyinstaller(program: Program, form: str, dest: Path, work: Path) -> Path:
    entry = work / f"{program.name}-main.py"
    entry.write_text(ENTRY.format(name=program.name, module=program.module,
                                  starts=program.starts))
    argv = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--clean", "--log-level", "WARN",
            f"--{form}", "--name", program.name, "--distpath", str(dest),
            "--workpath", str(work / "build"), "--specpath", str(work), "--paths", str(REPO)]
    for module in (program.module, *program.starts):
        argv += ["--hidden-import", module]
    if not program.heavy:
        for name in HEAVY:
            argv += ["--exclude-module", name]
    if program.name == "hq-dbadmin" or program.name == "hq-server":
        # alembic reads the migration scripts as files at run time
        argv += ["--add-data", f"{REPO / 'hq' / 'db' / 'migrations'}:hq/db/migrations"]
    argv.append(str(entry))
    # The dest may hold an older build in the other form (a file where a directory goes)
    target = dest / program.name
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists() or target.is_symlink():
        target.unlink()
    done = subprocess.run(argv, cwd=work, check=False)
    if done.returncode != 0:
        fail(f"PyInstaller failed for {program.name} (exit status {done.returncode})")
    return target / program.name if form == "onedir" else target


def build_zipapp(program: Program, dest: Path, work: Path) -> Path:
    stage = work / f"{program.name}-zipapp"
    shutil.copytree(REPO / "hq", stage / "hq",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (stage / "__main__.py").write_text(ENTRY.format(name=program.name, module=program.module,
                                                    starts=program.starts))
    target = dest / f"{program.name}.pyz"
    python = Path(sys.prefix) / "bin" / "python"
    zipapp.create_archive(stage, target, interpreter=f"{python} -P", compressed=False)
    return target


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="makeFreezedVersion.py", description=__doc__.replace("``", "'"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--programs", default="hq-exec-server",
                        help="comma-separated programs to build, or 'all' "
                             f"(default hq-exec-server; known: {', '.join(PROGRAMS)})")
    parser.add_argument("--form", choices=FORMS, default="onedir",
                        help="onedir (default: fastest start), onefile (one file that unpacks "
                             "itself at each start) or zipapp (hq's code only, for comparison)")
    parser.add_argument("--dest", type=Path, default=REPO / "var" / "frozen",
                        help="where the builds go (default var/frozen/)")
    args = parser.parse_args(argv)
    names = list(PROGRAMS) if args.programs == "all" else \
        [n.strip() for n in args.programs.split(",") if n.strip()]
    unknown = [n for n in names if n not in PROGRAMS]
    if unknown or not names:
        parser.error(f"--programs: unknown program {', '.join(unknown) or '(none given)'}; "
                     f"known: {', '.join(PROGRAMS)}")
    args.names = names
    return args


def main(argv: list[str] | None = None) -> int:
    """Build each program asked for and print where it went and how long it took."""
    args = parse_args(argv)
    os.umask(0o022)   # every account must be able to run the builds
    if args.form != "zipapp":
        ensure_pyinstaller()
    dest = args.dest.resolve()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hq-freeze-") as tmp:
        for name in args.names:
            started = time.monotonic()
            print(f"building {name} ({args.form}) ...", flush=True)
            work = Path(tmp) / name
            work.mkdir()
            if args.form == "zipapp":
                target = build_zipapp(PROGRAMS[name], dest, work)
            else:
                target = build_pyinstaller(PROGRAMS[name], args.form, dest, work)
            print(f"built {target} in {time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
