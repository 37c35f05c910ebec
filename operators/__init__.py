"""MONAI Deploy operators of the cervical-spine DL enhancement application (one per file)."""
