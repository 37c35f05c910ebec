"""Scanner simulation and synthetic cervical-spine phantom.

Physics (k-space acquisition, noise, motion) lives in :mod:`simulation.acquisition`;
anatomy and contrasts in :mod:`simulation.phantom`; DICOM encoding of simulated series
in :mod:`simulation.dicom_study`; the command line in :mod:`simulation.make_study`.
"""
