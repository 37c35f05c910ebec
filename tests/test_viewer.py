"""OHIF behind the nginx front, in a real browser (Debian chromium driven by playwright-core).

One module-scoped stack: a small accelerated myelopathy study (mild motion on CE T1) is made
and run through the application once; Orthanc (auth on, random ports) gets every original
and output file; nginx (ohif-config/front.py) serves the prebuilt OHIF and proxies DICOMweb
with Orthanc's credentials added server-side. Everything runs inside a private network
namespace when root (``cervical_pacs.sandbox``), as tests/test_orthanc.py does. One browser
run (``ohif-config/tests/viewer-driver.mjs``) performs every browser check and returns JSON;
the tests below assert on it. Screenshots: ``test-artifacts/viewer/``.

Skipped when nginx, chromium, node, the OHIF dist or playwright-core are missing
(``make viewer`` installs and fetches them).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
import requests

from cervical_pacs.launcher import start_orthanc, wait_orthanc
from cervical_pacs.sandbox import free_port, private_network
from cervical_pacs.settings import ADMIN_USER, Settings, render_orthanc_config
from conftest import ROOT, make_study, run_app
from models import WEIGHTS_DIR

# ohif-config/ is a folder of scripts, not a package (its name has a hyphen).
sys.path.insert(0, str(ROOT / "ohif-config"))
import front as front_mod  # noqa: E402  (ohif-config/front.py)

ARTIFACTS = ROOT / "test-artifacts" / "viewer"
DRIVER = ROOT / "ohif-config" / "tests" / "viewer-driver.mjs"
STAGES = ("ce", "t2", "t1", "ax")
# stage -> (original, DL) series numbers expected side by side for the simulated Philips study
MODEL_INFO = json.loads((WEIGHTS_DIR / "model_info.json").read_text())
PAIRS = {"ce": (801, 851), "t2": (402, 452), "t1": (301, 351), "ax": (501, 551)}

_missing = [name for name, ok in (
    ("nginx", shutil.which("nginx")), ("chromium", Path("/usr/bin/chromium").exists()), ("node", shutil.which("node")),
    ("pdftotext", shutil.which("pdftotext")),
    ("playwright-core (make viewer)", (ROOT / "ohif-config" / "node_modules" / "playwright-core").is_dir()),
    ("OHIF dist (make viewer)", (ROOT / "ohif-config" / "dist" / "index.html").exists()),
) if not ok]
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"viewer stack not installed: {', '.join(_missing)}")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("viewer")
    study = make_study(base / "study", seed=7, motion="mild", extra=("--sagittal-slices", "5", "--axial-slices", "6"))
    out = base / "out"
    result = run_app(study, out, model_dir=WEIGHTS_DIR)
    assert result.returncode == 0, result.stderr[-3000:]
    files = sorted(study.rglob("*.dcm")) + sorted(out.rglob("*.dcm"))
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    summary = json.loads((out / "run_summary.json").read_text())
    qc = json.loads((out / "qc.json").read_text())
    return {"base": base, "files": files, "study_uid": first.StudyInstanceUID,
            "study_description": str(first.StudyDescription),
            "verdicts": {e["series_number"]: e["qc_verdict"] for e in summary["derived"]},
            "qc": qc, "sr": hd.sr.srread(out / "qc" / "sr" / "QC_SR.dcm"),
            # derived series number -> the image number of the QC's worst slice when it flagged the series
            "worst": {e["derived_series_number"]: e["worst_image_original"] if e["motion_flag"] else None for e in qc}}


@pytest.fixture(scope="module")
def stack(outputs):
    base = outputs["base"]
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    with private_network() as network:
        env = {"CPACS_LOCAL_DIR": str(base / "orthanc-local"), "CPACS_STORAGE_DIR": str(base / "orthanc-data"),
               "CPACS_HTTP_PORT": str(free_port()), "CPACS_DICOM_PORT": str(free_port()), "CPACS_AET": "VIEWERTEST",
               "CPACS_STABLE_AGE": "1", "CPACS_MODEL_PATH": str(WEIGHTS_DIR)}
        settings = Settings.from_env(env=env, config_file=base / "no-site.env")
        render_orthanc_config(settings)
        users = json.loads(Path(settings.credentials_file).read_text())["RegisteredUsers"]
        orthanc = start_orthanc(settings, base / "logs" / "orthanc.log")
        nginx = front_dir = None
        try:
            wait_orthanc(settings, ADMIN_USER, users[ADMIN_USER], timeout=60, proc=orthanc)
            http = requests.Session()
            http.auth = (ADMIN_USER, users[ADMIN_USER])
            for f in outputs["files"]:  # no worker here: the outputs are uploaded as the worker would
                http.post(settings.orthanc_url + "/instances", data=f.read_bytes(), timeout=60).raise_for_status()
            # nginx workers run as www-data: pytest's tmp folders (0700) are not reachable for them
            front_dir = Path(tempfile.mkdtemp(prefix="cervical-front-"))
            os.chmod(front_dir, 0o711)
            front = front_mod.Front({"FRONT_PORT": str(free_port()), "FRONT_BIND": "127.0.0.1",
                                     "FRONT_LOCAL_DIR": str(front_dir),
                                     "CPACS_HTTP_PORT": str(settings.http_port),
                                     "CPACS_CREDENTIALS_FILE": str(settings.credentials_file)})
            nginx = front.popen()
            user, password = front.viewer_login()
            yield {"network": network, "front": front, "url": front.url, "login": (user, password),
                   "orthanc_password": users[ADMIN_USER], **outputs}
        finally:
            if nginx is not None:
                nginx.terminate()
                nginx.wait(timeout=30)
            if front_dir is not None:
                shutil.rmtree(front_dir, ignore_errors=True)
            orthanc.terminate()
            orthanc.wait(timeout=60)


@pytest.fixture(scope="module")
def browser(stack) -> dict:
    """Runs the whole browser scenario once (one chromium) and returns its JSON report."""
    user, password = stack["login"]
    cfg = {"baseUrl": stack["url"], "user": user, "password": password, "studyUID": stack["study_uid"],
           "studyDescription": stack["study_description"], "outDir": str(ARTIFACTS), "stages": list(STAGES),
           "expectSeries": ["DL sT1W_TSE_GD", "sT1W_TSE_GD"], "roiStage": "roi"}
    t = time.monotonic()
    proc = subprocess.run(["node", str(DRIVER), json.dumps(cfg)], capture_output=True, text=True, timeout=540,
                          cwd=DRIVER.parent)
    report = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {"error": proc.stderr[-4000:]}
    report["wall_s"] = round(time.monotonic() - t, 1)
    slim = json.loads(json.dumps(report))
    for stage in slim.get("stages", {}).values():
        stage.get("viewports", {}).get("cervical-qc", {}).pop("pdfBase64", None)
    (ARTIFACTS / "browser-report.json").write_text(json.dumps(slim, indent=1))
    return report


def _no_error(report: dict) -> None:
    assert "error" not in report, report["error"]


# -- the front ---------------------------------------------------------------------------------
def test_front_refuses_without_login(stack, browser):
    url = stack["url"]
    for path in ("/", "/app-config.js", "/dicom-web/studies", "/viewer"):
        assert requests.get(url + path, timeout=10).status_code == 401, path
    # Orthanc's own credentials are not the viewer login, and never reach the browser
    assert requests.get(url + "/dicom-web/studies", auth=(ADMIN_USER, stack["orthanc_password"]),
                        timeout=10).status_code == 401
    assert requests.get(url + "/dicom-web/studies", auth=stack["login"], timeout=10).status_code == 200
    config = requests.get(url + "/app-config.js", auth=stack["login"], timeout=10).text
    assert stack["orthanc_password"] not in config and "Authorization" not in config
    # and in the browser: every page refused before login
    assert len(browser["noLogin"]) == 4, browser
    for path, seen in browser["noLogin"].items():
        assert seen["status"] == 401 and seen["challenge"].startswith("Basic"), (path, seen)
        assert seen["navigation"] == "auth-required", (path, seen)  # chromium showed nothing


def test_includefield_split_gives_descriptions(stack):
    """OHIF's comma-separated includefield works through the front (Orthanc 1.7 alone rejects it)."""
    r = requests.get(stack["url"] + "/dicom-web/studies", auth=stack["login"], timeout=30,
                     params={"includefield": "00081030,00080060,00080090,00100030", "limit": "101"})
    assert r.status_code == 200, r.text[:300]
    study = r.json()[0]
    assert study["00081030"]["Value"] == [stack["study_description"]]
    r = requests.get(f"{stack['url']}/dicom-web/studies/{stack['study_uid']}/series", auth=stack["login"], timeout=30,
                     params={"includefield": "0008103E,00080021"})
    descriptions = {s["0008103E"]["Value"][0] for s in r.json() if "0008103E" in s}
    assert {"sT1W_TSE_GD", "DL sT1W_TSE_GD", "DL water sT2W_mDIXON_TSE", "DL in-phase sT2W_mDIXON_TSE"} <= descriptions
    # QC objects say what they cover and whether anything was flagged.
    assert any(d.startswith("DL QC report") for d in descriptions), descriptions
    assert any(d.startswith("DL QC measurements") for d in descriptions), descriptions


