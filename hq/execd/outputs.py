"""Opening a job's output files so that no other account can steal or redirect them.

Jobs write where their owner says, often into directories other users can write too (a
shared 1777 scratch, a group project directory). Two attacks follow: another user plants a
symbolic link there (``outdir -> /elsewhere``, or the file itself), or makes the output file
first (``hq-16.out``, mode 0666, guessing the next id) and reads what the victim's job writes.
So the path is walked one component at a time from ``/`` with ``openat`` and
``O_NOFOLLOW``: a symbolic link among its directories is followed only when the job's user or
root owns it, the file itself is never one, and an existing regular file is written only
when the job's user owns it. Device files (``/dev/null``,
a terminal) keep working; a FIFO is opened without blocking.
"""

from __future__ import annotations

import errno
import os
import stat

MAX_LINKS = 40   # as the kernel: more symbolic links than this in one path is a loop

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class OutputRefused(Exception):
    """The file may not be opened; the message completes ``cannot start: ...``."""


def open_output(path: str, umask: int, what: str) -> int:
    """A descriptor open for writing (truncated) on ``path``, an absolute path; a new file
    gets mode ``0o666 & ~umask``. OutputRefused with the reason otherwise."""
    walker = _Walker(what, path)
    directory, name = walker.parent_of(path)
    try:
        return walker.open_last(directory, name, 0o666 & ~umask)
    finally:
        os.close(directory)


class _Walker:
    def __init__(self, what: str, path: str) -> None:
        self.what, self.path = what, path
        self.links = 0
        self.uid = os.geteuid()

    def refuse(self, reason: str) -> OutputRefused:
        return OutputRefused(f"{self.what} file {self.path}: {reason}")

    def parent_of(self, path: str) -> tuple[int, str]:
        """A descriptor of ``path``'s directory (every link on the way checked) and the
        name of its last component."""
        head, name = os.path.split(os.path.normpath(path))
        if not name:
            raise self.refuse("is a directory")
        return self.walk(head), name

    def walk(self, path: str) -> int:
        """A descriptor (O_PATH) of the directory ``path``, resolved link by link."""
        fd = os.open("/", _DIR_FLAGS)
        try:
            for part in [p for p in path.split("/") if p and p != "."]:
                inner = self.step(fd, part)
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        return fd

    def step(self, fd: int, part: str) -> int:
        """A new descriptor of ``part`` inside directory ``fd``; ``fd`` stays the caller's."""
        if part == "..":
            return os.open("..", _DIR_FLAGS, dir_fd=fd)
        try:
            st = os.stat(part, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            raise self.refuse(f"directory {part!r} on its path does not exist") from None
        if stat.S_ISLNK(st.st_mode):
            target = self.link_target(fd, part, st)
            if target.startswith("/"):
                return self.walk(target)
            current = os.dup(fd)
            try:
                for sub in [p for p in target.split("/") if p and p != "."]:
                    inner = self.step(current, sub)
                    os.close(current)
                    current = inner
            except BaseException:
                os.close(current)
                raise
            return current
        if not stat.S_ISDIR(st.st_mode):
            raise self.refuse(f"{part!r} on its path is not a directory")
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as err:   # replaced meanwhile, or not ours to enter
            raise self.refuse(f"{part!r}: {err.strerror}") from None

    def link_target(self, fd: int, name: str, st: os.stat_result) -> str:
        if st.st_uid not in (self.uid, 0):
            raise self.refuse(f"the symbolic link {name!r} on its path belongs to uid "
                              f"{st.st_uid}, not to the job's user: not followed")
        self.links += 1
        if self.links > MAX_LINKS:
            raise self.refuse("too many symbolic links on its path")
        return os.readlink(name, dir_fd=fd)

    def open_last(self, directory: int, name: str, mode: int) -> int:
        """Open (or make) ``name`` in ``directory``, by the rules of the module docstring."""
        if name == "..":
            raise self.refuse("is a directory")
        for _attempt in range(3):
            try:
                fd = os.open(name, _WRITE_FLAGS | os.O_CREAT | os.O_EXCL, mode, dir_fd=directory)
            except FileExistsError:
                pass
            except OSError as err:
                raise self.refuse(err.strerror or str(err)) from None
            else:
                os.fchmod(fd, mode)   # whatever the daemon's own umask is
                return fd
            try:
                st = os.stat(name, dir_fd=directory, follow_symlinks=False)
            except FileNotFoundError:
                continue   # removed between the two: make it after all
            if stat.S_ISLNK(st.st_mode):
                raise self.refuse("is a symbolic link (not followed)")
            return self.open_existing(directory, name)
        raise self.refuse("keeps appearing and disappearing")

    def open_existing(self, directory: int, name: str) -> int:
        try:
            fd = os.open(name, _WRITE_FLAGS | os.O_NONBLOCK, dir_fd=directory)
        except OSError as err:
            if err.errno == errno.ELOOP:   # became a link since it was looked at
                raise self.refuse("is a symbolic link (not followed)") from None
            raise self.refuse(err.strerror or str(err)) from None
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_uid != self.uid:
                raise self.refuse(f"it exists and belongs to uid {st.st_uid}, not to the job's "
                                  "user: not written (another account may read it)")
            if stat.S_ISDIR(st.st_mode):
                raise self.refuse("is a directory")
            if stat.S_ISREG(st.st_mode):
                os.ftruncate(fd, 0)   # as a shell's > would
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd
