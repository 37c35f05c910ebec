"""MAP packaging (issue 7): build context, manifests, pins, the packaged app run as the MAP runs
it, the Kubernetes Job and the Workflow Manager workflow. Fast except one pair of tiny app runs."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pydicom
import pytest
import yaml

from cervical_pacs import runner
from deploy import k8s_job, workflow
from map import build_context as bc
from map import layout
from models import WEIGHTS_DIR

ROOT = Path(__file__).resolve().parents[1]
MODEL_INFO = json.loads((WEIGHTS_DIR / "model_info.json").read_text())
PACKAGER_PY = ROOT / ".venv-packager" / "bin" / "python"


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Path:
    return bc.build(tmp_path_factory.mktemp("mapctx") / "map-context", "gpu")


@pytest.fixture(scope="module")
def cpu_context(tmp_path_factory) -> Path:
    return bc.build(tmp_path_factory.mktemp("mapctx-cpu") / "map-context", "cpu")


# --- app.yaml and the build context -------------------------------------------------------------

def test_app_yaml_keys_and_version_tied_to_model():
    cfg = yaml.safe_load((ROOT / "app.yaml").read_text())
    app = cfg["application"]
    assert app["title"] and str(app["version"]) == MODEL_INFO["version"]
    assert app["input-formats"] == ["file"] and app["output-formats"] == ["file"]
    assert set(cfg["resources"]) == {"cpu", "gpu", "memory", "gpuMemory", "sharedMemory"}


def _wheel(context: Path) -> Path:
    (wheel,) = (context / "pip").glob("cervical_dl_enhance-*.whl")
    return wheel


def test_context_files_present(context):
    model_files = [p.name for p in WEIGHTS_DIR.iterdir() if p.is_file() and p.name != "MODEL_CARD.md"]
    for rel in ["Dockerfile", ".dockerignore", "map/app.json", "map/pkg.json", "app.config", "pip/requirements.txt",
                "docs/MODEL_CARD.md", "app/__main__.py", *(f"models/{f}" for f in model_files)]:
        assert (context / rel).is_file(), rel
    assert {"cervical_dl_recon.pt", "cervical_dl_recon.sha256", "model_info.json", "motion_detector.pt"} <= set(model_files)
    for name in ("cervical_dl_recon.pt", "cervical_dl_recon.onnx"):
        assert (context / "models" / name).read_bytes() == (WEIGHTS_DIR / name).read_bytes()
    assert _wheel(context).name == f"cervical_dl_enhance-{MODEL_INFO['version']}-py3-none-any.whl"
    assert f"pip install --no-deps /tmp/pip/{_wheel(context).name}" in (context / "Dockerfile").read_text()


def test_wheel_holds_the_runtime_and_nothing_else(context):
    names = zipfile.ZipFile(_wheel(context)).namelist()
    packages = {n.split("/")[0] for n in names if not n.startswith("cervical_dl_enhance-")}
    assert packages == {"app", "operators", "series", "qc", "models"}
    for needed in ("app/app.py", "app/contracts.py", "operators/quality_check.py", "qc/calibration.json",
                   "models/inference.py", "models/motion_detector.py", "series/roles.py"):
        assert needed in names, needed
    # nothing for training, evaluation, simulation or tests inside the image; no weights in the code
    assert not [n for n in names if n.startswith(("models/training", "models/evaluation", "models/weights", "models/candidates",
                                                  "models/benchmark", "models/evaluate"))]
    assert not [n for n in names if n.endswith((".pt", ".onnx"))]


def test_every_runtime_import_of_our_packages_is_inside(context):
    """Static check: each import of one of our packages in the wheel's code resolves inside the wheel."""
    pattern = re.compile(r"^\s*(?:from|import)\s+((?:app|operators|series|qc|models|simulation|deploy|map|cervical_pacs)"
                         r"(?:\.\w+)*)", re.M)
    wheel = zipfile.ZipFile(_wheel(context))
    names = set(wheel.namelist())
    for py in (n for n in names if n.endswith(".py")):
        for mod in pattern.findall(wheel.read(py).decode()):
            parts = mod.split("/") if "/" in mod else mod.split(".")
            assert f"{'/'.join(parts)}.py" in names or f"{'/'.join(parts)}/__init__.py" in names, f"{py}: {mod}"


