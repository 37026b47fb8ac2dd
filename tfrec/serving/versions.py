"""The version manager: which versions of which models are loaded and served.

Each model's `base_path` is polled. Its version policy (latest N, all,
specific) is applied to the version folders on disk on every pass, as TF
Serving does: a wanted version that is not loaded is loaded (again, if it was
unloaded before), and a served version the policy no longer wants is unloaded
once a wanted one is available, so a model is never left without a version
while one on disk can serve, nor left without one when its base_path is wrong
(missing, empty, or nothing there loads): the versions loaded before keep serving
until the configured path has one that loads, and GetModelStatus says why. A
version that fails to load is reported (state END with its error) and retried
when its files change, or after a back-off.

A version folder is loaded once complete (`VersionFolder.missing`: the files an
export writes are all there) and stable (its files' sizes and times unchanged
between two looks: a poll apart, or at most a second apart for a folder seen for
the first time); until then it is reported as START. An export
renames a whole version into place; a version copied by hand is waited for.

A call holds the `Loaded` version it was given for its whole life: unloading
only drops the manager's reference, so calls in flight finish on the model
they started with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import threading
import time
import weakref
from pathlib import Path

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from tfrec.config import ServeConfig
from tfrec.exporter.layout import ModelFolder, VersionFolder
from tfrec.exporter.saved_model import load_saved_model, release_saved_model
from tfrec.serving.config import ModelEntry
from tfrec.serving.errors import ServingError, shown

logger = logging.getLogger(__name__)

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"
RETRY_FIRST_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0
# The longest wait between the two looks at a version folder seen for the first time.
SETTLE_MAX_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A loaded version: the model and what requests are checked against.

    Attributes:
      name: model name.
      number: version number.
      path: the version folder it was loaded from.
      model: the loaded SavedModel.
      signature_defs: signature name -> SignatureDef proto.
      metadata: the export's metadata ({} if absent), e.g. max_k
        and max_session_items.
    """

    name: str
    number: int
    path: Path
    model: object
    signature_defs: object
    metadata: dict
    # signature name -> its `predict.DirectCall`, made at its first call
    calls: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)


@dataclasses.dataclass
class Version:
    """One version's state as GetModelStatus reports it.

    Attributes:
      error: why it failed to load (state END).
      detail: a note that is not an error: what a START version waits for, or why a
        version from before is still served.
    """

    number: int
    path: Path
    state: str = LOADING
    error: str = ""
    loaded: Loaded | None = None
    detail: str = ""


@dataclasses.dataclass
class _Failure:
    """A failed load: retried when the folder's files change or at `retry_at`."""

    fingerprint: tuple
    attempts: int
    retry_at: float
    error: str


def _saved_model(path: Path):
    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString(VersionFolder(path).saved_model.read_bytes())
    return proto


def _signature_defs(path: Path):
    return _saved_model(path).meta_graphs[0].signature_def


def _signature_names(path: Path) -> list[str] | None:
    """The SavedModel's signature names, or None if its saved_model.pb cannot be read."""
    try:
        return list(_signature_defs(path))
    except Exception:  # absent, partly written or not a SavedModel: the load will say
        return None