# -- OHIF --------------------------------------------------------------------------------------
def test_study_list_shows_study_and_series(browser, stack):
    _no_error(browser)
    assert stack["study_description"] in browser["studyListText"]
    expanded = browser["studyListExpandedText"]
    for description in ("sT1W_TSE_GD", "DL sT1W_TSE_GD", "DL sT1W_TSE", "DL aT2W_TSE", "DL water sT2W", "DL QC report"):
        assert description in expanded, f"{description!r} not in the expanded study row"
    assert browser["timings"]["studyList"] < 60


def test_one_click_from_the_study_list_opens_the_comparison(browser, stack):
    """The selected study's first "Launch workflow" button is our mode; clicking it opens the
    cervicalDL protocol at its first stage (the CE T1 pair), "." steps to the next stage, and a
    double click on the study row opens the same."""
    _no_error(browser)
    buttons = browser["modeButtons"]
    assert buttons and buttons[0] == {"text": "Cervical DL", "disabled": False}, buttons
    assert {"text": "Basic Viewer", "disabled": False} in buttons, buttons  # OHIF's own modes stay available
    assert browser["launchUrl"].startswith(f"/cervical-dl?StudyInstanceUIDs={stack['study_uid']}"), browser["launchUrl"]
    first = browser["stages"][STAGES[0]]
    assert (first["protocol"], first["stage"]) == ("cervicalDL", STAGES[0])
    assert browser["nextStageKey"] == {"protocol": "cervicalDL", "stage": STAGES[1]}
    assert browser["doubleClickUrl"].startswith(f"/cervical-dl?StudyInstanceUIDs={stack['study_uid']}")


