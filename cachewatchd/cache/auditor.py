"""The engine's core: walk a tree and judge each directory's cache entries, as plain rows.

:func:`cachewatchd.cache.audit.audit` turns the rows into a report; ``--jobs`` runs parts of one audit
in other processes (rows are plain data: they travel through a pipe).
"""

from __future__ import annotations

import os
import time

from cachewatchd.cache.checks import CheckPool
from cachewatchd.cache.index import Record
from cachewatchd.cache.judge import FRESH_HEADER, MASK, WHOLE_SECOND_NS, read_pyc
from cachewatchd.cache.legacy import judge_legacy
from cachewatchd.cache.plan import AuditOptions, Part, prefix_identity
from cachewatchd.cache.pyc import (
    HEADER,
    HEADER_SIZE,
    LEGACY_SUFFIXES,
    SOURCE_SUFFIXES,
    parse_cache_name,
)
from cachewatchd.cache.rows import Collector, Result
from cachewatchd.cache.states import Kind, State, VanishedError, Verdict
from cachewatchd.cache.verified import Checked, Memory
from cachewatchd.cache.walk import Excluder, walk_stack

__all__ = ["Auditor"]


def _open_dirs(source_dir: str, cache_dir: str) -> tuple[int, int] | None:
    """Open both directories for ``*at`` calls; ``None`` when either cannot be opened."""
    flags = os.O_RDONLY | os.O_DIRECTORY
    try:
        source_fd = os.open(source_dir, flags)
    except OSError:
        return None
    try:
        return source_fd, os.open(cache_dir, flags | os.O_NOFOLLOW)
    except OSError:
        os.close(source_fd)
        return None


def _not_a_source_here(verdict: Verdict, directory: str, stem: str) -> Verdict:
    """*verdict* (no source found), saying so when ``<stem>.pyw`` is there but is no source on
    this platform (``.pyw`` is one on Windows only)."""
    if ".pyw" in SOURCE_SUFFIXES or not os.path.lexists(os.path.join(directory, stem + ".pyw")):
        return verdict
    return verdict._replace(
        reason=f"{verdict.reason} ({stem}.pyw is here, but .pyw is not a source on this platform)"
    )