def fingerprint(path: Path) -> tuple:
    """(relative path, size, mtime) of every file under `path`, sorted."""
    if not path.is_dir():
        return ()
    found = []
    for file in path.rglob("*"):
        try:
            stat = file.stat()
        except OSError:  # removed while we looked
            continue
        found.append((str(file.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    return tuple(sorted(found))


def _versions_on_disk(base: Path) -> tuple[list[int], str]:
    """(the version numbers under `base`, why there is nothing to serve or "")."""
    if not base.exists():
        return [], f"its base_path {base} does not exist"
    if not base.is_dir():
        return [], f"its base_path {base} is not a folder"
    try:
        found = ModelFolder(base).versions()
    except OSError as err:  # unreadable: nothing to serve
        return [], f"its base_path {base} cannot be read ({err.strerror or err})"
    if not found:
        return [], f"its base_path {base} holds no version folders (1, 2, ...)"
    return found, ""


class ModelManager:
    """Loads, serves and unloads versions of the configured models."""

    def __init__(self, entries: list[ModelEntry],
                 poll_seconds: float = ServeConfig.file_system_poll_wait_seconds, loader=None):
        self._lock = threading.RLock()  # guards entries, versions, _failures, problems, _synced
        self._synced_cond = threading.Condition(self._lock)
        self._model_locks: dict[str, threading.Lock] = {}
        self.entries = {e.name: e for e in entries}
        self.versions: dict[str, dict[int, Version]] = {e.name: {} for e in entries}
        self._failures: dict[Path, _Failure] = {}
        self.problems: dict[str, str] = {}  # model -> why its base_path serves nothing
        self._label_warned: set = set()  # (model, label, version) warned of, not served
        self._synced: set[str] = set()  # models whose first pass has finished
        self.poll_seconds = poll_seconds
        # Polling once (0) still gives a version seen for the first time a moment to show
        # whether it is being written.
        self.settle_seconds = min(poll_seconds or SETTLE_MAX_SECONDS, SETTLE_MAX_SECONDS)
        self._seen: dict[Path, tuple] = {}  # version folder -> its fingerprint at the last look
        self._signatures: dict[Path, tuple] = {}  # version folder -> (saved_model.pb stat, names)
        self._kept: set[tuple] = set()  # (model, version, base_path) warned about keeping
        self._loader = loader or _load_version
        self._stop = threading.Event()
        self._thread = None

    # -- loading --------------------------------------------------------------------------
    def sync(self) -> None:
        """One pass over every model (see `sync_model`)."""
        with self._lock:
            names = list(self.entries)
        for name in names:
            self.sync_model(name)

    def sync_model(self, name: str) -> None:
        """Applies the model's policy to its folder: loads wanted versions, unloads the rest.

        One pass per model at a time (the poller, the config watcher and the
        reload RPC may all call it), so a version is never loaded twice.
        """
        with self._lock:
            lock = self._model_locks.setdefault(name, threading.Lock())
        with lock:
            with self._lock:
                entry = self.entries.get(name)
            if entry is None:
                return
            changed = 0
            try:
                with _releases_in_this_pass():
                    changed = self._apply_policy(name, entry)
                if changed:
                    seconds, frozen = settle_heap()
                    logger.info("%s: the heap settled in %.0f ms (%d objects out of the "
                                "collector's reach)", name, seconds * 1000, frozen)
            finally:
                with self._synced_cond:
                    self._synced.add(name)
                    self._synced_cond.notify_all()

    def _apply_policy(self, name: str, entry: ModelEntry) -> int:
        """Loads the wanted versions, unloads the rest; returns how many changed."""
        changed = 0
        on_disk, problem = _versions_on_disk(entry.base_path)
        if not problem and entry.policy == "specific" and not set(
                entry.specific) & set(on_disk):
            problem = (f"its version policy names version "
                       f"{', '.join(map(str, sorted(entry.specific)))} and its "
                       f"base_path {entry.base_path} holds version "
                       f"{', '.join(map(str, on_disk))}")
        complete, waiting = self._complete_versions(name, entry, on_disk)
        wanted = entry.wanted(complete)
        for number in wanted:
            path = entry.base_path / str(number)
            if self._should_load(name, number, path):
                changed += self._load(name, number, path)
        changed += self._unload_unwanted(name, on_disk, wanted, entry, waiting,
                                         problem)
        self._note_problem(name, entry.base_path, problem)
        self._note_labels(name, entry)
        return changed

    # -- completeness -----------------------------------------------------------------------
    def _complete_versions(self, name: str, entry: ModelEntry,
                           on_disk: list[int]) -> tuple[list[int], set[int]]:
        """(the versions on disk the policy may load, the incomplete ones it would want).

        Newest first, as far as the policy looks: a version loaded from this path
        counts as it is; any other must be complete and stable (`_waiting_for`), else
        it is reported as START and the policy passes over it.
        """
        candidates = sorted(on_disk, reverse=True)
        if entry.policy == "specific":
            candidates = [n for n in candidates if n in entry.specific]
        self._first_look([entry.base_path / str(n) for n in candidates])
        complete, waiting = [], set()
        for number in candidates:
            if entry.policy == "latest" and len(complete) >= entry.latest_n:
                break
            path = entry.base_path / str(number)
            with self._lock:
                known = self.versions.get(name, {}).get(number)
            if known is not None and known.state == AVAILABLE and known.path == path:
                complete.append(number)
                continue
            reason = self._waiting_for(path)
            if not reason:
                complete.append(number)
                continue
            waiting.add(number)
            with self._lock:
                known = self.versions.get(name, {}).get(number)
                if name not in self.versions or (known is not None
                                                 and known.state == AVAILABLE):
                    continue  # the one loaded before (another path) serves meanwhile
                self.versions[name][number] = Version(number, path, START, detail=reason)
            if known is None or known.state != START:
                logger.info("%s version %d at %s is not complete yet (%s); it loads once its "
                            "files are all there and stable", name, number, path, reason)
        with self._lock:
            for path in [p for p in self._seen if p.parent == entry.base_path
                         and (not p.name.isdigit() or int(p.name) not in on_disk)]:
                del self._seen[path]
                self._signatures.pop(path, None)
        return complete, waiting

    def _first_look(self, paths: list[Path]) -> None:
        """Takes the first look at version folders not seen before and, if any of them
        holds a SavedModel, waits `settle_seconds` (once), so that the second look
        (`_waiting_for`) can tell whether they are stable without waiting for a poll."""
        with self._lock:
            fresh = [p for p in paths if p not in self._seen]
        if not fresh:
            return
        looks = {p: fingerprint(p) for p in fresh}
        with self._lock:
            self._seen.update(looks)
        if any(VersionFolder(p).saved_model.exists() for p in fresh):
            time.sleep(self.settle_seconds)

    def _waiting_for(self, path: Path) -> str:
        """What the version folder still lacks ("" once it is complete and stable).

        Complete: `VersionFolder.missing` (the one rule of what an export writes).
        Stable: its files' sizes and times are those of the last look (the previous
        poll, or, for a folder seen for the first time, `_first_look`).
        """
        now = fingerprint(path)
        with self._lock:
            before = self._seen.get(path)
            self._seen[path] = now
        missing = VersionFolder(path).missing(self._signatures_of(path))
        if missing:
            return "waiting for " + ", ".join(missing[:4]) + (", ..." * (len(missing) > 4))
        if now != before:
            return "waiting for its files to stop changing"
        return ""

    def _signatures_of(self, path: Path) -> list[str] | None:
        """`_signature_names`, read again only when saved_model.pb changes."""
        try:
            stat = VersionFolder(path).saved_model.stat()
        except OSError:
            return None
        key = (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._signatures.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        names = _signature_names(path)
        with self._lock:
            self._signatures[path] = (key, names)
        return names

    def _serving(self, name: str) -> list[int]:
        with self._lock:
            return sorted(v.number for v in self.versions.get(name, {}).values()
                          if v.state == AVAILABLE)

    def _note_problem(self, name: str, base: Path, problem: str) -> None:
        """Records why the model's base_path serves nothing; warns when that changes."""
        with self._lock:
            if name not in self.entries:
                return
            before = self.problems.get(name, "")
            if problem:
                self.problems[name] = problem
            else:
                self.problems.pop(name, None)
        if problem and problem != before:
            serving = self._serving(name)
            if serving:
                logger.warning("model %r: %s; still serving version %s loaded before, until "
                               "it has a version that loads", name, problem,
                               ", ".join(map(str, serving)))
            else:
                logger.warning("model %r has nothing to serve: %s; its calls get NOT_FOUND "
                               "until it has a version", name, problem)
        elif before and not problem:
            logger.info("model %r: its base_path %s holds versions again", name, base)

    def _note_labels(self, name: str, entry) -> None:
        """Warns (once per label and version) of a label naming a version not served."""
        serving = set(self._serving(name))
        for label, number in sorted(entry.labels.items()):
            key = (name, label, number)
            if number in serving:
                self._label_warned.discard(key)
            elif key not in self._label_warned:
                self._label_warned.add(key)
                logger.warning("model %r: label %r names version %d, which is not served "
                               "(serving: %s); its calls get NOT_FOUND", name, label, number,
                               ", ".join(map(str, sorted(serving))) or "none")

    def wait_first_sync(self, timeout: float | None = None) -> list[str]:
        """Waits until the first pass (load attempt) of every model has finished.

        Returns:
          the models whose first pass is still running at `timeout` (sorted).
        """
        with self._synced_cond:
            self._synced_cond.wait_for(lambda: set(self.entries) <= self._synced, timeout)
            return sorted(set(self.entries) - self._synced)

    def describe(self, name: str) -> str:
        """One line on what the model serves, or why it serves nothing, for the log."""
        with self._lock:
            versions = sorted(self.versions.get(name, {}).values(), key=lambda v: v.number)
            problem = self.problems.get(name, "")
            synced = name in self._synced
        available = [str(v.number) for v in versions if v.state == AVAILABLE]
        if available:
            return f"{name}: version {', '.join(available)} AVAILABLE" + (
                f" (kept: {problem})" if problem else "")
        if problem:
            return f"{name}: nothing to serve: {problem}"
        waiting = [v for v in versions if v.state == START]
        if waiting:
            return (f"{name}: nothing to serve yet: version {waiting[-1].number} is not "
                    f"complete ({waiting[-1].detail})")
        failed = [str(v.number) for v in versions if v.state == END and v.error]
        if failed:
            return (f"{name}: nothing to serve: version {', '.join(failed)} failed to load "
                    "(see GetModelStatus)")
        return f"{name}: {'nothing to serve' if synced else 'still loading'}"

    def _should_load(self, name: str, number: int, path: Path) -> bool:
        with self._lock:
            if name not in self.entries:
                return False
            known = self.versions[name].get(number)
            if known is not None and known.state == AVAILABLE and known.path == path:
                return False
            failure = self._failures.get(path)
        if failure is None:
            return True
        if time.monotonic() >= failure.retry_at:
            return True
        return fingerprint(path) != failure.fingerprint

    def _load(self, name: str, number: int, path: Path) -> bool:
        """Loads a version (True) or records why it failed (False)."""
        with self._lock:
            served = self.versions[name]
            previous = served.get(number)
            replacing = previous is not None and previous.state == AVAILABLE
            if not replacing:
                served[number] = Version(number, path)
            failure = self._failures.get(path)
        before = fingerprint(path)
        logger.info("loading %s version %d from %s", name, number, path)
        try:
            loaded = self._loader(name, number, path)
        except Exception as err:  # a broken version must not take the server down
            attempts = failure.attempts + 1 if failure else 1
            wait = min(RETRY_FIRST_SECONDS * 2 ** (attempts - 1), RETRY_MAX_SECONDS)
            message = f"{type(err).__name__}: {err}"[:2000]
            with self._lock:
                self._failures[path] = _Failure(before, attempts, time.monotonic() + wait,
                                                message)
                if not replacing and name in self.versions:
                    self.versions[name][number] = Version(
                        number, path, END,
                        f"{message} (load attempt {attempts}; retried when its files change "
                        f"or in {wait:.0f} s)")
            logger.warning("%s version %d failed to load (attempt %d, retry when its files "
                           "change or in %.0f s): %s", name, number, attempts, wait, message)
            return False
        # Once unloaded and no call holds it, its index's searcher is freed (TensorFlow
        # keeps a dropped SavedModel's: its memory and a thread, each version loaded).
        if has_searcher(loaded.model):
            weakref.finalize(loaded, _release_when_dropped, loaded.model,
                             f"{name} version {number}").atexit = False
        with self._lock:
            self._failures.pop(path, None)
            if name in self.versions:
                self.versions[name][number] = Version(number, path, AVAILABLE, "", loaded)
        logger.info("%s version %d is AVAILABLE", name, number)
        return True

    def _unload_unwanted(self, name: str, on_disk: list[int], wanted: list[int],
                         entry: ModelEntry, waiting: set[int], problem: str = "") -> int:
        """Unloads the versions the policy no longer wants; returns how many."""
        kept, unloaded = [], 0
        with self._lock:
            served = self.versions.get(name)
            if served is None:
                return 0
            ready = any(served.get(n) is not None and served[n].state == AVAILABLE
                        and served[n].path == entry.base_path / str(n) for n in wanted)
            for number, version in list(served.items()):
                if number in wanted and version.path == entry.base_path / str(number):
                    continue
                if version.state == AVAILABLE:
                    # Keep serving until a wanted version is available: a base_path that
                    # is wrong (missing, empty, nothing loads) never takes the model down.
                    if ready:
                        served[number] = Version(number, version.path, END)
                        self._kept = {k for k in self._kept if k[:2] != (name, number)}
                        logger.info("unloaded %s version %d (%s)", name, number, version.path)
                        unloaded += 1
                    elif (version.path.parent != entry.base_path
                          and (name, number, entry.base_path) not in self._kept):
                        self._kept.add((name, number, entry.base_path))  # from a former path
                        kept.append(version)
                elif version.state == START and number not in waiting:
                    del served[number]  # no longer looked at (gone, or not wanted)
                elif number not in on_disk:
                    del served[number]  # gone from disk: nothing left to report
        for version in kept if not problem else ():  # a problem is warned about on its own
            logger.warning("%s: still serving version %d from %s: its base_path %s has no "
                           "version that loads yet", name, version.number, version.path,
                           entry.base_path)
        return unloaded

    def start(self) -> None:
        """Loads in the background: versions are LOADING until ready, then AVAILABLE."""
        self._thread = threading.Thread(target=self._poll, daemon=True, name="version-poller")
        self._thread.start()

    def _poll(self) -> None:
        while True:
            try:
                self.sync()
            except Exception:  # keep polling whatever one pass met
                logger.exception("version poll failed")
            if not self.poll_seconds:
                logger.info("file system polled once (--file_system_poll_wait_seconds 0): new "
                            "versions are looked for again only at a reload")
                return
            if self._stop.wait(self.poll_seconds):
                return

    def stop(self) -> None:
        self._stop.set()

    def reload(self, entries: list[ModelEntry], labels_for_unavailable: bool = False
               ) -> list[str]:
        """Replaces the model list (HandleReloadConfigRequest, the config file read again)
        and applies it: the versions are loaded and unloaded, then the labels set.

        As TF Serving, a label may name only a version that is AVAILABLE once the models
        are applied, unless `labels_for_unavailable`: a model whose new labels break
        that keeps the labels it had (none, for a model new to the list).

        Returns:
          what was refused, one line per label (empty: everything applied).
        """
        with _releases_in_this_pass() as released:
            refused, dropped = self._reload(entries, labels_for_unavailable)
        if dropped or released:
            settle_heap()  # the dropped models' versions are unloaded
        return refused

    def _reload(self, entries: list[ModelEntry], labels_for_unavailable: bool
                ) -> tuple[list[str], list[str]]:
        with self._lock:
            names = {e.name for e in entries}
            dropped = [name for name in self.entries if name not in names]
            before = {name: dict(e.labels) for name, e in self.entries.items()}
            for name in dropped:
                del self.entries[name]
                for number, version in sorted(self.versions.pop(name).items()):
                    if version.state == AVAILABLE:
                        logger.info("unloaded %s version %d (%s): the model left the config",
                                    name, number, version.path)
                self.problems.pop(name, None)
            for entry in entries:
                self.entries[entry.name] = entry
                self.versions.setdefault(entry.name, {})
        self.sync()
        refused = []
        if not labels_for_unavailable:
            with self._lock:
                for entry in entries:
                    served = set(self._serving(entry.name))
                    bad = [(label, number) for label, number in sorted(entry.labels.items())
                           if number not in served and before.get(entry.name, {}).get(
                               label) != number]
                    if not bad:
                        continue
                    refused += [f"Request to assign label to version {number} of model "
                                f"{entry.name}, which is not currently available for "
                                f"inference (label {label!r})" for label, number in bad]
                    self.entries[entry.name] = dataclasses.replace(
                        entry, labels=before.get(entry.name, {}))
            for line in refused:
                logger.error("%s: the model keeps the labels it had", line)
        return refused, dropped

    # -- lookups --------------------------------------------------------------------------
    def resolve(self, spec) -> Loaded:
        """The version a ModelSpec asks for (default: the newest available)."""
        choice = spec.WhichOneof("version_choice")
        return self.find(spec.name, spec.version.value if choice == "version" else None,
                         spec.version_label if choice == "version_label" else None)

    def find(self, name: str, number: int | None = None, label: str | None = None) -> Loaded:
        """The loaded version a call should use; the caller keeps it for the call's life.

        Raises:
          ServingError(NOT_FOUND): an unknown model, version or label, or
            nothing available.
        """
        with self._lock:
            if name not in self.versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: Latest({shown(name)})")
            served = self.versions[name]
            if label is not None:
                number = self.entries[name].labels.get(label)
                if number is None:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Unrecognized servable version label: {shown(label)}")
            if number is not None:
                version = served.get(number)
                if version is None or version.state != AVAILABLE:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Servable not found for request: "
                                       f"Specific({name}, {number})")
                return version.loaded
            available = [v for v in served.values() if v.state == AVAILABLE]
            if not available:
                problem = self.problems.get(name)
                # The path stays in the log and GetModelStatus, not in a client's error.
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Servable not found for request: Latest({name})"
                                   + (": no version found under the model's base path"
                                      if problem else ""))
            return max(available, key=lambda v: v.number).loaded

    def status(self, name: str, number: int | None = None,
               label: str | None = None) -> list[Version]:
        """Copies of the model's version states (one version, if asked for by number/label).

        Raises:
          ServingError(NOT_FOUND): an unknown model, version or label.
        """
        with self._lock:
            if name not in self.versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {shown(name)}")
            if label is not None:
                number = self.entries[name].labels.get(label)
                if number is None:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Unrecognized servable version label: {shown(label)}")
            versions = sorted(self.versions[name].values(), key=lambda v: v.number)
            problem = self.problems.get(name)
            base = self.entries[name].base_path
            if not versions and number is None and problem:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {name}: {problem}",
                                   public=f"Could not find any versions of model {name}: no "
                                          "version found under the model's base path")
            if not versions and number is None:  # as TF Serving: no version is not a status
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find any versions of model {name}")
            if number is not None:
                versions = [v for v in versions if v.number == number]
                if not versions:
                    raise ServingError(grpc.StatusCode.NOT_FOUND,
                                       f"Could not find version {number} of model {name}")
            out = []
            for v in versions:
                detail = v.detail
                if v.state == AVAILABLE and (problem or v.path.parent != base):
                    failure = self._failures.get(base / str(v.number))
                    why = problem or f"its base_path {base} has no version that loads yet" + (
                        f" (version {v.number} there failed to load: {failure.error})"
                        if failure else "")
                    detail = f"still served from {v.path}, loaded before: {why}"
                out.append(dataclasses.replace(v, loaded=None, detail=detail))
            return out


def settle_heap() -> tuple[float, int]:
    """Collects what a load or an unload left, then moves every live object out of the
    cyclic garbage collector's reach (`gc.freeze`). A loaded SavedModel is a few hundred
    thousand Python objects: each full collection walked them all, holding every thread
    for about 150 ms on the bundled model, and REST bodies of a few thousand values
    brought one every couple of hundred requests (bench/RESULTS.md). Unfrozen first, so
    that an unloaded version's cycles are collected. Returns (seconds, objects frozen).
    """
    start = time.perf_counter()
    # One pass at a time (the poller, a reload, an index's release): a collection that
    # finds another under way returns at once, and its freeze would then keep what it
    # was to collect (an unloaded model) out of every later collection's reach.
    with _SETTLING:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        return time.perf_counter() - start, gc.get_freeze_count()


_SETTLING = threading.Lock()


_PASS = threading.local()  # .pending: the models a pass of this thread frees (or None)


@contextlib.contextmanager
def _releases_in_this_pass():
    """Within it, a version dropped by this thread (an unload of the poller's pass, a
    reload) has its index freed at the end, before the pass's own heap collection: one
    collection an unload, not a second one in a release thread. Yields the list of those
    freed (filled at the end); nested, the outermost frees them."""
    if getattr(_PASS, "pending", None) is not None:
        yield []
        return
    _PASS.pending = pending = []
    released = []
    try:
        yield released
    finally:
        _PASS.pending = None
        while pending:
            model, what = pending.pop()
            _release([model], what, settle=False)
            released.append(what)
            del model


def _release_when_dropped(model, what: str) -> None:
    """A loaded version's finalizer: it runs in whichever thread dropped the version last.
    In a pass of the manager's (`_releases_in_this_pass`) the pass frees it; in another
    thread (a call's, done after the version was unloaded) a thread of its own does, and
    collects the model after."""
    pending = getattr(_PASS, "pending", None)
    if pending is not None:
        pending.append((model, what))
        return
    threading.Thread(target=_release, args=([model], what), daemon=True,
                     name="index-release").start()


def has_searcher(model) -> bool:
    """Does a loaded version's index hold a ScaNN searcher (a brute-force one: no)?"""
    return getattr(getattr(model, "index", None), "_serialized_searcher", None) is not None


def _release(holder: list, what: str, settle: bool = True) -> None:
    """Frees the index of a version no call holds any more (`release_saved_model`), then
    the model itself: it outlived the pass that unloaded it, whose collection has moved
    it out of the collector's reach (`settle_heap`), so it is collected here (`settle`)."""
    model = holder.pop()
    try:
        released = release_saved_model(model)
    except Exception as err:  # never fatal: the index only stays in memory
        logger.warning("could not free the index of %s: %s", what, err)
        released = False
    del model
    seconds = settle_heap()[0] if settle else None
    if released:
        logger.info("freed the index of %s%s", what, "" if seconds is None else
                    f" (the heap settled in {seconds * 1000:.0f} ms)")


def _load_version(name: str, number: int, path: Path) -> Loaded:
    """Loads a version folder, reads its signatures and metadata, replays its warm-up."""
    model = load_saved_model(path)
    try:
        defs = _signature_defs(path)
        metadata = VersionFolder(path).read_metadata(missing_ok=True)
        _warm_up(model, path)
    except BaseException:  # a failed load (retried later) must not keep what it built
        _release([model], f"{name} version {number} (failed to load)", settle=False)
        raise
    return Loaded(name, number, path, model, defs, metadata)


def _warm_up(model, path: Path) -> None:
    """Replays the version's warm-up Predict requests before it is marked AVAILABLE."""
    warmup = VersionFolder(path).warmup
    if not warmup.exists():
        return
    for record in tf.data.TFRecordDataset(str(warmup)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        function = model.signatures[request.model_spec.signature_name or "serving_default"]
        function(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
