"""Orthanc's ``"PythonScript"``: loads the trigger and REST routes of :mod:`cervical_pacs.plugin`.

Orthanc puts this file's folder (``orthanc/``, which holds only the ``cervical_pacs`` package)
first on ``sys.path``; the rest of the path comes from ``PYTHONPATH``, set by the launcher.
"""
import cervical_pacs.plugin  # noqa: F401  (registers the callbacks when imported)
