"""Linux kernel primitives of the code-verifier sandbox, called through ``ctypes``.

Standard library only: this module is imported by the zygote process (``_zygote.py``),
which runs outside the ``uniapl_mcore`` package.  x86-64 only (the project's machines);
elsewhere :func:`check_platform` raises, and the sandbox fails closed.

Why each mechanism (see also ``_zygote.py``):

* **Namespaces** (``unshare``): a network namespace with no interface but a downed
  loopback removes every route out; a mount namespace lets the zygote build a private
  root holding only read-only Python and a per-verifier tmpfs (bubblewrap's design); a
  PID namespace whose init is the zygote hides every other process and guarantees that
  when the zygote dies all verifiers die with it; IPC/UTS namespaces cut SysV IPC
  and hostname sharing.  They need ``CAP_SYS_ADMIN``, which the trainer has (it runs
  as root); the verifiers themselves never hold it.
* **Landlock** (unprivileged LSM, ABI >= 1): a second, independent filesystem boundary
  inside the mount view (read-only on Python's directories, read/write on the
  verifier's own tmpfs only), TCP bind/connect denied (ABI >= 4), and signals and
  abstract UNIX sockets scoped to the verifier's own domain (ABI >= 6).
* **seccomp-BPF**: no new processes (``fork``/``vfork``/``execve*``/``clone`` without
  ``CLONE_THREAD``), no sockets, no namespace, mount, ptrace, BPF, io_uring, keyring or
  SysV-IPC calls.  A deny list (not an allow list) because CPython and the libraries a
  verifier imports use a wide, version-dependent set of harmless syscalls; the other
  layers stand behind it.  Foreign ABIs (x32, i386) kill the process.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]  # fmt: skip
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]  # fmt: skip

# clone/unshare flags
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWCGROUP = 0x02000000
CLONE_THREAD = 0x00010000

# mount flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

# prctl
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
SECCOMP_MODE_FILTER = 2

# x86-64 system call numbers (checked against asm/unistd_64.h by the tests)
NR = {
    "shmget": 29, "socket": 41, "clone": 56, "fork": 57, "vfork": 58, "execve": 59,
    "semget": 64, "msgget": 68, "ptrace": 101, "syslog": 103, "mknod": 133,
    "personality": 135, "vhangup": 153, "pivot_root": 155, "chroot": 161, "acct": 163,
    "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169,
    "iopl": 172, "ioperm": 173, "init_module": 175, "delete_module": 176,
    "quotactl": 179, "lookup_dcookie": 212, "mq_open": 240, "kexec_load": 246,
    "add_key": 248, "request_key": 249, "keyctl": 250, "migrate_pages": 256,
    "mknodat": 259, "unshare": 272, "move_pages": 279, "perf_event_open": 298,
    "fanotify_init": 300, "name_to_handle_at": 303, "open_by_handle_at": 304,
    "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
    "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "execveat": 322,
    "userfaultfd": 323, "pidfd_send_signal": 424, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "pidfd_open": 434, "clone3": 435, "pidfd_getfd": 438, "process_madvise": 440,
    "mount_setattr": 442, "quotactl_fd": 443, "landlock_create_ruleset": 444,
    "landlock_add_rule": 445, "landlock_restrict_self": 446,
}  # fmt: skip

#: Denied system calls → errno returned.  ``clone3`` answers ENOSYS so that glibc falls
#: back to ``clone`` for threads, where the flags can be inspected.
DENIED: dict[str, int] = {
    **{name: errno.EPERM for name in (
        "fork", "vfork", "execve", "execveat", "ptrace", "process_vm_readv",
        "process_vm_writev", "kcmp", "pidfd_open", "pidfd_getfd", "pidfd_send_signal",
        "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "bpf",
        "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "kexec_load",
        "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
        "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "mknod", "mknodat", "iopl",
        "ioperm", "open_by_handle_at", "name_to_handle_at", "personality", "shmget",
        "msgget", "semget", "mq_open", "io_uring_setup", "io_uring_enter",
        "io_uring_register", "fanotify_init", "syslog", "move_pages", "migrate_pages",
        "lookup_dcookie", "vhangup", "open_tree", "move_mount", "fsopen", "fsconfig",
        "fsmount", "fspick", "mount_setattr", "process_madvise")},
    "socket": errno.EACCES,
    "clone3": errno.ENOSYS,
}  # fmt: skip

AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000
_NS_FLAGS = (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID
             | CLONE_NEWNET | CLONE_NEWCGROUP)  # fmt: skip

# Landlock
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1, 2, 4, 8
FS_READ = FS_READ_FILE | FS_READ_DIR


class SandboxSetupError(OSError):
    """A kernel primitive the sandbox needs failed (message names the call)."""

    def __str__(self) -> str:
        return str(self.strerror)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise SandboxSetupError(err, f"{what} failed: {os.strerror(err)}")
    return result


def check_platform() -> None:
    """Raise unless this is Linux on x86-64 (the syscall table above)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise SandboxSetupError(
            errno.ENOSYS, f"the OS sandbox supports Linux x86-64 only, not "
            f"{platform.system()} {platform.machine()}")  # fmt: skip


