"""``file.exists``, ``file.readText``, ``file.writeText``: confined to the policy's root."""

import errno
import os
import secrets
import stat

from lycan.errors import CapabilityError
from lycan.policy import CapabilityDenied, split_path
from lycan.sandbox._common import _checked_text, _policy
from lycan.values import type_name

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_TEMP_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
               | getattr(os, "O_CLOEXEC", 0))
_HAVE_DIR_FD = (os.open in os.supports_dir_fd and os.stat in os.supports_dir_fd
                and os.rename in os.supports_dir_fd and hasattr(os, "O_NOFOLLOW")
                and hasattr(os, "O_DIRECTORY"))


def _file_policy(context, kernel, flag):
    policy = _policy(context, kernel)
    if policy.root is None:
        raise CapabilityDenied(kernel, "the policy has no root, so no file access is allowed")
    if not getattr(policy, flag):
        raise CapabilityDenied(kernel, f"the policy does not set {flag!r}")
    if not _HAVE_DIR_FD:
        raise CapabilityDenied(kernel, "this platform cannot open files relative to a directory "
                                       "without following symbolic links")
    return policy


def _parts(kernel, argument, path):
    if type(path) is not str:
        raise CapabilityError(kernel, argument, f"must be a string, got {type_name(path)}")
    parts, problem = split_path(path)
    if problem:
        raise CapabilityDenied(kernel, f"path {path!r} {problem}", argument)
    return parts


def _describe(mode):
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a special file (device, FIFO or socket)"


def _lstat(directory, name):
    try:
        return os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _open_parent(kernel, argument, policy, parts):
    """A descriptor of the directory holding ``parts[-1]``, or None if a directory is missing.

    Every component is opened with O_NOFOLLOW relative to the previous one, so a symbolic
    link anywhere on the way (even one that points back inside the sandbox) is refused.
    """
    try:
        directory = os.open(policy.root, _DIR_FLAGS)
    except OSError as error:  # the sandbox itself is gone, or was swapped for a link
        raise CapabilityError(kernel, argument, f"the sandbox directory cannot be opened: {error.strerror}") from None
    try:
        for position, part in enumerate(parts[:-1]):
            try:
                inner = os.open(part, _DIR_FLAGS, dir_fd=directory)
            except FileNotFoundError:
                os.close(directory)
                return None
            except OSError as error:
                info = _lstat(directory, part) if error.errno in (errno.ELOOP, errno.ENOTDIR) else None
                shown = "/".join(parts[:position + 1])
                if info is not None and stat.S_ISLNK(info.st_mode):
                    raise CapabilityDenied(kernel, f"{shown!r} is a symbolic link; links are never followed",
                                           argument) from None
                if info is not None:
                    raise CapabilityError(kernel, argument, f"{shown!r} is {_describe(info.st_mode)}, "
                                                            "not a directory") from None
                raise CapabilityError(kernel, argument, f"cannot open {shown!r}: {error.strerror}") from None
            os.close(directory)
            directory = inner
    except BaseException:
        os.close(directory)
        raise
    return directory


def _regular(kernel, argument, info, shown):
    if stat.S_ISLNK(info.st_mode):
        raise CapabilityDenied(kernel, f"{shown!r} is a symbolic link; links are never followed", argument)
    if not stat.S_ISREG(info.st_mode):
        raise CapabilityDenied(kernel, f"{shown!r} is {_describe(info.st_mode)}, not a regular file", argument)


def file_exists(context, path):
    """Whether a regular file or directory exists at ``path`` inside the sandbox."""
    kernel = "file.exists"
    policy = _file_policy(context, kernel, "read")
    parts = _parts(kernel, "path", path)
    directory = _open_parent(kernel, "path", policy, parts)
    if directory is None:
        return False
    try:
        info = _lstat(directory, parts[-1])
    finally:
        os.close(directory)
    if info is None:
        return False
    if not stat.S_ISDIR(info.st_mode):
        _regular(kernel, "path", info, path)
    return True


