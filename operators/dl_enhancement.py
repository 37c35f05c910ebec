"""Runs the DL reconstruction model on every selected series (slice batches)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from monai.deploy.core import Fragment, Operator, OperatorSpec
from monai.deploy.core.domain.dicom_series_selection import StudySelectedSeries

from app.contracts import ConfigurationError, EnhancedSeries, ModelDescription, ModelError, Ports
from models.guard import StrengthSetting, strength_label
from series.frames import sorted_instances
from series.roles import ROLES

CHECKSUM_FILE = "cervical_dl_recon.sha256"
INFO_FILE = "model_info.json"


def describe_model(model_dir: Path) -> ModelDescription:
    """Name, version and expected sha256 of the weights of the shipped model in ``model_dir``."""
    from models.inference import read_checksums  # torch import kept out of start-up

    model_dir = Path(model_dir)
    try:
        info = json.loads((model_dir / INFO_FILE).read_text())
        sha = read_checksums(model_dir / CHECKSUM_FILE)[info["file"]]
    except (OSError, ValueError, IndexError, KeyError) as exc:
        raise ModelError(f"model description missing or unreadable in {model_dir}: {exc}") from exc
    return ModelDescription(str(info["name"]), str(info["version"]), sha)


def stored_value_volume(datasets: list) -> np.ndarray:
    """Stored pixel values ``(slices, rows, columns)`` in their own dtype (no rescale)."""
    return np.stack([ds.pixel_array for ds in datasets])


def to_source_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round and clip to the source's integer dtype (magnitude images are never negative).

    Bright structures are not clipped at the source's BitsStored maximum: the writer
    widens BitsStored when the enhanced values need it.
    """
    info = np.iinfo(dtype)
    return np.clip(np.rint(values), max(info.min, 0), info.max).astype(dtype)


def strength_setting(text: str | None) -> StrengthSetting:
    """``CERVICAL_DL_STRENGTH`` (``medium``, ``0.7``, ``medium,SAG_CE_T1=low``) as a setting;
    :class:`ConfigurationError` (exit 2) with the reason when it cannot be used."""
    try:
        return StrengthSetting.parse(text, ROLES)
    except ValueError as exc:
        raise ConfigurationError(f"CERVICAL_DL_STRENGTH: {exc}") from exc


class DLEnhancementOperator(Operator):
    """Enhances each selected series with the cascaded U-Net (CUDA when present, else CPU),
    then keeps of its change only what looks like noise (do-no-harm guard) at the
    configured strength (models/guard.py).

    Named inputs:
        study_selected_series_list: list of StudySelectedSeries (selection name = role).
    Named outputs:
        enhanced_series: list of EnhancedSeries.
    """

    def __init__(self, fragment: Fragment, *args, model_dir: Path, batch_size: int = 4,
                 strength: StrengthSetting = StrengthSetting(), **kwargs) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.model_dir = Path(model_dir)
        self.strength = strength
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._model = None
        self._device = None
        self._threads = 0
        self.model_description: ModelDescription | None = None
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(Ports.STUDY_SELECTED_SERIES)
        spec.output(Ports.ENHANCED_SERIES)

    def _load(self) -> None:
        if self._model is not None:
            return
        from models.inference import (CPU_PRECISION_ENV, configure_cpu_threads, cpu_precision, load_model,
                                      select_device)  # torch kept out of start-up

        self.model_description = describe_model(self.model_dir)
        self._device = select_device()
        try:  # read once here, so that an unusable value is a usage error, not a model error
            cpu_dtype = cpu_precision()
        except ValueError as exc:
            raise ConfigurationError(f"{CPU_PRECISION_ENV}: {exc}") from exc
        try:  # before any torch work: a container's CPU limit, not the host's cores
            self._threads = configure_cpu_threads()
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
        try:
            self._model = load_model(self.model_dir, device=self._device, cpu_dtype=cpu_dtype)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelError(f"cannot load model: {exc}") from exc
        self._logger.info("model %s %s loaded on %s (%s), %d CPU threads", self.model_description.name,
                          self.model_description.version, self._device, self._runtime_label(), self._threads)

    def _runtime_label(self) -> str:
        """``torch, bfloat16``: the engine and the network's arithmetic, for the log and the run summary."""
        return f"{self._model.runtime}, {self._model.precision}"

    def compute(self, op_input, op_output, context) -> None:
        selections: list[StudySelectedSeries] = op_input.receive(Ports.STUDY_SELECTED_SERIES) or []
        op_output.emit(self.enhance(selections), Ports.ENHANCED_SERIES)

    def enhance(self, selections: list[StudySelectedSeries]) -> list[EnhancedSeries]:
        from models.inference import enhance_series

        out: list[EnhancedSeries] = []
        if not any(s.selected_series for s in selections):
            return out
        self._load()
        for study_selection in selections:
            for selected in study_selection.selected_series:
                start = time.perf_counter()
                datasets = sorted_instances(selected.series)
                volume = stored_value_volume(datasets)
                level = self.strength.level_for(selected.selection_name)
                result = enhance_series(self._model, volume, level, batch_size=self.batch_size)
                pixels = to_source_dtype(result.images, volume.dtype)
                seconds = time.perf_counter() - start
                held = [round(float(h), 4) for h in result.held_back]
                self._logger.info("%s: %d slices %dx%d enhanced in %.1f s, strength %s, guard held back %.0f %% "
                                  "of the network's change (worst slice %.0f %%)", selected.selection_name,
                                  *volume.shape, seconds, strength_label(level), 100 * np.mean(held), 100 * max(held))
                out.append(EnhancedSeries(selected.selection_name, datasets, volume, pixels, seconds,
                                          self.model_description, f"{self._device} ({self._runtime_label()})",
                                          strength_label(level), held))
        return out