@pytest.mark.parametrize("stage", STAGES)
def test_hanging_protocol_original_and_dl_side_by_side(browser, stack, stage):
    _no_error(browser)
    state = browser["stages"][stage]
    assert state["protocol"] == "cervicalDL"
    orig, dl = state["viewports"]["cervical-orig"], state["viewports"]["cervical-dl"]
    assert (orig["number"], dl["number"]) == PAIRS[stage]
    # "DL" first, so that no truncation hides it; the Dixon kind where the sources share a description
    assert dl["description"] == " ".join(["DL", *(["water"] if stage == "t2" else []), orig["description"]])
    # and on the image: ORIGINAL and DL ENHANCED (with the model) in two colours
    overlays = state["overlays"]
    assert overlays, "no ORIGINAL / DL ENHANCED overlay on the viewports"
    assert overlays["cervical-orig"]["text"] == "ORIGINAL" and overlays["cervical-dl"]["text"] == "DL ENHANCED, high"
    assert overlays["cervical-orig"]["color"] != overlays["cervical-dl"]["color"]
    # DL corner, top to bottom: label with strength, model, then this series' QC verdict one sentence per line
    # (red when flagged, the slices named; green when not); nothing cut off by the overlay's width
    lines = overlays["cervical-dl"]["lines"]
    verdict = stack["verdicts"][dl["number"]]
    at_worst = stack["worst"][dl["number"]] is not None  # the flagged series' worst image says so too
    assert [line["text"] for line in lines] == [
        "DL ENHANCED, high", f"{MODEL_INFO['name']} {MODEL_INFO['version']}",
        *verdict.replace(". ", ".\n").split("\n"), *(["Worst slice."] if at_worst else [])]
    assert not any(line["clipped"] for line in lines), lines
    flagged = "FLAGGED" in verdict or "ACCENTUATED" in verdict
    assert {line["color"] for line in lines[2:]} == {"rgb(255, 92, 92)" if flagged else "rgb(92, 214, 92)"}
    assert [line["text"] for line in overlays["cervical-orig"]["lines"]] == ["ORIGINAL"]  # originals never changed
    for vp in (orig, dl):  # drawn, not blank
        assert vp["std"] > 5 and vp["nImages"] >= 5, vp
    # opened at the middle slice (OHIF's "middle": n // 2), or at the QC's worst slice when it flagged the
    # series: the DL image that says "Worst slice." and, beside it, the original it was derived from
    current, worst = state["current"], stack["worst"][dl["number"]]
    if worst is None:
        assert current["cervical-orig"]["index"] == current["cervical-dl"]["index"] == dl["nImages"] // 2, current
        assert not current["cervical-dl"]["comments"].endswith("Worst slice."), current
    else:
        assert current["cervical-dl"]["comments"].endswith("Worst slice."), current
        # the verdict's numbering is the viewer's: OHIF's "I: k (k/n)" of that image is the QC's worst image number
        assert current["cervical-dl"]["index"] + 1 == worst, (current, worst)
        assert current["cervical-orig"]["sop"] == current["cervical-dl"]["source"], current
    # VOI synchronised: the same window on both, and a new window on the original reaches the DL
    assert orig["voi"] and orig["voi"] == dl["voi"]
    assert state["afterVoi"]["orig"] == {"lower": 200, "upper": 900}
    assert state["afterVoi"]["dl"] == state["afterVoi"]["orig"]