def test_app_json_command_and_holoscan_paths(context):
    app = json.loads((context / "map" / "app.json").read_text())
    assert json.loads(app["command"]) == ["python3", "/opt/holoscan/app"]
    env = app["environment"]
    work = Path(app["workingDirectory"])
    # the paths the Orthanc worker's docker mode mounts (orthanc/cervical_pacs/runner.py)
    assert str(work / env["HOLOSCAN_INPUT_PATH"]) == "/var/holoscan/input"
    assert str(work / env["HOLOSCAN_OUTPUT_PATH"]) == "/var/holoscan/output"
    assert env["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models"
    assert env["HOLOSCAN_APPLICATION"] == "/opt/holoscan/app"
    assert app["version"] == MODEL_INFO["version"] and app["sdk"] == "monai-deploy"
    assert app["sdkVersion"] == bc.read_requirements()["monai-deploy-app-sdk"]
    dockerfile = (context / "Dockerfile").read_text()
    for line in ("HOLOSCAN_INPUT_PATH=/var/holoscan/input", "HOLOSCAN_OUTPUT_PATH=/var/holoscan/output",
                 "HOLOSCAN_MODEL_PATH=/opt/holoscan/models", "COPY map/app.json /etc/holoscan/app.json",
                 "COPY map/pkg.json /etc/holoscan/pkg.json", "COPY app /opt/holoscan/app",
                 "COPY models /opt/holoscan/models", "USER holoscan",
                 'ENTRYPOINT ["python3", "/opt/holoscan/app"]'):
        assert line in dockerfile, line
    # the worker's docker mode mounts the same paths
    assert (runner.MAP_INPUT, runner.MAP_OUTPUT, runner.MAP_MODELS) == (layout.INPUT_DIR, layout.OUTPUT_DIR,
                                                                       layout.MODELS_DIR)


def test_pkg_json_resources_and_model(context, cpu_context):
    pkg = json.loads((context / "map" / "pkg.json").read_text())
    cfg = yaml.safe_load((ROOT / "app.yaml").read_text())
    assert pkg["resources"] == cfg["resources"] and pkg["resources"]["gpu"] >= 1 and "gpuMemory" in pkg["resources"]
    assert pkg["version"] == MODEL_INFO["version"] and pkg["platformConfig"] == "dgpu"
    assert pkg["modelRoot"] == "/opt/holoscan/models" and pkg["applicationRoot"] == "/opt/holoscan/app"
    (model_name, model_path), = pkg["models"].items()
    assert model_name == MODEL_INFO["name"] and model_path == f"/opt/holoscan/models/{MODEL_INFO['file']}"
    assert (context / "models" / Path(model_path).name).is_file()
    cpu = json.loads((cpu_context / "map" / "pkg.json").read_text())
    assert cpu["resources"]["gpu"] == 0 and "gpuMemory" not in cpu["resources"] and cpu["platformConfig"] == "cpu"


def test_requirements_pinned_and_matching_project(context, cpu_context):
    project = bc.read_requirements()
    lines = [ln for ln in (context / "pip" / "requirements.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    pins = {}
    for ln in lines:
        name, version = ln.split("==")
        pins[name] = version
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", ln) for ln in lines)
    assert pins == {n: v for n, v in project.items() if n not in bc.EXCLUDED_REQUIREMENTS}
    for needed in ("torch", "monai-deploy-app-sdk", "monai", "pydicom", "highdicom", "numpy", "scipy"):
        assert needed in pins
    assert not {"pytest", "pytest-timeout", "kubernetes", "orthanc-api-client"} & set(pins)
    cpu = (cpu_context / "pip" / "requirements.txt").read_text()
    assert f"torch=={project['torch']}+cpu" in cpu and "download.pytorch.org/whl/cpu" in cpu


@pytest.mark.skipif(not PACKAGER_PY.exists(), reason="make map-packager (holoscan-cli 4.2.0 venv) not run")
def test_manifests_match_holoscan_cli_4_2_reader(context):
    """The real CLI's own reader (config_reader.py) on our app.yaml gives the same manifests."""
    script = f"""
import json, pathlib
from holoscan_cli.packager.config_reader import ApplicationConfiguration
from holoscan_cli.packager.parameters import PackageBuildParameters
p = PackageBuildParameters(); p._data["command"] = {bc.COMMAND!r}
c = ApplicationConfiguration(); c.read(pathlib.Path({str(ROOT / 'app.yaml')!r}))
print(json.dumps({{"app": c.populate_app_manifest(p).data, "pkg": c.populate_package_manifest(p).data}}, default=str))
"""
    out = subprocess.run([str(PACKAGER_PY), "-c", script], capture_output=True, text=True, timeout=120,
                         env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, check=True)
    cli = json.loads(out.stdout)
    ours_app = json.loads((context / "map" / "app.json").read_text())
    ours_pkg = json.loads((context / "map" / "pkg.json").read_text())
    for key in ("apiVersion", "command", "environment", "input", "output", "timeout", "version", "workingDirectory"):
        assert ours_app[key] == cli["app"][key], key
    for key in ("apiVersion", "applicationRoot", "modelRoot", "resources", "version"):
        expected = cli["pkg"][key].rstrip("/") if isinstance(cli["pkg"][key], str) else cli["pkg"][key]
        assert ours_pkg[key] == expected, key


# --- the packaged app runs as the MAP runs it -------------------------------------------------------

def _dicoms(out: Path) -> dict[str, pydicom.Dataset]:
    return {str(p.relative_to(out)): pydicom.dcmread(p) for p in sorted(out.rglob("*.dcm"))}


def test_packaged_app_runs_like_repo_app(context, tmp_path):
    study = tmp_path / "study"
    subprocess.run([sys.executable, "-m", "simulation.make_study", "--protocol", "hivd", "--acquisition", "accelerated",
                    "--seed", "5", "--out", str(study), "--sagittal-slices", "2", "--axial-slices", "2"],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    out_repo = tmp_path / "out_repo"
    r1 = subprocess.run([sys.executable, "-m", "app", "-i", str(study), "-o", str(out_repo), "-m", str(WEIGHTS_DIR)],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r1.returncode == 0, r1.stderr[-2000:]

    # The image's site-packages: the wheel unpacked (read-only) beside the pinned dependencies of
    # this venv; `python -S` skips the .pth files, so the editable repository is not on the path.
    site_dir = tmp_path / "site-packages"
    zipfile.ZipFile(_wheel(context)).extractall(site_dir)
    app_copy = tmp_path / "opt_holoscan_app"
    subprocess.run(["cp", "-r", str(context / "app"), str(app_copy)], check=True)
    for p in [*site_dir.rglob("*"), *app_copy.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    venv_site = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "pydicom").is_dir())
    home = tmp_path / "home"
    home.mkdir()
    out_map = tmp_path / "out_map"
    env_map = {"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(home),
               "PYTHONPATH": os.pathsep.join([str(site_dir), venv_site]),
               "HOLOSCAN_INPUT_PATH": str(study), "HOLOSCAN_OUTPUT_PATH": str(out_map),
               "HOLOSCAN_MODEL_PATH": str(context / "models")}
    for module in ("simulation", "models.training", "cervical_pacs"):
        probe = subprocess.run([sys.executable, "-S", "-c", f"import {module}"], cwd=app_copy, env=env_map,
                               capture_output=True)
        assert probe.returncode != 0, f"{module} must not be importable in the MAP-like run"
    # the MAP command (map/app.json): python3 /opt/holoscan/app, cwd = the app folder copy
    r2 = subprocess.run([sys.executable, "-S", str(app_copy)], cwd=app_copy, env=env_map, capture_output=True,
                        text=True, timeout=600)
    for p in [*site_dir.rglob("*"), *app_copy.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)
    assert r2.returncode == 0, r2.stderr[-2000:]

    a, b = _dicoms(out_repo), _dicoms(out_map)
    assert set(a) == set(b) and any(k.startswith("derived/") for k in a)
    assert {"qc/sr/QC_SR.dcm", "qc/report/QC_REPORT.dcm"} <= set(a)
    for rel in a:
        assert a[rel].SeriesInstanceUID == b[rel].SeriesInstanceUID, rel
        assert a[rel].SOPInstanceUID == b[rel].SOPInstanceUID, rel
        if rel.startswith("derived/"):
            assert a[rel].PixelData == b[rel].PixelData, rel
            assert MODEL_INFO["version"] in str(b[rel].DerivationDescription)
    s1 = json.loads((out_repo / "run_summary.json").read_text())
    s2 = json.loads((out_map / "run_summary.json").read_text())
    assert s1.get("status", "ok") == s2.get("status", "ok")
    assert json.loads((out_repo / "qc.json").read_text()) == json.loads((out_map / "qc.json").read_text())


# --- Kubernetes Job ---------------------------------------------------------------------------------

def test_k8s_job_fields_resources_volumes_security():
    from kubernetes import client
    job = k8s_job.build_job(image="reg.example/cervical-dl-enhance:0.1.0-gpu", job_id=42, attempt=2)
    d = k8s_job.to_dict(job)
    assert d["apiVersion"] == "batch/v1" and d["kind"] == "Job"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"]) and len(d["metadata"]["name"]) <= 63
    spec = d["spec"]
    assert spec["backoffLimit"] == 0 and spec["ttlSecondsAfterFinished"] > 0 and spec["activeDeadlineSeconds"] == 1800
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    (c,) = pod["containers"]
    assert c["image"].endswith(":0.1.0-gpu") and c["args"] == ["python3", "/opt/holoscan/app"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["HOLOSCAN_INPUT_PATH"] == "/var/holoscan/input" and env["HOLOSCAN_OUTPUT_PATH"] == "/var/holoscan/output"
    assert env["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/var/holoscan/input"].get("readOnly") is True and mounts["/var/holoscan/input"]["subPath"] == "jobs/42-2/in"
    assert not mounts["/var/holoscan/output"].get("readOnly") and mounts["/var/holoscan/output"]["subPath"] == "jobs/42-2/out"
    assert mounts["/tmp"] and mounts["/dev/shm"]
    named = k8s_job.build_job(image="x:1", job_id=42, name="cervical-dl-w123-j42-2", job_dir="cervical-dl-w123-job42-abc")
    assert named.metadata.name == "cervical-dl-w123-j42-2"
    with pytest.raises(ValueError):
        k8s_job.build_job(image="x:1", job_id=42, name="Not_Valid")
    # the application's own settings reach the container; nothing else may be slipped in that way
    tuned = k8s_job.to_dict(k8s_job.build_job(image="x:1", job_id=42, app_environment={"CERVICAL_DL_STRENGTH": "low"}))
    tuned_env = {e["name"]: e["value"] for e in tuned["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert tuned_env["CERVICAL_DL_STRENGTH"] == "low" and tuned_env["HOLOSCAN_MODEL_PATH"] == "/opt/holoscan/models"
    with pytest.raises(ValueError):
        k8s_job.build_job(image="x:1", job_id=42, app_environment={"HOLOSCAN_MODEL_PATH": "/elsewhere"})
    res = c["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "1" and res["limits"]["memory"] == res["requests"]["memory"]
    # models from a versioned claim (upgrade / rollback without rebuilding)
    d2 = k8s_job.to_dict(k8s_job.build_job(image="x:1", job_id=1, models_claim="cervical-dl-models", variant="cpu"))
    c2 = d2["spec"]["template"]["spec"]["containers"][0]
    m = {m["mountPath"]: m for m in c2["volumeMounts"]}["/opt/holoscan/models"]
    assert m["readOnly"] is True and m["subPath"] == MODEL_INFO["version"]
    assert "nvidia.com/gpu" not in c2["resources"]["limits"]
    # round trip through the client's own deserializer (types and required fields of the models)
    api = client.ApiClient()
    back = api._ApiClient__deserialize(d, "V1Job")
    assert api.sanitize_for_serialization(back) == d
    # deny-all network policy selecting these pods
    np_ = k8s_job.to_dict(k8s_job.build_network_policy())
    assert np_["spec"]["policyTypes"] == ["Ingress", "Egress"] and np_["spec"]["egress"] == []
    assert all(spec["template"]["metadata"]["labels"][k] == v for k, v in np_["spec"]["podSelector"]["matchLabels"].items())


def test_k8s_shell_wrapper_raises_stack_and_execs():
    job = k8s_job.to_dict(k8s_job.build_job(image="x:1", job_id=1))
    c = job["spec"]["template"]["spec"]["containers"][0]
    cmd = c["command"] + [sys.executable, "-c", "import resource; print(resource.getrlimit(resource.RLIMIT_STACK)[0])"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert int(out) in (32 * 1024 * 1024, -1) or int(out) >= 32 * 1024 * 1024


def test_k8s_run_job_with_fake_api():
    job = k8s_job.build_job(image="x:1", job_id=7)
    ns = types.SimpleNamespace
    polls = [ns(status=ns(succeeded=None, failed=None)), ns(status=ns(succeeded=None, failed=1))]

    class Batch:
        created = deleted = None

        def create_namespaced_job(self, namespace, body):
            Batch.created = (namespace, body.metadata.name)

        def read_namespaced_job_status(self, name, namespace):
            return polls.pop(0)

        def delete_namespaced_job(self, **kw):
            Batch.deleted = kw

    term = ns(exit_code=4)
    pod = ns(status=ns(container_statuses=[ns(name="map", state=ns(terminated=term))]))

    class Core:
        def list_namespaced_pod(self, namespace, label_selector):
            assert label_selector == f"job-name={job.metadata.name}"
            return ns(items=[pod])

    assert k8s_job.run_job(Batch(), Core(), job, sleep=lambda s: None) == 4
    assert Batch.created == ("cervical-dl", job.metadata.name) and Batch.deleted is None
    polls[:] = [ns(status=ns(succeeded=None, failed=None))]
    assert k8s_job.run_job(Batch(), Core(), job, sleep=lambda s: None, should_stop=lambda: True) == -1
    assert Batch.deleted["name"] == job.metadata.name


def test_example_job_file_in_sync():
    shipped = json.loads((ROOT / "deploy" / "cervical-dl-job.example.json").read_text())
    job = k8s_job.build_job(image=k8s_job.default_image("gpu", "registry.example.org/"), job_id="example")
    assert shipped["items"][1] == k8s_job.to_dict(job)


# --- MONAI Deploy Workflow Manager workflow --------------------------------------------------------------

def test_workflow_definition_valid_and_in_sync():
    shipped = json.loads((ROOT / "deploy" / "cervical-dl-workflow.json").read_text())
    assert shipped == workflow.build_workflow()
    assert workflow.validate_workflow(shipped) == []
    tasks = {t["id"]: t for t in shipped["tasks"]}
    root = shipped["tasks"][0]
    assert root["type"] == "router" and root["task_destinations"][0]["name"] == "cervical-dl-enhance"
    cond = " ".join(root["task_destinations"][0]["conditions"])
    assert "'0008','0060'" in cond and "'MR'" in cond and "'0018','0015'" in cond and "'0008','103E'" in cond
    map_task = tasks["cervical-dl-enhance"]
    assert map_task["type"] == "docker" and workflow.DOCKER_REQUIRED_ARGS <= set(map_task["args"])
    assert map_task["args"]["env_HOLOSCAN_INPUT_PATH"] == map_task["args"]["input-dicom"] == "/var/holoscan/input"
    assert map_task["task_destinations"] == [{"name": "export-to-orthanc"}]
    export = tasks["export-to-orthanc"]
    assert export["type"] == "export" and export["export_destinations"][0]["name"] in \
        shipped["informatics_gateway"]["export_destinations"]


def test_workflow_validator_catches_errors():
    bad = workflow.build_workflow()
    bad["informatics_gateway"]["ae_title"] = "A" * 16
    bad["tasks"][1]["args"].pop("container_image")
    bad["tasks"][2]["export_destinations"] = [{"name": "NOWHERE"}]
    bad["tasks"].append({"id": "orphan task", "type": "bogus"})
    errors = " | ".join(workflow.validate_workflow(bad))
    for needle in ("ae_title", "container_image", "NOWHERE", "invalid characters", "invalid type", "without any task"):
        assert needle in errors, needle
