"""The model registry: ``<root>/<model>/<version>/{model.onnx, model.json}``, validated at load.

A model is loaded only when its manifest parses, the file's sha256 matches, its features equal
the feature set's (same names, same order), its one input is float32 ``[N, n_features]`` and
its output gives one score per row. A file that fails any check is rejected with a clear
reason and never replaces a good model; the registry keeps serving what it has.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ModelError
from .onnx import OnnxModel

__all__ = ["ModelManifest", "ModelRegistry", "ModelSlot", "load_model"]

log = logging.getLogger("streamwise.models")


class _Input(BaseModel):
    name: str
    dtype: str = "float32"
    shape: list[int | None]


class _Output(BaseModel):
    name: str
    index: int = Field(default=1, ge=0)


class _Thresholds(BaseModel):
    review_at: float = Field(ge=0, le=1)
    decline_at: float = Field(ge=0, le=1)


class ModelManifest(BaseModel):
    """``model.json``: what the file is, what it expects and how to read its output."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    version: str
    feature_set: str
    features: list[str]
    input: _Input
    output: _Output
    thresholds: _Thresholds
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    metrics: dict[str, float | int | str | None] = {}


def _version_key(version: str) -> tuple[int, int | str]:
    return (0, int(version)) if version.isdigit() else (1, version)


def load_model(folder: Path, feature_names: tuple[str, ...], feature_set: str,
               intra_op_threads: int = 1) -> OnnxModel:
    """Load and validate one model version folder; raise ModelError saying what is wrong."""
    where = f"{folder.parent.name}/{folder.name}"
    try:
        manifest = ModelManifest.model_validate_json((folder / "model.json").read_bytes())
    except FileNotFoundError:
        raise ModelError(f"{where}: model.json is missing") from None
    except ValidationError as exc:
        raise ModelError(f"{where}: model.json is invalid: {exc.errors()[0]['msg']}") from None
    try:
        blob = (folder / "model.onnx").read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{where}: model.onnx is missing") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != manifest.sha256:
        raise ModelError(f"{where}: checksum mismatch (file {digest[:12]}…, manifest "
                         f"{manifest.sha256[:12]}…)")
    if manifest.feature_set != feature_set:
        raise ModelError(f"{where}: trained for feature set {manifest.feature_set}, the "
                         f"topology computes {feature_set}")
    if tuple(manifest.features) != feature_names:
        raise ModelError(f"{where}: expects features {manifest.features}, the feature set "
                         f"has {list(feature_names)}")
    return OnnxModel.from_bytes(blob, manifest, intra_op_threads)


@dataclass
class ModelSlot:
    """The active version of one model name, plus what was rejected and why."""

    name: str
    active: OnnxModel | None = None
    folder: Path | None = None
    signature: tuple | None = None
    last_error: str | None = None
    rejected: set[tuple] = field(default_factory=set)


class ModelRegistry:
    """Loads the newest valid version of each model under `root` and reloads on change.

    `refresh()` is cheap when nothing changed (it stats files); call it periodically for hot
    reload. A newer valid version replaces the active one; a broken newer version is skipped;
    a deleted or corrupted file of the *active* version does not unload it (the model in
    memory is still the validated one). A bad file never replaces a good model.
    """

    def __init__(self, root: Path, feature_names: tuple[str, ...], feature_set: str,
                 pinned: dict[str, str] | None = None, intra_op_threads: int = 1) -> None:
        self.root = root
        self._features = feature_names
        self._feature_set = feature_set
        self._pinned = dict(pinned or {})
        self._threads = intra_op_threads
        self.slots: dict[str, ModelSlot] = {}
        # refresh() runs in a thread beside rollout changes (serve, load_version)
        self._lock = threading.RLock()
        self._versions: dict[tuple, OnnxModel] = {}  # (folder signature) -> loaded model

    def get(self, name: str) -> OnnxModel | None:
        slot = self.slots.get(name)
        return slot.active if slot else None

    def load_version(self, name: str, version: str) -> OnnxModel:
        """One version of a model, loaded and validated (cached while its files are
        unchanged), without making it active: a rollout candidate. Raises ModelError."""
        folder = self.root / name / version
        if not folder.is_dir():
            raise ModelError(f"{name}/{version}: no such version in {self.root}")
        sig = _signature(folder)
        with self._lock:
            slot = self.slots.get(name)
            if slot is not None and slot.signature == sig and slot.active is not None:
                return slot.active
            model = self._versions.get(sig)
            if model is None:
                model = load_model(folder, self._features, self._feature_set, self._threads)
                self._versions = {k: v for k, v in self._versions.items()
                                  if k[0] != str(folder)}  # older files of this folder
                self._versions[sig] = model
            return model

    def serve(self, name: str, version: str) -> OnnxModel:
        """Pin `name` to `version` and make it the active one now (a rollout's serving
        version; reloads keep it). Raises ModelError and changes nothing if it does not load."""
        with self._lock:
            model = self.load_version(name, version)
            folder = self.root / name / version
            slot = self.slots.setdefault(name, ModelSlot(name))
            self._pinned[name] = version
            if slot.active is not model:
                slot.active, slot.folder, slot.signature = model, folder, _signature(folder)
                slot.last_error = None
                log.info("model %s serving (rollout)", model.ref)
            return model

    def refresh(self) -> list[str]:
        """Re-scan the registry; returns this scan's load failures (also logged)."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> list[str]:
        errors: list[str] = []
        if not self.root.is_dir():
            return errors
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            slot = self.slots.setdefault(model_dir.name, ModelSlot(model_dir.name))
            versions = sorted((p for p in model_dir.iterdir() if p.is_dir()),
                              key=lambda p: _version_key(p.name), reverse=True)
            pinned = self._pinned.get(model_dir.name)
            if pinned is not None:
                versions = [v for v in versions if v.name == pinned]
                if not versions:
                    errors.append(f"{model_dir.name}: pinned version {pinned} not found")
            for folder in versions:  # newest first
                sig = _signature(folder)
                if sig == slot.signature:
                    break  # the active version, unchanged
                if sig not in slot.rejected:
                    try:
                        model = load_model(folder, self._features, self._feature_set,
                                           self._threads)
                    except ModelError as exc:
                        slot.rejected.add(sig)
                        slot.last_error = str(exc)
                        errors.append(str(exc))
                        log.error("model rejected: %s", exc)
                    else:
                        slot.active, slot.folder, slot.signature = model, folder, sig
                        slot.last_error = None
                        log.info("model %s loaded (sha256 %s…)", model.ref,
                                 model.manifest.sha256[:12])
                        break
                if folder == slot.folder:
                    break  # the active version's files went bad: keep the one in memory
        return errors


def _signature(folder: Path) -> tuple:
    parts: list = [str(folder)]
    for name in ("model.onnx", "model.json"):
        try:
            st = (folder / name).stat()
            parts += [st.st_mtime_ns, st.st_size]
        except FileNotFoundError:
            parts += [None, None]
    return tuple(parts)