class Auditor(Collector):
    """Judges directories and trees; collects plain rows until :meth:`take` (:class:`Collector`).

    Fresh entries are only counted unless ``keep_fresh``. With *dedup*, an entry reached twice
    (overlapping roots, a prefix tree inside a root) is judged once. Exact checks run in the
    worker of *checks* (:mod:`cachewatchd.cache.checks`), started on the first one; :meth:`close`
    stops it (an auditor is a context manager). Their results are kept in the verification index
    (:mod:`cachewatchd.cache.verified`), whose records settle the entries they still apply to.
    """

    def __init__(
        self, options: AuditOptions, *, dedup: bool = True, checks: CheckPool | None = None
    ) -> None:
        super().__init__(keep_fresh=options.keep_fresh, dedup=dedup)
        self.options = options
        self.checks = checks if checks is not None else CheckPool()
        self.excluder = Excluder(options.walk_options(), prefix_identity(options.pycache_prefix))
        self._tag_opt: dict[str, tuple[str, str]] = {}
        """``__pycache__`` name after the stem -> tag and opt level."""
        self._magic: dict[str, bytes] = {}
        """Tag -> the magic of a pyc of that tag found fresh by its header."""
        self._pending: list[Checked] = []
        """Entries waiting for the exact check."""
        self.memory = Memory(options)
        self._now = time.time_ns()

    def __enter__(self) -> Auditor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the checking process, if one was started; write what the index is to keep."""
        try:
            self.checks.close()
        finally:
            self.memory.close()

    def take(self) -> Result:
        """What was found since the last call."""
        self.settle()
        self.memory.flush()
        self.notes += [  # the same sentence per version: reports keep each once
            f"CPython {v[0]}.{v[1]}'s cache entries were judged by their headers only: {why}"
            for v, why in sorted(self.checks.missing.items())
        ]
        return super().take()

    def tree(self, path: str, rel: str = "", *, root: bool = True) -> None:
        """Judge the tree at *path* (*rel* below its root), as a root or as a walk's subtree."""
        for dirpath, entries in walk_stack(
            [(path, rel)], self.excluder, self.on_error, top_is_root=root
        ):
            self.directory(dirpath, entries)

    def directory(self, dirpath: str, entries: list[os.DirEntry[str]]) -> None:
        sources: dict[str, os.DirEntry[str]] = {}
        legacy: list[os.DirEntry[str]] = []
        pycache: os.DirEntry[str] | None = None
        for entry in entries:
            name = entry.name
            if name.endswith(SOURCE_SUFFIXES):
                sources[name] = entry
            elif name.endswith(LEGACY_SUFFIXES):
                legacy.append(entry)
            elif name == "__pycache__":
                pycache = entry
        for entry in legacy:
            self.legacy(entry, sources, dirpath)
        if pycache is not None and pycache.is_dir(follow_symlinks=False):
            self.pycache(dirpath, pycache.path, sources)

    def pycache(
        self, source_dir: str, cache_dir: str, sources: dict[str, os.DirEntry[str]]
    ) -> None:
        try:
            with os.scandir(cache_dir) as it:
                names = [e.name for e in it if e.name.endswith(".pyc")]
        except FileNotFoundError:
            return
        except OSError as exc:
            self.on_error(cache_dir, exc)
            return
        fds = _open_dirs(source_dir, cache_dir)
        stats: dict[str, os.stat_result] = {}  # a source with pycs of several opt levels
        self._now = time.time_ns()
        records = self.memory.records(cache_dir) if names else {}
        untrusted = self.memory.untrusted(source_dir)
        try:
            for name in names:
                path = f"{cache_dir}/{name}"
                if not self.first_visit(path):
                    continue
                stem, _, rest = name.partition(".")
                tag_opt = (self._tag_opt.get(rest) or self._parse_rest(rest)) if stem else None
                source = sources.get(stem + ".py") if tag_opt is not None else None
                if (
                    fds is None
                    or source is None
                    or tag_opt is None
                    or not self._beside_source(
                        path, name, source, tag_opt, fds, stats, records.get(name), untrusted
                    )
                ):
                    self.cached(path, name, source_dir, sources, "pycache")
        finally:
            if fds is not None:
                os.close(fds[0])
                os.close(fds[1])
        self.settle()

    def _parse_rest(self, rest: str) -> tuple[str, str] | None:
        """Tag and opt level of ``<stem>.<rest>`` (same for every stem); remembered when valid."""
        parsed = parse_cache_name(f"x.{rest}")
        if parsed is None:
            return None
        self._tag_opt[rest] = parsed.tag, parsed.opt
        return parsed.tag, parsed.opt

    def _beside_source(
        self,
        path: str,
        name: str,
        source: os.DirEntry[str],
        tag_opt: tuple[str, str],
        fds: tuple[int, int],
        stats: dict[str, os.stat_result],
        record: Record | None,
        untrusted: bool,
    ) -> bool:
        """Judge a ``__pycache__`` pyc whose ``.py`` is listed: the hot path of every scan.

        Reads relative to the directories' fds (no path lookups). Once a pyc of a tag has been
        judged fresh by its header, a pyc with the same magic, flags 0 and the mtime and size of
        its source (not changed since, not an exact check of this Python's pyc with ``deep``) is
        fresh by the same rules: one bytes compare (unless the index has a record of it, ctime
        cannot be trusted there, or its times are within a tick of the source's or of now). False
        when the general path must judge it (the source cannot be stat-ed).
        """
        st = stats.get(source.name)
        if st is None:
            try:
                st = stats[source.name] = os.stat(source.name, dir_fd=fds[0])
            except OSError:
                return False
        try:
            data, pst = read_pyc(name, fds[1])
        except VanishedError:
            return True
        except OSError as exc:
            self.on_error(path, exc)
            return True
        tag, opt = tag_opt
        magic = self._magic.get(tag)
        mtime_ns = pst.st_mtime_ns
        if (
            magic is not None
            and (record is None or record.state == "fresh")  # fresh either way
            and not untrusted
            and pst.st_size > HEADER_SIZE
            and pst.st_dev == st.st_dev  # one clock stamps both
            and st.st_ctime_ns < mtime_ns - WHOLE_SECOND_NS  # the trigger's largest tick
            and mtime_ns <= min(pst.st_ctime_ns, self._now)
            and not self.options.deep
            and data == HEADER.pack(magic, 0, int(st.st_mtime) & MASK, st.st_size & MASK)
        ):
            self.add(path, source.path, FRESH_HEADER, tag, opt, "pycache")
            return True
        verdict = self._judge(
            path, source.path, st, tag, opt, data, pst, "pycache", record, untrusted
        )
        if verdict is FRESH_HEADER:
            self._magic[tag] = data[:4]
        return True

    def _judge(
        self,
        path: str,
        source: str,
        st: os.stat_result,
        tag: str,
        opt: str,
        data: bytes,
        pst: os.stat_result,
        kind: Kind,
        record: Record | None,
        untrusted: bool,
    ) -> Verdict | None:
        """Judge a pyc whose header was read, with the index's *record* of it: add its verdict
        (returned), or queue its exact check (``None``)."""
        try:
            judged = self.memory.judge(
                path, source, st, tag, opt, data, pst, kind, record, untrusted, self._now
            )
        except VanishedError:
            return None
        except OSError as exc:
            self.on_error(path, exc)
            return None
        if isinstance(judged, Checked):
            self._pending.append(judged)
            return None
        self.add(path, source, judged, tag, opt, kind)
        return judged

    def legacy(
        self, entry: os.DirEntry[str], sources: dict[str, os.DirEntry[str]], dirpath: str
    ) -> None:
        seen = self._seen
        if (seen is not None and entry.path in seen) or not entry.is_file(follow_symlinks=False):
            return
        if seen is not None:
            seen.add(entry.path)
        stem = entry.name[:-4]
        source = next((sources[n] for s in SOURCE_SUFFIXES if (n := stem + s) in sources), None)
        source_stat = None
        if source is not None:
            try:
                source_stat = source.stat()
            except FileNotFoundError:
                source = None
            except OSError as exc:
                self.on_error(source.path, exc)
                return
        try:
            verdict = judge_legacy(
                entry.path,
                None if source is None else source.path,
                source_stat,
                checks=self.checks,
                deep=self.options.deep,
            )
        except VanishedError:
            return
        except OSError as exc:
            self.on_error(entry.path, exc)
            return
        if verdict.state is State.SOURCELESS:
            verdict = _not_a_source_here(verdict, dirpath, stem)
        self.add(entry.path, None if source is None else source.path, verdict, "", "", "legacy")

    def cached(
        self,
        path: str,
        name: str,
        source_dir: str,
        sources: dict[str, os.DirEntry[str]] | None,
        kind: Kind,
    ) -> None:
        """Judge any ``__pycache__`` or prefix-tree pyc (already counted by :meth:`first_visit`)."""
        parsed = parse_cache_name(name)
        if parsed is None:
            self.add(path, None, Verdict(State.ORPHAN, "not a name CPython imports"), "", "", kind)
            return
        source, source_name, stat = self._find_source(source_dir, parsed.stem, sources)
        if source is None or stat is None:
            verdict = Verdict(State.ORPHAN, f"source {parsed.stem}.py is gone: never imported")
            verdict = _not_a_source_here(verdict, source_dir, parsed.stem)
            self.add(path, None, verdict, parsed.tag, parsed.opt, kind)
            return
        source_path = os.path.join(source_dir, source_name)
        try:
            data, pst = read_pyc(path)
        except VanishedError:
            return
        except OSError as exc:
            self.on_error(path, exc)
            return
        cache_dir, base = os.path.split(path)
        record = self.memory.records(cache_dir).get(base)
        untrusted = self.memory.untrusted(source_dir)
        self._judge(
            path, source_path, stat, parsed.tag, parsed.opt, data, pst, kind, record, untrusted
        )

    def settle(self) -> None:
        """Run the exact checks the entries judged so far wait for, all in one pipeline, and
        add their verdicts (after the other entries of their directory)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        for item, verdict in self.memory.settle(pending, self.checks):
            if isinstance(verdict, OSError):
                self.on_error(item.pending.pyc, verdict)
            elif verdict is not None:
                self.add(item.pending.pyc, item.source, verdict, item.tag, item.opt, item.kind)

    def _find_source(
        self, source_dir: str, stem: str, sources: dict[str, os.DirEntry[str]] | None
    ) -> tuple[str | None, str, os.stat_result | None]:
        """The source's path, name and stat; ``None`` path when no source can be stat-ed."""
        for suffix in SOURCE_SUFFIXES:
            name = stem + suffix
            try:
                if sources is not None:
                    entry = sources.get(name)
                    if entry is not None:
                        return entry.path, name, entry.stat()
                else:
                    path = os.path.join(source_dir, name)
                    return path, name, os.stat(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.on_error(os.path.join(source_dir, name), exc)
                return None, "", None
        return None, "", None

    def part(self, part: Part) -> None:
        """Judge one :class:`Part` of an audit."""
        if part.source is None:
            self.tree(part.path)
        else:
            self.mirror_tree(part.path, part.source, part.skip)

    def mirror_tree(self, mirror: str, source: str, skip: frozenset[str] = frozenset()) -> None:
        """Judge the prefix-tree directory *mirror* and below as the caches of the sources in
        *source* (the directory it mirrors) and below; the directories in *skip* are not entered."""
        stack = [(mirror, "")]
        while stack:
            path, rel = stack.pop()
            try:
                with os.scandir(path) as it:
                    entries = list(it)
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.on_error(path, exc)
                continue
            source_dir = os.path.join(source, rel) if rel else source
            for entry in entries:
                child_rel = f"{rel}/{entry.name}" if rel else entry.name
                if entry.is_dir(follow_symlinks=False):
                    if entry.path not in skip and not self.excluder.excluded(entry.name, child_rel):
                        stack.append((entry.path, child_rel))
                elif (
                    entry.name.endswith(".pyc")
                    and entry.is_file(follow_symlinks=False)
                    and self.first_visit(entry.path)
                ):
                    self.cached(entry.path, entry.name, source_dir, None, "prefix")
            self.settle()
