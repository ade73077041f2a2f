"""The soak's random operations on the tree, git included, each one recorded and applied to the
model of ``_soak_tree.py``. Used by ``bench_soak.py``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import _harness as h
import _soak_tree as tr


def storm_top(rel: str) -> str | None:
    """The top directory of the storm holding *rel*, if any."""
    parts = rel.split("/")
    i = next((i for i, part in enumerate(parts[:-1]) if part.startswith("storm")), None)
    return None if i is None else "/".join(parts[: i + 1])


class Soak(tr.Tree):
    """The tree, the operations on it and the model of the files they leave."""

    def op_edit(self) -> None:
        rel = self.pick(modules=self.rng.random() < 0.8)
        if rel is None:
            return
        rev, old = self.rev(), self.files[rel]
        self.files[rel] = tr.text_for(rel, rev, self.rng.randrange(40), tr.funcs_of(old))
        self.write(rel, self.files[rel])
        self.record("edit", [rel], rev=rev)

    def same_size(self, rel: str, files: dict[str, bytes], base: Path, op: str) -> None:
        """A same-size edit, mtime put back: the old pyc's header still matches."""
        path, rev = base / rel, self.rev()
        st = os.stat(path)
        files[rel] = tr.text_for(rel, rev, tr.pad_of(rel, files[rel]), tr.funcs_of(files[rel]))
        self.write(rel, files[rel], base)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        self.record(op, [rel], rev=rev)

    def op_edit_restored(self) -> None:
        if (rel := self.pick()) is not None:
            self.same_size(rel, self.files, self.root, "edit-restored")

    def op_atomic_save(self) -> None:
        """Write a temp file beside, rename over; half of the time same size with the mtime of the
        file replaced (rsync -t, an editor keeping times)."""
        if (rel := self.pick()) is None:
            return
        path, rev, keep = self.root / rel, self.rev(), self.rng.random() < 0.5
        st = os.stat(path)
        old = self.files[rel]
        pad = tr.pad_of(rel, old) if keep else self.rng.randrange(40)
        tmp = path.with_name(f".{path.name}.{rev}.tmp")
        self.files[rel] = tr.text_for(rel, rev, pad, tr.funcs_of(old))
        tmp.write_bytes(self.files[rel])
        if keep:
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, path)
        self.record("atomic-save", [rel], rev=rev, kept_size_mtime=keep)

    def op_create(self) -> None:
        """A new module or resource; or a deleted file back with other bytes of the same size and
        its old mtime (``tar x``, ``cp -p`` of another version)."""
        packages, rev = self.packages(), self.rev()
        back = [r for r in self.gone if r not in self.files and r.rsplit("/", 1)[0] in packages]
        if back and self.rng.random() < 0.3:
            rel = self.rng.choice(back)
            size, mtime = self.gone.pop(rel)
            if (pad := size - len(tr.text_for(rel, rev, 0))) >= 0:
                self.files[rel] = tr.text_for(rel, rev, pad)
                self.write(rel, self.files[rel])
                os.utime(self.root / rel, ns=(mtime, mtime))
                self.record("create-restored", [rel], rev=rev)
                return
        if not packages:
            return
        name = f"new{self.serial}.py" if self.rng.random() < 0.85 else f"res{self.serial}.txt"
        rel = f"{self.rng.choice(packages)}/{name}"
        self.files[rel] = tr.text_for(rel, rev, self.rng.randrange(40), 20)
        self.write(rel, self.files[rel])
        self.record("create", [rel], rev=rev)

    def forget(self, rel: str) -> None:
        st = os.stat(self.root / rel)
        self.gone[rel] = (st.st_size, st.st_mtime_ns)
        del self.files[rel]

    def op_delete(self) -> None:
        if (rel := self.pick(modules=self.rng.random() < 0.9, inits=False)) is not None:
            self.forget(rel)
            (self.root / rel).unlink()
            self.record("delete", [rel])

    def op_rename(self) -> None:
        """A module moved (same package or another); or two same-size modules swapped after
        their mtimes were made equal (each one's pyc header then matches the other's source)."""
        if (a := self.pick(inits=False)) is None:
            return
        same = [r for r, d in self.files.items() if r.endswith(".py") and r != a
                and "__init__" not in r and len(d) == len(self.files[a])]  # fmt: skip
        if same and self.rng.random() < 0.35:
            b = self.rng.choice(same)
            pa, pb = self.root / a, self.root / b
            st = os.stat(pa)
            os.utime(pb, ns=(st.st_atime_ns, st.st_mtime_ns))
            tmp = pa.with_name(f".swap{self.serial}.tmp")
            os.rename(pa, tmp)
            os.rename(pb, pa)
            os.rename(tmp, pb)
            self.files[a], self.files[b] = self.files[b], self.files[a]
            self.record("swap", [a, b])
            return
        package = (
            a.rsplit("/", 1)[0] if self.rng.random() < 0.5 else self.rng.choice(self.packages())
        )
        stem = a.rsplit("/", 1)[1].split("_")[0].removesuffix(".py")
        new = f"{package}/{stem}_m{self.serial}{Path(a).suffix}"
        self.serial += 1
        data = self.files[a]
        self.forget(a)
        os.rename(self.root / a, self.root / new)
        self.files[new] = data
        self.record("rename", [a, new])

    def pick_package(self, min_depth: int = 0) -> str | None:
        pool = [p for p in self.packages() if p.count("/") >= min_depth]
        return self.rng.choice(pool) if pool else None

    def op_dir_rename(self) -> None:
        if (old := self.pick_package()) is None:
            return
        parent, _, leaf = old.rpartition("/")
        new = f"{parent}/{leaf.split('_')[0]}_d{self.serial}".lstrip("/")
        self.serial += 1
        os.rename(self.root / old, self.root / new)
        self.files.update(self.move_prefix(old, new, self.files))
        self.record("dir-rename", [old, new])

    def op_park(self) -> None:
        """A package moved out of the root; half of the time back within 0.05-0.4 s."""
        if (rel := self.pick_package()) is None:
            return
        name = f"p{self.serial}"
        self.serial += 1
        os.rename(self.root / rel, self.parking / name)
        self.parked[name] = (rel, self.move_prefix(rel, name, self.files))
        self.record("park", [rel], parked=name)
        if self.rng.random() < 0.5:
            time.sleep(self.rng.uniform(0.05, 0.4))
            self.unpark(name)

    def unpark(self, name: str) -> None:
        """Back where it was, or at the top when that place is gone or taken."""
        rel, files = self.parked.pop(name)
        parent = rel.rpartition("/")[0]
        if not (self.root / parent).is_dir() or (self.root / rel).exists():
            rel = f"{rel.rpartition('/')[2].split('_')[0]}_u{self.serial}"
            self.serial += 1
        os.rename(self.parking / name, self.root / rel)
        self.files.update({rel + key[len(name) :]: data for key, data in files.items()})
        self.record("unpark", [rel], parked=name)

    def op_unpark(self) -> None:
        self.unpark(self.rng.choice(list(self.parked)))

    def op_edit_parked(self) -> None:
        """A same-size, mtime-restored edit of a module while its package is outside the root."""
        name = self.rng.choice(list(self.parked))
        mods = [r for r in self.parked[name][1] if r.endswith(".py")]
        if mods:
            self.same_size(self.rng.choice(mods), self.parked[name][1], self.parking, "edit-parked")

    def op_storm(self) -> None:
        """``mkdir -p`` of 1-2 chains 3-6 packages deep, then their modules, deepest or top first."""
        base = self.pick_package() if self.rng.random() < 0.5 else None
        top = f"{base}/storm{self.serial}" if base else f"storm{self.serial}"
        self.serial += 1
        written: list[str] = []
        for chain in range(self.rng.randint(1, 2)):
            levels, path = [top], f"{top}/c{chain}"
            for i in range(self.rng.randint(3, 6)):
                levels.append(path)
                path += f"/l{i}"
            os.makedirs(self.root / levels[-1], exist_ok=True)
            for level in levels[:: self.rng.choice((1, -1))]:
                for name in ["__init__", *(f"m{j}" for j in range(self.rng.randint(0, 2)))]:
                    rel = f"{level}/{name}.py"
                    if rel not in self.files:
                        self.files[rel] = tr.module_text(self.rev(), self.rng.randrange(8), 5)
                        self.write(rel, self.files[rel])
                        written.append(rel)
        self.record("storm", [top], files=len(written))

    def op_rmtree(self) -> None:
        """``rm -rf`` of a storm; while the tree is bigger than at the start, sometimes of a
        package instead."""
        storms = sorted({top for rel in self.files if (top := storm_top(rel))})
        rel = self.rng.choice(storms) if storms else None
        if len(self.files) > self.size and self.rng.random() < 0.3:  # the tree stays its size
            rel = self.pick_package(min_depth=1)
        if rel is None:
            return
        self.move_prefix(rel, rel, self.files)  # dropped from the model
        for _ in range(20):  # rm -rf: the importer's temp pycs come and go meanwhile
            shutil.rmtree(self.root / rel, ignore_errors=True)
            if not (self.root / rel).exists():
                break
        else:
            raise OSError(f"rmtree {rel}: still there after 20 passes")
        self.record("rmtree", [rel])

    def unpark_all(self) -> None:
        while self.parked:
            self.unpark(next(iter(self.parked)))

    def op_checkout(self) -> None:
        self.unpark_all()
        self.commit_all()
        target = self.rng.choice([b for b in self.branches if b != self.branch])
        h.git(self.root, "checkout", "-q", target)
        self.branch, self.files, self.recent = target, dict(self.branches[target]), []
        self.record("checkout", [], to=target)

    def op_stash(self) -> None:
        """``git stash -u``, 0-1 s at HEAD's files (the importer compiles them), ``stash pop``."""
        self.unpark_all()
        if not self.stage_all():
            self.op_edit()
            self.stage_all()
        saved = dict(self.files)
        h.git(self.root, "stash", "push", "-q", "-u")
        self.files = dict(self.branches[self.branch])
        self.record("stash", [])
        time.sleep(self.rng.uniform(0, 1.0))
        h.git(self.root, "stash", "pop", "-q")
        self.files = saved
        self.record("stash-pop", [])

    def op_commit(self) -> None:
        self.unpark_all()
        self.commit_all()
        self.record("commit", [])

    def step(self, weights: dict[str, int]) -> str:
        name = self.rng.choices(list(weights), list(weights.values()))[0]
        method: Callable[[], None] = getattr(self, "op_" + name.replace("-", "_"))
        method()
        return name
