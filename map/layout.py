"""Where things are inside the MAP (the layout holoscan-cli 4.2.0 gives a MONAI Application
Package) and how it is started: one home for the paths the MAP build, the Orthanc worker's
docker mode and the Kubernetes job all use. Standard library only."""

APP_DIR = "/opt/holoscan/app"        # HOLOSCAN_APPLICATION: __main__.py (the installed app is in site-packages)
MODELS_DIR = "/opt/holoscan/models"  # HOLOSCAN_MODEL_PATH: the weights folder (models/weights)
DOCS_DIR = "/opt/holoscan/docs"
WORK_DIR = "/var/holoscan"
INPUT_DIR, OUTPUT_DIR, LOGS_DIR = f"{WORK_DIR}/input", f"{WORK_DIR}/output", f"{WORK_DIR}/logs"
CONFIG_PATH = f"{WORK_DIR}/app.yaml"
APP_JSON, PKG_JSON = "/etc/holoscan/app.json", "/etc/holoscan/pkg.json"

#: The MAP's command (map/app.json "command", the image's ENTRYPOINT).
APP_COMMAND = ["python3", APP_DIR]
#: Soft stack limit for the app, KiB: Holoscan warns below it (and deep SDK call chains need it).
STACK_LIMIT_KIB = 32768
#: The shell prefix that raises the soft stack limit where no ulimit setting exists (Kubernetes, Argo).
STACK_LIMIT_SHELL = f"ulimit -s {STACK_LIMIT_KIB} 2>/dev/null"
