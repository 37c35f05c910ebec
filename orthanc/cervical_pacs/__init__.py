"""Orthanc integration of Cervical DL Enhance: settings and config rendering, the persistent
job queue, the Orthanc Python plugin (trigger + REST routes), the worker, the launcher
behind ``make orthanc`` / ``make stop`` and the benchmark.

This package lives in ``orthanc/cervical_pacs`` and is imported with ``orthanc/`` on
``sys.path`` (``PYTHONPATH=.:orthanc``): the folder ``orthanc/`` itself has no
``__init__.py`` and is never imported, so Orthanc's own ``import orthanc`` (a built-in module
of the Python plugin) is never shadowed. Nothing here imports ``orthanc`` except
``plugin.py``, which only runs inside Orthanc.
"""
