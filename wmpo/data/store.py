"""Crash-safe, appendable HDF5 trajectory store in robomimic layout (docs/data.md has the details).

On disk, a store `demos.h5` is
  demos.h5            the index: a robomimic file whose `data/demo_<i>` are HDF5 external links,
                      `data.attrs["env_args"]` (JSON env metadata), `data.attrs["total"]`,
                      `action_stats/q01|q99` (float32 [7]), a format marker, `attrs["store_id"]`,
                      and robomimic's `mask/<filter key>` groups (kept when the index is rewritten);
  demos.h5.episodes/  one complete HDF5 file per episode, `demo_<i>.h5`, holding `data/demo_<i>`
                      in the layout of wmpo.data.episode_file (obs/agentview_image [T+1],
                      next_obs/agentview_image [T] as a virtual dataset, actions, rewards, dones,
                      states [T+1, S], attributes and sha256 checksums), also reachable as
                      `stores/<store_id>/demo_<i>`;
  demos.h5.lock       while a writer has the store open: its pid, host and start time.

What the store guarantees:
- Atomic episodes. An episode file is written under a temporary name, fsynced and renamed into
  place, then the index is rewritten the same way. A writer killed at any point leaves either the
  old index or the new one, and every episode file the index names is complete; the next open in
  "a" mode deletes stray temporary files and re-indexes complete episode files the index missed.
  Readers see a consistent snapshot and pick up new episodes on the next `len()` / `refresh()`.
- A single writer. Modes "a" and "w" hold `demos.h5.lock` (wmpo.data.writer_lock) until `close()`;
  a second writer gets `LockedError` naming the lock and its owner. A lock left by a killed writer
  is taken over with a warning. Readers take no lock.
- Checksums, verified on every load: a damaged episode raises `CorruptEpisodeError` naming its
  file, or, with `on_corrupt="skip"`, is left out (one warning). Episodes written before checksums
  existed load unverified. The index's action statistics carry one too.
- Nothing indexed is dropped: appending refuses (StoreFormatError) when the `.episodes` folder or
  an episode file the index names is missing.
- Resume without duplicates: each episode's meta records its start (D0 `seed`, or `start_index`
  and `start_state_sha256`), read by collectors to skip stored starts (wmpo.sim.collect).
- Links resolve next to the index only. HDF5 tries an external link against the index's folder,
  then the current directory; the links name `stores/<store_id>/demo_<i>`, which only this store's
  episode files hold, so a separated index fails instead of reading another store's episodes
  (episodes written before store ids existed keep `data/...`). `wmpo export --single-file` makes a
  self-contained copy, which this class reads in mode "r".
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from wmpo.data.episode import ACTION_DIM, Episode, action_quantiles, check_episode
from wmpo.data.episode_file import DATASETS, episode_record, read_actions, read_episode_group, write_episode_group
from wmpo.data.integrity import CorruptEpisodeError, StoreFormatError, _fsync_dir, _fsync_file, _stats_digest
from wmpo.data.writer_lock import LockedError, StaleLockWarning, WriterLock

FORMAT = "wmpo-trajectory-store"
VERSION = 2  # 2: next_obs virtual datasets, store_id, mask/ kept, single-file exports (1 still reads)
SINGLE_FILE = "single-file"
"""attrs["layout"] of a self-contained export: the episodes are groups of the file itself"""
_DEMO_RE = re.compile(r"^demo_(\d+)\.h5$")

__all__ = ["CorruptEpisodeError", "DATASETS", "LockedError", "StaleLockWarning", "StoreFormatError", "TrajectoryStore",
           "action_quantiles", "check_episode"]


def _index_of(name: str) -> int:
    return int(name.split("_")[1])


class TrajectoryStore:
    """Append episodes, read them back by index, action statistics for normalization.

    mode "r": read only (the store must exist); "a": append, creating it if missing; "w": create,
    deleting an existing store at `path`. "a" and "w" hold the store's writer lock until `close()`.

    on_corrupt: what reading a damaged episode (missing, unreadable or failing its checksum) does.
    "raise" (default): `load()` raises CorruptEpisodeError naming the file. "skip": in mode "r",
    every episode is verified when it first appears and damaged ones are left out of `len()`,
    indexing and iteration (`skipped` lists their files; one warning per newly found batch); in
    mode "a", their actions are left out of the statistics.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r", env_meta: dict[str, Any] | None = None,
                 on_corrupt: str = "raise"):
        if mode not in ("r", "a", "w"):
            raise ValueError(f"mode: expected 'r', 'a' or 'w', got {mode!r}")
        if on_corrupt not in ("raise", "skip"):
            raise ValueError(f"on_corrupt: expected 'raise' or 'skip', got {on_corrupt!r}")
        self.path = Path(path)
        self.episode_dir = self.path.with_name(self.path.name + ".episodes")
        self.mode = mode
        self.on_corrupt = on_corrupt
        self._closed = False
        self._stamp: tuple | None = None
        self._indexed: list[str] = []  # every name in the index
        self._names: list[str] = []  # the names this object serves (damaged ones left out when skipping)
        self._verified: set[str] = set()
        self._damaged: dict[str, str] = {}  # name -> why
        self._env_meta: dict[str, Any] = {}
        self._stats = action_quantiles(np.zeros((0, ACTION_DIM)))
        self._stats_ok = True
        self._actions: list[np.ndarray] = []  # writer-side cache for the statistics
        self._lock: WriterLock | None = None
        self._store_id: str | None = None
        self._single_file = False
        self._total = 0  # actions counted in the statistics
        self._link_paths: dict[str, str] = {}  # name -> object path the index's external link names
        if mode == "r":
            if not self.path.exists():
                raise FileNotFoundError(f"trajectory store not found: {self.path}")
            self._read_index()
            if self._indexed and not self._single_file and not self.episode_dir.is_dir():
                raise StoreFormatError(
                    f"{self.path}: its episode folder {self.episode_dir} is missing, but the index names {len(self._indexed)} "
                    f"episode(s) (an index copied without its folder?). Copy the folder along with it, or make a "
                    f"self-contained file with `wmpo export --single-file`")
            self._names = list(self._indexed)
            self._screen()
            return
        if self.path.is_dir():
            raise StoreFormatError(f"{self.path}: is a folder, expected a trajectory store file (.h5)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = WriterLock(self.path.with_name(self.path.name + ".lock"), what=f"trajectory store {self.path}")
        self._lock.acquire()
        try:
            self._open_writer(env_meta)
        except BaseException:
            self._lock.release()
            raise

    def _open_writer(self, env_meta: dict[str, Any] | None) -> None:
        if self.mode == "w":
            if self.path.exists():
                self.path.unlink()
            if self.episode_dir.exists():
                shutil.rmtree(self.episode_dir)
        if self.path.exists():
            self._read_index()  # validates that the file is ours
            if self._single_file:
                raise StoreFormatError(f"{self.path}: a self-contained export (`wmpo export --single-file`) is read-only; "
                                       f"append to the store it was exported from, or import it into a new store")
            self._check_indexed_files()
        self.episode_dir.mkdir(parents=True, exist_ok=True)
        self._recover()
        self._store_id = self._store_id or self._episodes_store_id() or uuid.uuid4().hex  # new: a fresh id
        if env_meta is not None:
            self._env_meta = dict(env_meta)
        self._actions = []
        for name in self._names:
            try:
                self._actions.append(self._read_actions(name))  # also finds the episode's link path
            except CorruptEpisodeError as e:
                if self.on_corrupt == "raise":
                    raise CorruptEpisodeError(e.path, f"{str(e).split(': ', 1)[1]}; cannot append to {self.path} "
                                              f"(its action statistics would include it): move the file out of "
                                              f"{self.episode_dir} and delete {self.path} (rebuilt from the episode "
                                              f"files on the next append), or open with on_corrupt='skip'") from None
                self._damaged[name] = str(e)
        if self._damaged:
            self._warn_skipped(list(self._damaged), "left out of the action statistics")
        self._stats = action_quantiles(np.concatenate(self._actions) if self._actions else np.zeros((0, ACTION_DIM)))
        self._stats_ok = True
        self._write_index()

    # ---- index --------------------------------------------------------------------------
    def _read_index(self) -> None:
        try:
            f = h5py.File(self.path, "r", locking=False)
        except OSError as e:
            raise StoreFormatError(f"{self.path}: not an HDF5 file, or a damaged one ({e})") from None
        try:
            with f:
                if f.attrs.get("format") != FORMAT or "data" not in f:
                    raise StoreFormatError(f"{self.path}: not a wmpo trajectory store (no format marker {FORMAT!r})")
                data = f["data"]
                self._env_meta = json.loads(data.attrs.get("env_args", "{}"))
                self._indexed = sorted(data.keys(), key=_index_of)
                self._total = int(data.attrs.get("total", 0))
                self._store_id = str(f.attrs["store_id"]) if "store_id" in f.attrs else None
                self._single_file = f.attrs.get("layout") == SINGLE_FILE
                if "action_stats" in f:
                    self._stats = {k: np.asarray(f["action_stats"][k], np.float32) for k in ("q01", "q99")}
                    want = f["action_stats"].attrs.get("sha256")
                    self._stats_ok = want is None or str(want) == _stats_digest(self._stats)
        except StoreFormatError:
            raise
        except (OSError, KeyError, ValueError, IndexError) as e:
            raise StoreFormatError(f"{self.path}: damaged trajectory store index ({type(e).__name__}: {e}); delete it "
                                   f"and open the store in mode 'a' to rebuild it from {self.episode_dir}") from None
        st = self.path.stat()
        self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)

    def _check_indexed_files(self) -> None:
        """Refuse to append when episodes the index names are gone (the rewrite would drop them)."""
        if not self._indexed:
            return
        if not self.episode_dir.is_dir():
            raise StoreFormatError(
                f"{self.path}: its episode folder {self.episode_dir} is missing, but the index names "
                f"{len(self._indexed)} episode(s); appending would rewrite the index without them. Restore the "
                f"folder, or start a new store (mode 'w' or another path)")
        missing = [n for n in self._indexed if not (self.episode_dir / f"{n}.h5").is_file()]
        if missing:
            raise StoreFormatError(
                f"{self.path}: {len(missing)} episode file(s) the index names are missing from {self.episode_dir} "
                f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); appending would rewrite the index "
                f"without them. Restore them, or delete {self.path} to re-index the episode files that remain")

    def _recover(self) -> None:
        """After a crash: drop temporary files, index complete episode files the index missed."""
        for p in self.episode_dir.iterdir():
            if p.name.endswith(".tmp"):
                p.unlink()
        present = {p.name[:-3] for p in self.episode_dir.iterdir() if _DEMO_RE.match(p.name)}
        self._names = sorted(present, key=_index_of)
        self._indexed = list(self._names)

    def _episodes_store_id(self) -> str | None:
        """The store id the episode files carry (an index rebuilt from them keeps it)."""
        for name in self._names:  # (only when the index has none: an old or a lost index)
            try:
                with h5py.File(self._episode_file(name), "r", locking=False) as f:
                    if "store_id" in f.attrs:
                        return str(f.attrs["store_id"])
            except OSError:
                continue
        return None

    def _write_index(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        total = 0
        with h5py.File(tmp, "w", locking=False) as f:
            f.attrs["format"] = FORMAT
            f.attrs["version"] = VERSION
            f.attrs["store_id"] = self._store_id
            data = f.create_group("data")
            for name in self._names:
                data[name] = h5py.ExternalLink(f"{self.episode_dir.name}/{name}.h5", self._link_paths.get(name, f"/data/{name}"))
            for a in self._actions:
                total += len(a)
            data.attrs["total"] = total
            self._total = total
            self._copy_masks(f)
            data.attrs["env_args"] = json.dumps(self._env_meta)
            g = f.create_group("action_stats")
            for k, v in self._stats.items():
                g[k] = v
            g.attrs["sha256"] = _stats_digest(self._stats)
        _fsync_file(tmp)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        st = self.path.stat()
        self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)

    def _copy_masks(self, f: h5py.File) -> None:
        """robomimic's train/validation filter keys (`mask/`), carried from the index being replaced."""
        try:
            with h5py.File(self.path, "r", locking=False) as old:
                if "mask" in old:
                    old.copy(old["mask"], f, "mask")
        except OSError:
            pass  # no old index, or a damaged one: nothing to carry

    def refresh(self) -> None:
        """Re-read the index if another process appended since."""
        if self.mode != "r":
            return
        st = self.path.stat()
        if (st.st_ino, st.st_mtime_ns, st.st_size) != self._stamp:
            self._read_index()
            self._names = [n for n in self._indexed if n not in self._damaged]
            self._screen()

    # ---- damaged episodes -----------------------------------------------------------------
    def _screen(self) -> None:
        """With on_corrupt="skip": verify episodes not verified yet, leave damaged ones out."""
        if self.on_corrupt != "skip":
            return
        new = []
        for name in self._names:
            if name in self._verified:
                continue
            try:
                self._read_episode(name)
                self._verified.add(name)
            except CorruptEpisodeError as e:
                self._damaged[name] = str(e)
                new.append(name)
        if new:
            self._names = [n for n in self._names if n not in self._damaged]
            self._warn_skipped(new, "skipped")

    def _warn_skipped(self, names: list[str], what: str) -> None:
        files = [str(self._episode_file(n)) for n in names]
        why = self._damaged[names[0]]
        warnings.warn(f"trajectory store {self.path}: {len(names)} damaged episode(s) {what}: {', '.join(files)} "
                      f"(first: {why})", stacklevel=3)

    @property
    def skipped(self) -> list[str]:
        """Files of the damaged episodes left out (on_corrupt="skip")."""
        return [str(self._episode_file(n)) for n in self._damaged]

    # ---- writing ------------------------------------------------------------------------
    def append(self, ep: Episode) -> int:
        """Write `ep` durably; -> its index."""
        self._check_open()
        if self.mode == "r":
            raise ValueError(f"append: store {self.path} is open read-only (mode 'r')")
        arrays, attrs = episode_record(ep)
        idx = _index_of(self._names[-1]) + 1 if self._names else 0
        name = f"demo_{idx}"
        final = self.episode_dir / f"{name}.h5"
        tmp = self.episode_dir / f"{name}.h5.tmp"
        with h5py.File(tmp, "w", locking=False) as f:
            f.attrs["format"] = FORMAT + "-episode"
            f.attrs["store_id"] = self._store_id
            g = write_episode_group(f.create_group("data"), name, arrays, attrs)
            f[self._link_path(name)] = g  # a hard link: the same group under this store's own name
        _fsync_file(tmp)
        os.replace(tmp, final)
        _fsync_dir(self.episode_dir)
        self._names.append(name)
        self._indexed = list(self._names)
        self._link_paths[name] = self._link_path(name)
        self._actions.append(arrays["actions"])
        self._stats = action_quantiles(np.concatenate(self._actions))
        self._write_index()
        return len(self._names) - 1

    # ---- reading ------------------------------------------------------------------------
    def __len__(self) -> int:
        self._check_open()
        self.refresh()
        return len(self._names)

    def _link_path(self, name: str) -> str:
        return f"/stores/{self._store_id}/{name}"

    def _episode_file(self, name: str) -> Path:
        return self.path if self._single_file else self.episode_dir / f"{name}.h5"

    def _open_episode(self, name: str):
        path = self._episode_file(name)
        if not path.is_file():
            raise CorruptEpisodeError(path, f"episode file of {name!r} is missing")
        try:
            return h5py.File(path, "r", locking=False)
        except OSError as e:
            raise CorruptEpisodeError(path, f"unreadable episode file ({e})") from None

    def _group(self, f: h5py.File, name: str) -> h5py.Group:
        """data/<name> of an episode file, checked to belong to this store (not one of another store
        placed next to this index)."""
        path = self._episode_file(name)
        key = f"data/{name}"
        if key not in f:
            raise CorruptEpisodeError(path, f"missing key {key!r}")
        if self._store_id and not self._single_file and "stores" in f and self._link_path(name).lstrip("/") not in f:
            raise CorruptEpisodeError(path, f"episode file of another trajectory store (store ids {list(f['stores'])}, this "
                                            f"index {self._store_id}): {self.episode_dir} is not this index's folder")
        return f[key]

    def _read_actions(self, name: str) -> np.ndarray:
        path = self._episode_file(name)
        with self._open_episode(name) as f:
            try:
                g = self._group(f, name)
                if self.mode != "r" and self._link_path(name).lstrip("/") in f:
                    self._link_paths[name] = self._link_path(name)
                return read_actions(g, path)
            except CorruptEpisodeError:
                raise
            except (OSError, KeyError, ValueError, RuntimeError) as e:
                raise CorruptEpisodeError(path, f"unreadable episode file ({type(e).__name__}: {e})") from None

    def _read_episode(self, name: str) -> Episode:
        path = self._episode_file(name)
        with self._open_episode(name) as f:
            try:
                g = self._group(f, name)
            except CorruptEpisodeError:
                raise
            except (OSError, KeyError, ValueError, RuntimeError) as e:
                raise CorruptEpisodeError(path, f"unreadable episode file ({type(e).__name__}: {e})") from None
            return read_episode_group(g, path)

    def load(self, i: int) -> Episode:
        """Episode number i (0 <= i < len). A damaged episode raises CorruptEpisodeError naming its file."""
        self._check_open()
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"i: expected an episode index in [0, {n}), got {i}")
        return self._read_episode(self._names[i])

    def __getitem__(self, i: int) -> Episode:
        return self.load(i)

    def __iter__(self) -> Iterator[Episode]:
        for i in range(len(self)):
            yield self.load(i)

    def _attrs(self, name: str) -> dict[str, Any]:
        path = self._episode_file(name)
        with self._open_episode(name) as f:
            try:
                g = f[f"data/{name}"]
                return {k: g.attrs[k] for k in g.attrs}
            except (OSError, KeyError, ValueError) as e:
                raise CorruptEpisodeError(path, f"unreadable episode file ({type(e).__name__}: {e})") from None

    @property
    def names(self) -> list[str]:
        """The episodes' group names (`demo_<i>`), in order."""
        self._check_open()
        return list(self._names[: len(self)])

    @property
    def store_id(self) -> str | None:  # None: a store written before store ids, not appended to since
        return self._store_id

    def episode_lengths(self) -> list[int]:
        """T of every episode (reads only attributes, not verified)."""
        self._check_open()
        return [int(self._attrs(name)["num_samples"]) for name in list(self._names[: len(self)])]

    def episode_metas(self) -> list[dict[str, Any]]:
        """`meta` of every episode, in order (reads only attributes, not verified)."""
        self._check_open()
        out = []
        for name in list(self._names[: len(self)]):
            try:
                out.append(json.loads(self._attrs(name).get("meta", "{}")))
            except ValueError as e:
                raise CorruptEpisodeError(self._episode_file(name), f"unreadable meta ({e})") from None
        return out

    def stored_seeds(self) -> list[int]:
        """D0 seeds of the stored episodes that started from one (meta["seed"]), in order."""
        return [int(m["seed"]) for m in self.episode_metas() if m.get("seed") is not None]

    def successes(self) -> list[bool]:
        """Success flag of every episode (reads only attributes, not verified)."""
        self._check_open()
        return [bool(self._attrs(name)["success"]) for name in list(self._names[: len(self)])]

    def action_stats(self) -> dict[str, np.ndarray]:
        """{"q01": float32 [7], "q99": float32 [7]} over all stored actions; StoreFormatError when the
        store holds no actions (no statistics are made up)."""
        self._check_open()
        self.refresh()
        if self._total == 0:
            raise StoreFormatError(f"{self.path}: holds no actions (no episodes{', all damaged' if self._damaged else ''}), "
                                   f"so it has no action statistics; collect or import episodes first")
        if not self._stats_ok:
            raise StoreFormatError(f"{self.path}: the index's action statistics fail their checksum (damaged index); "
                                   f"opening the store once in mode 'a' recomputes them from the episodes")
        return {k: v.copy() for k, v in self._stats.items()}

    @property
    def env_meta(self) -> dict[str, Any]:
        return dict(self._env_meta)

    def set_env_meta(self, env_meta: dict[str, Any]) -> None:
        """Replace the environment metadata (writers only; written to the index now)."""
        self._check_open()
        if self.mode == "r":
            raise ValueError(f"set_env_meta: store {self.path} is open read-only (mode 'r')")
        if dict(env_meta) != self._env_meta:
            self._env_meta = dict(env_meta)
            self._write_index()

    # ---- lifetime -------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"store {self.path} is closed")

    def close(self) -> None:
        self._closed = True
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "TrajectoryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            try:
                lock.release()
            except Exception:
                pass

    def __repr__(self) -> str:
        return f"TrajectoryStore({str(self.path)!r}, mode={self.mode!r}, episodes={len(self._names)})"
