"""One error path: every failure a user can cause becomes one `error: <sentence>` line and exit code 2.

User-causable failures are `D2itError` (bad names, options, files), `OSError` on the paths we read
and write (disk full, read-only, permissions, a file where a folder is expected, ...) and click's
usage errors (unknown or malformed options). Anything else is a bug and keeps its traceback.
"""

import errno
import os
import sys

import click

from d2it.errors import D2itError, DataError, WriteFailed

EXIT_USER = 2

# errno -> what went wrong with the named path
_OS_SENTENCES = {
    errno.ENOSPC: "no space left writing {path}",
    errno.EDQUOT: "disk quota exceeded writing {path}",
    errno.EROFS: "{path} is on a read-only file system",
    errno.EACCES: "permission denied for {path}",
    errno.EPERM: "operation not permitted on {path}",
    errno.ENOTDIR: "{path} is not a directory (a file is in the way)",
    errno.EISDIR: "{path} is a directory, not a file",
    errno.EEXIST: "{path} already exists",
    errno.ENOENT: "{path} does not exist",
    errno.ELOOP: "{path} is a symbolic link loop",
    errno.ENAMETOOLONG: "the path {path} is too long",
    errno.ENOTEMPTY: "{path} is not empty",
    errno.EMFILE: "too many open files while opening {path}",
    errno.EBUSY: "{path} is busy",
    errno.EIO: "input/output error on {path}",
}


# what to do about a failed write, by errno
_WRITE_ADVICE = {
    errno.ENOSPC: "free some space and run it again",
    errno.EDQUOT: "free some space and run it again",
    errno.EROFS: "write to a writable location",
    errno.EACCES: "write to a location you may write to",
    errno.EPERM: "write to a location you may write to",
}


def os_error_sentence(exc: OSError) -> str:
    """One sentence naming the path and what is wrong with it (for a failed write of ours: that nothing changed)."""
    text = _os_error_text(exc)
    if isinstance(exc, WriteFailed) and exc.errno != errno.ENOTDIR:
        advice = _WRITE_ADVICE.get(exc.errno)
        text += "; nothing was replaced, the previous files are intact" + (f" ({advice})" if advice else "")
    return text


def _os_error_text(exc: OSError) -> str:
    path = exc.filename if exc.filename is not None else None
    if exc.filename2 is not None and exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.EXDEV):
        path = exc.filename2
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__)
    if path is None:
        return f"{reason[:1].lower()}{reason[1:]}" if reason else type(exc).__name__
    if exc.errno == errno.ENOTDIR:
        blocker = _file_in_the_way(os.fsdecode(path))
        if blocker is not None:
            return f"{os.fsdecode(path)} cannot be used: {blocker} is a file, not a directory"
    template = _OS_SENTENCES.get(exc.errno)
    if template is None:
        return f"{os.fsdecode(path)}: {reason[:1].lower()}{reason[1:]}"
    return template.format(path=os.fsdecode(path))


def _file_in_the_way(path: str) -> str | None:
    """The nearest ancestor (or the path itself) that exists but is not a directory."""
    parts = os.path.normpath(path).split(os.sep)
    for end in range(1, len(parts) + 1):
        prefix = os.sep.join(parts[:end]) or os.sep
        if os.path.lexists(prefix) and not os.path.isdir(prefix):
            return prefix
    return None


def usage_sentence(exc: click.ClickException) -> str:
    """A click usage error in one line, pointing at the command's --help."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, click.UsageError) and ctx is not None:
        message = message.rstrip(".") + f" (see '{ctx.command_path} --help')"
    return message[:1].lower() + message[1:]


def sentence(exc: BaseException) -> str | None:
    """The one-line message of a user-causable failure, or None for a bug."""
    if isinstance(exc, D2itError):
        text = str(exc)
        if "Original Traceback" in text:  # re-raised from a DataLoader worker: keep the original sentence
            last = [line for line in text.splitlines() if line.strip()][-1]
            text = last.split("Error: ", 1)[-1] if "Error: " in last else last
    elif isinstance(exc, click.ClickException):
        text = usage_sentence(exc)
    elif isinstance(exc, OSError):
        text = os_error_sentence(exc)
    else:
        return None
    return " ".join(text.split()) or type(exc).__name__


def _rank() -> int:
    """This process's rank: the process group's, else torchrun's RANK (an error before the group was joined)."""
    group = sys.modules.get("torch.distributed")  # never imported here: `d2it --help` loads no torch
    if group is not None and group.is_available() and group.is_initialized():
        return group.get_rank()
    try:
        return int(os.environ.get("RANK", 0))
    except ValueError:
        return 0


def report(exc: BaseException) -> int | None:
    """Print `error: <sentence>` to stderr and return the exit code, or None when `exc` is a bug.

    Under torchrun every rank exits with the code, and rank 0 alone prints what all ranks hit alike (a bad option,
    a checkpoint that does not fit, a diverged or stopped run); what may concern one rank alone (its data: DataError,
    its files: OSError) the other ranks print too, naming themselves.
    """
    text = sentence(exc)
    if text is None:
        return None
    code = getattr(exc, "exit_code", EXIT_USER)
    label = getattr(exc, "label", "error")
    rank = _rank()
    if rank == 0:
        click.echo(f"{label}: {text}", err=True)
    elif isinstance(exc, (DataError, OSError)):
        click.echo(f"{label}: [rank {rank}] {text}", err=True)
    return code
