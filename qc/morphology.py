"""Binary erosion, dilation, opening, closing and hole filling of 2-D masks with the 4-connected cross,
iterated, and opening with the 3x3 square: the same pixels as :mod:`scipy.ndimage` with its default structure and
``border_value=0`` (tests/test_qc.py checks this), 5-15x faster on 512x512 masks.

Why: the C3 search opens 32 masks per slice and the body masks close and dilate every slice;
scipy's C loop over a 3x3 structure cost ~4 ms per opening, about 2 s of a study's QC. Whole-row
numpy ``&``/``|`` of shifted views do the same work at memory speed.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def erosion(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """``ndimage.binary_erosion(mask, iterations=iterations)`` of a 2-D mask (outside = False)."""
    out = np.array(mask, dtype=bool, copy=True)
    if out.size == 0:
        return out
    for _ in range(iterations):
        src = out.copy()
        out[1:, :] &= src[:-1, :]
        out[:-1, :] &= src[1:, :]
        out[:, 1:] &= src[:, :-1]
        out[:, :-1] &= src[:, 1:]
        # the border's missing neighbours are False (scipy's border_value=0)
        out[0, :] = out[-1, :] = False
        out[:, 0] = out[:, -1] = False
    return out


def dilation(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """``ndimage.binary_dilation(mask, iterations=iterations)`` of a 2-D mask."""
    out = np.array(mask, dtype=bool, copy=True)
    for _ in range(iterations):
        src = out.copy()
        out[1:, :] |= src[:-1, :]
        out[:-1, :] |= src[1:, :]
        out[:, 1:] |= src[:, :-1]
        out[:, :-1] |= src[:, 1:]
    return out


def opening(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """``ndimage.binary_opening(mask, iterations=iterations)``: erosion, then dilation."""
    return dilation(erosion(mask, iterations), iterations)


def closing(mask: np.ndarray, iterations: int = 1) -> np.ndarray:
    """``ndimage.binary_closing(mask, iterations=iterations)``: dilation, then erosion (which,
    as scipy's, also erodes from the image border)."""
    return erosion(dilation(mask, iterations), iterations)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes(mask)`` of a 2-D mask: background not 4-connected to the
    image border is filled. One labelling instead of scipy's propagation from the border
    (iterated dilation until nothing changes), 2-3x faster on a 512x512 body mask."""
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(~mask)
    if n == 0:
        return mask.copy()
    outside = np.zeros(n + 1, dtype=bool)
    outside[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    outside[0] = False  # label 0: the mask itself
    return ~outside[labels]



def square_opening(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_opening(mask, structure=np.ones((3, 3)))`` of a 2-D mask: the 3x3
    square is separable, so a row pass and a column pass of shifted views do it (~30x faster)."""
    out = np.array(mask, dtype=bool, copy=True)
    if out.size == 0:
        return out
    for axis in (1, 0):  # erosion; the border's missing neighbours are False
        src = out.copy()
        lo, hi = _views(out, axis)
        src_lo, src_hi = _views(src, axis)
        lo &= src_hi
        hi &= src_lo
        if axis == 0:
            out[0, :] = out[-1, :] = False
        else:
            out[:, 0] = out[:, -1] = False
    for axis in (1, 0):  # dilation
        src = out.copy()
        lo, hi = _views(out, axis)
        src_lo, src_hi = _views(src, axis)
        lo |= src_hi
        hi |= src_lo
    return out


def _views(a: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``a`` without its last and without its first line along ``axis`` (views)."""
    return (a[:-1, :], a[1:, :]) if axis == 0 else (a[:, :-1], a[:, 1:])