def unshare(flags: int) -> None:
    """``unshare(2)`` (Python 3.11 has no ``os.unshare``)."""
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    """``mount(2)``."""
    enc = (lambda s: None if s is None else os.fsencode(s))  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)),
           f"mount({source!r}, {target!r}, {fstype!r})")


def umount(target: str, flags: int = MNT_DETACH) -> None:
    """``umount2(2)``."""
    _check(_libc.umount2(os.fsencode(target), flags), f"umount({target!r})")


def pivot_root(new_root: str, put_old: str) -> None:
    """``pivot_root(2)``."""
    _check(_libc.syscall(NR["pivot_root"], os.fsencode(new_root), os.fsencode(put_old)),
           "pivot_root")


def prctl(option: int, arg: int = 0) -> None:
    """``prctl(2)`` with one argument."""
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl({option})")


# ---------------------------------------------------------------- Landlock


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is missing or disabled."""
    abi = _libc.syscall(NR["landlock_create_ruleset"], None, 0, LANDLOCK_CREATE_RULESET_VERSION)
    return max(int(abi), 0)


def _fs_mask(abi: int) -> int:
    mask = (1 << 13) - 1  # ABI 1: EXECUTE … MAKE_SYM
    if abi >= 2:
        mask |= 1 << 13  # REFER
    if abi >= 3:
        mask |= 1 << 14  # TRUNCATE
    if abi >= 5:
        mask |= 1 << 15  # IOCTL_DEV
    return mask


def landlock_ruleset(abi: int, read_dirs: list[str], write_dirs: list[str]) -> int:
    """A ruleset fd: read-only beneath ``read_dirs``, everything beneath ``write_dirs``.

    TCP bind/connect are handled without any allowing rule (ABI >= 4: no TCP at all);
    signals and abstract UNIX sockets are scoped to the domain (ABI >= 6).
    """
    fs_all = _fs_mask(abi)
    net = 3 if abi >= 4 else 0
    scoped = 3 if abi >= 6 else 0
    attr = struct.pack("QQQ", fs_all, net, scoped)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    buf = ctypes.create_string_buffer(attr, 24)
    fd = _check(int(_libc.syscall(NR["landlock_create_ruleset"], buf, size, 0)),
                "landlock_create_ruleset")
    try:
        for access, dirs in ((FS_READ | FS_EXECUTE, read_dirs), (fs_all, write_dirs)):
            for path in dirs:
                _landlock_add_path(fd, path, access)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _landlock_add_path(ruleset_fd: int, path: str, access: int) -> None:
    path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not os.path.isdir(path):
            access &= FS_EXECUTE | FS_READ_FILE | FS_WRITE_FILE | (1 << 14) | (1 << 15)
        rule = ctypes.create_string_buffer(struct.pack("=Qi", access, path_fd), 12)
        _check(int(_libc.syscall(NR["landlock_add_rule"], ruleset_fd,
                                 LANDLOCK_RULE_PATH_BENEATH, rule, 0)),
               f"landlock_add_rule({path!r})")
    finally:
        os.close(path_fd)


def landlock_restrict_self(ruleset_fd: int) -> None:
    """Enforce the ruleset on this (single-threaded) process and its future threads."""
    _check(int(_libc.syscall(NR["landlock_restrict_self"], ruleset_fd, 0)),
           "landlock_restrict_self")


# ---------------------------------------------------------------- seccomp


_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_JSET_K = 0x45
_BPF_ALU_AND_K = 0x54
_BPF_RET_K = 0x06
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def seccomp_program() -> bytes:
    """The BPF filter (``struct sock_filter`` array) described in the module docstring."""
    prog = [
        _insn(_BPF_LD_W_ABS, 4),  # arch
        _insn(_BPF_JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        _insn(_BPF_RET_K, RET_KILL_PROCESS),
        _insn(_BPF_LD_W_ABS, 0),  # syscall number
        _insn(_BPF_JGE_K, _X32_BIT, 0, 1),
        _insn(_BPF_RET_K, RET_KILL_PROCESS),
    ]
    for name, err in DENIED.items():
        prog += [_insn(_BPF_JEQ_K, NR[name], 0, 1), _insn(_BPF_RET_K, RET_ERRNO | err)]
    # clone: allowed only for threads (CLONE_THREAD set, no namespace flag)
    prog += [
        _insn(_BPF_JEQ_K, NR["clone"], 1, 0),
        _insn(_BPF_RET_K, RET_ALLOW),
        _insn(_BPF_LD_W_ABS, 16),  # low 32 bits of args[0] (flags)
        _insn(_BPF_ALU_AND_K, CLONE_THREAD | _NS_FLAGS),
        _insn(_BPF_JEQ_K, CLONE_THREAD, 0, 1),
        _insn(_BPF_RET_K, RET_ALLOW),
        _insn(_BPF_RET_K, RET_ERRNO | errno.EPERM),
    ]
    return b"".join(prog)


def seccomp_install() -> None:
    """Install :func:`seccomp_program` on this process (requires no_new_privs)."""
    code = seccomp_program()
    filt = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HxxxxxxP", len(code) // 8, ctypes.addressof(filt))
    fbuf = ctypes.create_string_buffer(fprog, len(fprog))
    _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fbuf), 0, 0),
           "seccomp filter")