def file_read_text(context, path):
    """The UTF-8 text of a regular file inside the sandbox, at most ``file_max_bytes``."""
    kernel = "file.readText"
    policy = _file_policy(context, kernel, "read")
    parts = _parts(kernel, "path", path)
    cap = policy.limits.file_max_bytes
    directory = _open_parent(kernel, "path", policy, parts)
    if directory is None:
        raise CapabilityError(kernel, "path", f"{path!r} does not exist")
    try:
        info = _lstat(directory, parts[-1])
        if info is None:
            raise CapabilityError(kernel, "path", f"{path!r} does not exist")
        _regular(kernel, "path", info, path)  # never even open a device or FIFO
        if info.st_size > cap:
            raise CapabilityError(kernel, "path", f"{path!r} is {info.st_size} bytes, more than "
                                                  f"file_max_bytes {cap}")
        try:
            handle = os.open(parts[-1], _READ_FLAGS, dir_fd=directory)
        except OSError as error:
            raise CapabilityError(kernel, "path", f"cannot open {path!r}: {error.strerror}") from None
    finally:
        os.close(directory)
    try:
        opened = os.fstat(handle)
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise CapabilityDenied(kernel, f"{path!r} was replaced while it was being opened", "path")
        _regular(kernel, "path", opened, path)
        chunks, total = [], 0
        while total <= cap:
            chunk = os.read(handle, min(65536, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(handle)
    if total > cap:
        raise CapabilityError(kernel, "path", f"{path!r} is more than file_max_bytes {cap}")
    try:
        text = b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as error:
        raise CapabilityError(kernel, "path", f"{path!r} is not UTF-8 text: {error.reason} "
                                              f"at byte {error.start}") from None
    return _checked_text(context, kernel, text)


def _is_policy_file(policy, directory, name, existing):
    if policy.policy_path is None:
        return False
    try:
        policy_info = os.stat(policy.policy_path)
        if existing is not None and (existing.st_dev, existing.st_ino) == (policy_info.st_dev, policy_info.st_ino):
            return True
    except OSError:
        pass
    try:
        policy_dir = os.stat(os.path.dirname(policy.policy_path))
    except OSError:
        return False
    here = os.fstat(directory)
    return ((here.st_dev, here.st_ino) == (policy_dir.st_dev, policy_dir.st_ino)
            and name == os.path.basename(policy.policy_path))


def file_write_text(context, path, text):
    """Atomically replace (or create) a file inside the sandbox; gives the bytes written."""
    kernel = "file.writeText"
    policy = _file_policy(context, kernel, "write")
    parts = _parts(kernel, "path", path)
    if type(text) is not str:
        raise CapabilityError(kernel, "text", f"must be a string, got {type_name(text)}")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise CapabilityError(kernel, "text", "is not encodable as UTF-8") from None
    cap = policy.limits.file_max_bytes
    if len(data) > cap:
        raise CapabilityError(kernel, "text", f"is {len(data)} bytes, more than file_max_bytes {cap}")
    directory = _open_parent(kernel, "path", policy, parts)
    if directory is None:
        raise CapabilityError(kernel, "path", f"the directory of {path!r} does not exist")
    name = parts[-1]
    try:
        existing = _lstat(directory, name)
        if existing is not None:
            _regular(kernel, "path", existing, path)
        if _is_policy_file(policy, directory, name, existing):
            raise CapabilityDenied(kernel, f"{path!r} is the capsule's policy file, which a capsule "
                                           "can never write", "path")
        temporary = f".lycan-tmp-{secrets.token_hex(8)}"
        try:
            handle = os.open(temporary, _TEMP_FLAGS, 0o644, dir_fd=directory)
        except OSError as error:
            raise CapabilityError(kernel, "path", f"cannot write in the directory of {path!r}: "
                                                  f"{error.strerror}") from None
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(handle, view):]
                os.fsync(handle)
            finally:
                os.close(handle)
            os.rename(temporary, name, src_dir_fd=directory, dst_dir_fd=directory)
        except BaseException as error:
            try:
                os.unlink(temporary, dir_fd=directory)
            except OSError:
                pass
            if isinstance(error, OSError):
                raise CapabilityError(kernel, "path", f"cannot write {path!r}: {error.strerror}") from None
            raise
        try:
            os.fsync(directory)
        except OSError:
            pass  # some filesystems cannot sync a directory; the rename has still happened
    finally:
        os.close(directory)
    return len(data)
