"""Quality-check measures (SNR/CNR, motion), C3 landmarks, calibration and the QC report builders (json, SR, PDF)."""