@pytest.mark.parametrize("stage", STAGES)
def test_scrolling_one_scrolls_the_other(browser, stage):
    _no_error(browser)
    state = browser["stages"][stage]
    before, after = state["before"], state["afterScroll"]
    assert after["cervical-orig"]["index"] != before["cervical-orig"], "the wheel did not scroll the original"
    assert after["cervical-dl"]["index"] == after["cervical-orig"]["index"]
    assert after["cervical-orig"]["voi"] == after["cervical-dl"]["voi"]


def test_qc_report_beside_the_ce_t1_pair_with_flag(browser, stack):
    _no_error(browser)
    qc = browser["stages"]["ce"]["viewports"].get("cervical-qc")
    assert qc and qc["modality"] == "DOC" and qc["description"].startswith("DL QC report"), qc
    assert qc.get("pdfElement"), "the QC report viewport shows no PDF"
    # the very PDF the viewer loaded (its blob URL, read in the page): CE T1 flag visible
    assert qc.get("pdfBase64"), "the viewer did not load the QC report PDF"
    pdf = ARTIFACTS / "qc-report.pdf"
    pdf.write_bytes(base64.b64decode(qc["pdfBase64"]))
    assert pdf.read_bytes().startswith(b"%PDF")
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True,
                          check=True).stdout
    (ARTIFACTS / "qc-report.txt").write_text(text)
    assert "CE T1: MOTION ARTIFACT FLAGGED" in text, text[:800]


def test_qc_rois_drawn_on_the_image_they_were_measured_on(browser, stack):
    """Stage "roi": OHIF's SR viewport opens the QC measurements at their first ROI (the writer puts
    CE T1's first) and draws every ROI of that image with its values (those of qc.json)."""
    _no_error(browser)
    roi = browser.get("roi") or {}
    assert "error" not in roi, roi
    assert (roi["protocol"], roi["stage"], roi["srModality"]) == ("cervicalDL", "roi", "SR"), roi
    assert roi["srDescription"].startswith("DL QC measurements"), roi
    groups = {g.tracking_identifier: g for g in stack["sr"].content.get_planar_roi_measurement_groups()}
    placed = {name: g.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
              for name, g in groups.items()}
    # the image shown: the one the report's first ROI was placed on (CE T1's when it has ROIs; here a flagged
    # CE T1 reports no CNR, so another series' original), drawn, not blank, with all the ROIs of that image
    first = next(iter(groups))
    role = first.split()[0]
    entry = next(e for e in stack["qc"] if e["role"] == role)
    assert first == f"{role} original C3-C4 disc" and (role == "SAG_CE_T1" or not any(
        e["role"] == "SAG_CE_T1" and e["cnr_original"] is not None for e in stack["qc"])), list(groups)
    assert roi["shown"]["seriesNumber"] == entry["series_number"], roi["shown"]
    assert roi["shown"]["sop"] == placed[first], roi["shown"]
    assert roi["std"] > 5, roi
    # one label line per ROI, its region and values: "C3-C4 disc: mean 1352.51, SNR 46.75"
    here = {a["labels"][0]["label"]: dict(v.rsplit(" ", 1) for v in a["labels"][0]["value"].split(", "))
            for a in roi["annotations"] if a["here"]}
    assert set(here) == {"C3-C4 disc", "C3 marrow", "background air"}, here
    assert float(here["C3-C4 disc"]["SNR"]) == pytest.approx(entry["snr_original"], abs=0.006)
    assert float(here["C3 marrow"]["CNR"]) == pytest.approx(entry["cnr_original"], abs=0.006)
    assert float(here["background air"]["noise SD"]) == pytest.approx(entry["noise_sd_original"], abs=0.006)
    # drawn on the image: an outline each, and their labels as text
    assert roi["paths"] >= 3 and all(a["points"] >= 4 for a in roi["annotations"]), roi
    assert f"C3-C4 disc: mean {float(here['C3-C4 disc']['mean']):.2f}, SNR {entry['snr_original']:.2f}" in roi[
        "drawnText"], roi["drawnText"]
    assert f"C3 marrow: mean {float(here['C3 marrow']['mean']):.2f}, CNR {entry['cnr_original']:.2f}" in roi[
        "drawnText"], roi["drawnText"]
    assert f"background air: noise SD {entry['noise_sd_original']:.2f}" in roi["drawnText"], roi["drawnText"]
    # every ROI of the report is loaded on the image it names (the DL images' ones too)
    loaded = {a["uid"]: a["sop"] for a in roi["annotations"]}
    assert sorted(loaded.values()) == sorted(placed.values())
