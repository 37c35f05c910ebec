"""The application's DAG, readable in one place."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from holoscan.conditions import CountCondition
from monai.deploy.core import Application
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator

from app.contracts import Ports
from operators.cervical_series_selector import CervicalSeriesSelectorOperator
from operators.derived_series_writer import DerivedSeriesWriterOperator
from operators.dl_enhancement import DLEnhancementOperator, strength_setting
from operators.qc_report_writer import QCReportWriterOperator
from operators.quality_check import QualityCheckOperator


class CervicalDLEnhanceApp(Application):
    """DICOM study in -> one DL-enhanced derived series per cervical protocol series out,
    plus a quality check of original and DL images (qc.json, TID 1500 SR, PDF report).

    Paths come from ``-i/-o/-m`` or HOLOSCAN_INPUT_PATH / HOLOSCAN_OUTPUT_PATH /
    HOLOSCAN_MODEL_PATH, as for every MONAI Deploy application (and inside the MAP);
    ``CERVICAL_DL_OUTPUT_SYNTAX`` chooses the derived images' transfer syntax and
    ``CERVICAL_DL_STRENGTH`` the enhancement strength, overall or per role (README).
    """

    def __init__(self, *args, **kwargs) -> None:
        self._logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        super().__init__(*args, **kwargs)

    def compose(self) -> None:
        app_context = Application.init_app_context(self.argv)
        input_path = Path(app_context.input_path)
        output_path = Path(app_context.output_path)
        model_path = Path(app_context.model_path)
        self._logger.info("input %s, output %s, models %s", input_path, output_path, model_path)

        # must_load=False: an input without DICOM reaches the selector, which says so (exit 3).
        loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=input_path, must_load=False,
                                         name="dicom_loader")
        selector = CervicalSeriesSelectorOperator(self, name="cervical_series_selector")
        enhancer = DLEnhancementOperator(self, model_dir=model_path, name="dl_enhancement",
                                         strength=strength_setting(os.environ.get("CERVICAL_DL_STRENGTH")))
        writer = DerivedSeriesWriterOperator(self, output_folder=output_path, name="derived_series_writer",
                                             transfer_syntax=os.environ.get("CERVICAL_DL_OUTPUT_SYNTAX"))
        quality = QualityCheckOperator(self, model_dir=model_path, name="quality_check")
        qc_writer = QCReportWriterOperator(self, output_folder=output_path, name="qc_report_writer")

        self.add_flow(loader, selector, {(Ports.DICOM_STUDY_LIST, Ports.DICOM_STUDY_LIST)})
        self.add_flow(selector, enhancer, {(Ports.STUDY_SELECTED_SERIES, Ports.STUDY_SELECTED_SERIES)})
        self.add_flow(selector, writer, {(Ports.SERIES_REPORTS, Ports.SERIES_REPORTS)})
        self.add_flow(enhancer, writer, {(Ports.ENHANCED_SERIES, Ports.ENHANCED_SERIES)})
        self.add_flow(enhancer, quality, {(Ports.ENHANCED_SERIES, Ports.ENHANCED_SERIES)})
        self.add_flow(quality, writer, {(Ports.QC_RESULTS, Ports.QC_RESULTS)})  # verdict on every derived image
        self.add_flow(quality, qc_writer, {(Ports.QC_RESULTS, Ports.QC_RESULTS)})
        self.add_flow(writer, qc_writer, {(Ports.WRITTEN_SERIES, Ports.WRITTEN_SERIES)})
