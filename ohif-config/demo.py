"""Demo helper: upload a study to the running Orthanc, wait for the worker's results, print one
line per series (job state, derived series, QC verdict, all read back from Orthanc), the OHIF
URL (our hanging protocol) and the viewer login.

    .venv/bin/python ohif-config/demo.py STUDY_DIR [--timeout 1200]

Orthanc settings come from the same CPACS_* environment / orthanc/site.env as `make orthanc`;
the front's from FRONT_* (ohif-config/front.py). Waits until every uploaded series has a job in
a final state (done / skipped / failed) and the QC report series (Modality DOC) is in the study.
"""
from __future__ import annotations

import argparse
import base64
import json
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import front as front_mod  # ohif-config/front.py: this script's folder is first on sys.path
from cervical_pacs.settings import ADMIN_USER, Settings

FINAL = {"done", "skipped", "failed"}  # "superseded" last: a newer job (the series grew or was sent again) is coming


class Orthanc:
    def __init__(self, settings: Settings):
        users = json.loads(Path(settings.credentials_file).read_text())["RegisteredUsers"]
        self.url = settings.orthanc_url
        self.auth = "Basic " + base64.b64encode(f"{ADMIN_USER}:{users[ADMIN_USER]}".encode()).decode()

    def call(self, path: str, data: bytes | None = None):
        req = urllib.request.Request(self.url + path, data=data, headers={"Authorization": self.auth})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read() or b"null")


def print_summary(orthanc: Orthanc, series: set[str]) -> None:
    """One line per uploaded series, from Orthanc: its job and, when enhanced, the derived
    series and the QC verdict the writer put in its images (what the viewer shows)."""
    rows, runs, study = [], set(), ""
    for s in series:
        info = orthanc.call(f"/series/{s}")
        tags, study = info["MainDicomTags"], info["ParentStudy"]
        job = orthanc.call(f"/cervical-dl/series/{s}")["job"]
        runs.add(job.get("batch") or 0)
        line = f"  {tags.get('SeriesNumber', '?'):>5}  {tags.get('SeriesDescription', ''):<22} {job['state']:<9}"
        if job["state"] != "done":
            line += f" {job.get('reason') or ''}"
        for d in job.get("derived_series") or []:
            derived = orthanc.call(f"/series/{d}")
            if derived["MainDicomTags"].get("Modality") != "MR":
                continue
            comments = orthanc.call(f"/instances/{derived['Instances'][0]}/tags?simplify").get("ImageComments", "")
            verdict = " ".join(x for x in re.split(r"(?<=\.)\s+", comments) if x and x != "Worst slice.")
            line += f" -> {derived['MainDicomTags'].get('SeriesNumber', '?')} {verdict}"
        rows.append((int(tags.get("SeriesNumber") or 0), line))
    for _, line in sorted(rows):
        print(line)
    runs.discard(0)  # jobs the plugin skipped never ran
    for q in orthanc.call(f"/cervical-dl/studies/{study}")["qc_series"]:
        tags = orthanc.call(f"/series/{q}")["MainDicomTags"]
        print(f"  {tags.get('SeriesNumber', '?'):>5}  {tags.get('SeriesDescription', '')} "
              f"(for the study; {len(runs)} study run{'s' if len(runs) != 1 else ''})")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study_dir", type=Path)
    ap.add_argument("--timeout", type=float, default=1200)
    args = ap.parse_args(argv)
    settings = Settings.from_env()
    orthanc = Orthanc(settings)
    files = sorted(args.study_dir.rglob("*.dcm"))
    series, study = set(), None
    for f in files:
        answer = orthanc.call("/instances", f.read_bytes())
        series.add(answer["ParentSeries"])
        study = answer["ParentStudy"]
    print(f"demo: uploaded {len(files)} files ({len(series)} series); waiting for the DL results ...", flush=True)
    deadline = time.monotonic() + args.timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        for s in series:
            try:
                states[s] = orthanc.call(f"/cervical-dl/series/{s}")["job"]["state"]
            except urllib.error.HTTPError as e:
                if e.code != 404:
                    raise
        if len(states) == len(series) and set(states.values()) <= FINAL:
            break
        time.sleep(2)
    else:
        print(f"demo: timed out; job states so far: {sorted(states.values())}", file=sys.stderr)
        return 1
    uid = orthanc.call(f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"]
    done = sum(1 for v in states.values() if v == "done")
    print_summary(orthanc, series)
    fr = front_mod.Front()
    user, _ = fr.viewer_login()
    print(f"demo: {done} series enhanced; results in Orthanc")
    print(f"OHIF: {fr.url}/cervical-dl?StudyInstanceUIDs={uid}")
    print(f"      (or the study list {fr.url}/: select the study, then \"Cervical DL\", or double-click it;")
    print("       \".\" and \",\" step through the stages CE T1, T2, T1, axial T2, QC ROIs)")
    print(f"login: user {user}, password in {fr.local / 'viewer-credentials.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
