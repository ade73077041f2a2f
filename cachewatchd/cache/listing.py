"""A directory listing from the filesystem itself, not from the kernel's cache of it.

An NFS client keeps a directory's listing for as long as the directory's change attribute stays the
same. A server that derives that attribute from a coarse ctime (NFSv3; NFSv4 where the filesystem
keeps no ``i_version``) keeps it the same for an entry made in the same timestamp tick as a change
the client had already listed: such an entry (a source, a pyc) stays out of every listing on that
client until the directory changes again. ``POSIX_FADV_DONTNEED`` on the directory drops the
client's cached listing, so the next one is read from the server (checked with the client's READDIR
counters in ``/proc/self/mountstats``, NFSv3 and v4.2). On a local filesystem it costs an open and a
close.
"""

from __future__ import annotations

import os

__all__ = ["drop_listing_cache"]


def drop_listing_cache(directory: str | os.PathLike[str]) -> None:
    """Have the next listing of *directory* read from its filesystem, not from the kernel's cache;
    nothing where ``posix_fadvise`` does not exist (macOS) or the call fails."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK)
    except OSError:
        return
    try:
        advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass
    finally:
        os.close(fd)
