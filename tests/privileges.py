"""Permission tests that also work as root.

Root reads and writes files whatever their permission bits say, through the capabilities
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: ``chmod 000`` stops nobody. A test of "cannot
read / cannot write" therefore runs its command as a child process without those two
capabilities (``subprocess.run(..., preexec_fn=obey_permissions)``): uid 0 still, but the
permission bits apply to it as to any user.
"""

from __future__ import annotations

import ctypes
import os
import sys

CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
_PERMISSION_CAPS = (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _permitted_caps() -> int:
    """This process's permitted capability set (0 where /proc is not there)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapPrm:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def _needs_dropping() -> bool:
    mask = sum(1 << cap for cap in _PERMISSION_CAPS)
    # uid 0 regains every capability of the bounding set when it executes a program.
    return os.geteuid() == 0 or bool(_permitted_caps() & mask)


def _check(result: int, libc, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def obey_permissions() -> None:
    """``preexec_fn``: the child, and the program it executes, obey file permission bits.

    Drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set (so executing a
    program as uid 0 cannot give them back) and from the inheritable and ambient sets. A
    process without them (any ordinary user) is left as it is. Raises OSError where they
    cannot be dropped, so the test fails rather than passing without checking anything.
    """
    if not _needs_dropping():
        return
    if not sys.platform.startswith("linux"):
        raise OSError("cannot drop root's file-permission override on this platform")
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in _PERMISSION_CAPS:
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), libc, f"prctl(PR_CAPBSET_DROP, {cap})")
    libc.prctl(
        PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0
    )  # EINVAL before Linux 4.3: nothing ambient then
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(libc.capget(ctypes.byref(header), data), libc, "capget")
    keep = ~sum(1 << cap for cap in _PERMISSION_CAPS) & 0xFFFFFFFF
    data[0].effective &= keep
    data[0].permitted &= keep
    data[0].inheritable &= keep
    _check(libc.capset(ctypes.byref(header), data), libc, "capset")
