"""``qc.json``: the stable machine-readable QC interface, one entry per source series (README),
and the label every QC object carries."""
from __future__ import annotations

from app.contracts import SeriesQC, WrittenSeries
from qc.measures import number_ranges


def qc_entries(results: list[SeriesQC], written: list[WrittenSeries]) -> list[dict]:
    """The stable ``qc.json`` interface: one entry per source series (see README)."""
    by_source = {w.source_series_instance_uid: w for w in written}
    entries = []
    for qc in results:
        w = by_source.get(qc.source_series_instance_uid)
        entries.append({
            "SeriesInstanceUID": qc.source_series_instance_uid,
            "derived_SeriesInstanceUID": w.derived_series_instance_uid if w else None,
            "role": qc.role,
            "series_number": qc.series_number,
            "derived_series_number": w.series_number if w else None,
            "phase_encode_direction": qc.phase_encode_direction,
            "snr_original": qc.original.snr, "snr_dl": qc.dl.snr,
            "snr_foreground_original": qc.original.snr_foreground, "snr_foreground_dl": qc.dl.snr_foreground,
            "cnr_original": qc.original.cnr, "cnr_dl": qc.dl.cnr,
            "roi_confidence": qc.roi_confidence,
            "noise_sd_original": qc.original.noise_sd, "noise_sd_dl": qc.dl.noise_sd,
            "motion_score_original": qc.original.motion_score, "motion_score_dl": qc.dl.motion_score,
            "ghost_score_original": qc.original.ghost_score, "ghost_score_dl": qc.dl.ghost_score,
            "motion_detector_original": qc.original.detector,
            "slice_motion_scores_original": qc.original.slice_motion_scores,
            "slice_motion_scores_dl": qc.dl.slice_motion_scores,
            "flagged_slices_original": [i + 1 for i in qc.original.flagged_slices],
            "worst_slice_original": None if qc.original.worst_slice is None else qc.original.worst_slice + 1,
            # the same slices by the numbers a viewer shows (InstanceNumber; frame number of a multi-frame source)
            "image_numbers_original": qc.image_numbers,
            "flagged_images_original": [qc.image_number(i) for i in qc.original.flagged_slices],
            "worst_image_original": None if qc.original.worst_slice is None else qc.image_number(qc.original.worst_slice),
            "motion_flag": qc.motion_flag,
            "dl_accentuated": qc.dl_accentuated,
            "dl_strength": w.strength if w else None,
            # share of the network's change the do-no-harm guard withheld (mean over slices, and per slice)
            "dl_held_back_percent": w.held_back_percent if w else None,
            "dl_held_back_slices_percent": [round(100 * h, 1) for h in w.held_back] if w else None,
            "notes": qc.notes,
        })
    return entries


#: The verdict where the motion cannot be judged (the viewer shows it in amber).
MOTION_NOT_MEASURABLE = "MOTION NOT MEASURABLE"


def verdict_line(qc: SeriesQC) -> str:
    """The QC verdict of one series, for the derived images' ImageComments: short sentences
    (the viewer shows one per line on the DL viewport of every stage). Slices are named by the
    image numbers a viewer shows (:attr:`SeriesQC.image_numbers`).

    "QC: no motion flag." | "QC: MOTION FLAGGED. Images 1-3, 11-13 of 13. Read the original." |
    "QC: MOTION FLAGGED, DL ACCENTUATED. Images ... Read the original." | "QC: DL ACCENTUATED. Read the original." |
    "QC: MOTION NOT MEASURABLE (no air beside the body)."
    """
    flags = [text for on, text in ((qc.motion_flag, "MOTION FLAGGED"), (qc.dl_accentuated, "DL ACCENTUATED")) if on]
    if not flags and qc.original.motion_score is None:
        return f"QC: {MOTION_NOT_MEASURABLE} (no air beside the body)."
    if not flags:
        return "QC: no motion flag."
    where = qc.original.flagged_slices if qc.motion_flag else []
    sentences = [f"QC: {', '.join(flags)}."]
    if where:
        sentences.append(f"Images {number_ranges([qc.image_number(i) for i in where])} "
                         f"of {len(qc.original.slice_motion_scores)}.")
    sentences.append("Read the original.")
    return " ".join(sentences)


# Ends the comments of a flagged series' worst image; the viewer opens the series there.
WORST_SLICE_SENTENCE = "Worst slice."


def image_comments(qc: SeriesQC, index: int) -> str:
    """ImageComments of the derived image at slice ``index`` (0-based, the series' order):
    the series' :func:`verdict_line`, and on a motion-flagged series' highest-scoring slice
    the sentence :data:`WORST_SLICE_SENTENCE` as well."""
    worst = qc.motion_flag and index == qc.original.worst_slice
    return verdict_line(qc) + (f" {WORST_SLICE_SENTENCE}" if worst else "")


def report_label(results: list[SeriesQC]) -> str:
    """What a QC object covers, for its SeriesDescription and title: the role when the
    run had one series (the Orthanc worker runs one job per series), and the flags, so
    that a viewer can tell the reports of one study apart."""
    scope = results[0].role if len(results) == 1 else f"{len(results)} series"
    flagged = [qc.role for qc in results if qc.motion_flag]
    accentuated = [qc.role for qc in results if qc.dl_accentuated]
    parts = [scope]
    if flagged:
        parts.append("MOTION FLAGGED" if len(results) == 1 else f"MOTION FLAGGED {' '.join(flagged)}")
    if accentuated:
        parts.append("DL ACCENTUATED" if len(results) == 1 else f"DL ACCENTUATED {' '.join(accentuated)}")
    return " ".join(parts)
