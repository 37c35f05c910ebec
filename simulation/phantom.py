"""Synthetic cervical-spine phantom: anatomy in 3-D patient space, MR contrasts at 1.5 T.

The anatomy is defined analytically in DICOM patient coordinates (LPS, millimetres:
``x`` to the patient's left, ``y`` posterior, ``z`` head), so sagittal and axial slices
of one phantom patient show the same anatomy. Rendering a plane gives per-tissue
partial-volume fractions (in-plane and through-plane supersampling); a contrast then
maps tissue fractions to signal with the spin-echo equation
``S = PD (1 - exp(-TR/T1)) exp(-TE/T2)``, separately for water and fat (Dixon).

``z = 0`` lies near the C4 body; vertebral levels run from C2 (with the dens) to T3.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

__all__ = [
    "Tissue",
    "Contrast",
    "CONTRASTS",
    "PhantomPatient",
    "PlaneGeometry",
    "sagittal_geometry",
    "axial_geometry",
    "render_plane",
    "contrast_image",
    "training_objects",
    "LEVELS",
    "DISC_NAMES",
    "plane_points",
    "swallowing_weight",
    "swallowing_fill",
]


class Tissue(IntEnum):
    AIR = 0
    FAT = 1
    SKIN = 2
    MUSCLE = 3
    SOFT_TISSUE = 4
    MUCOSA = 5
    THYROID = 6
    CORTICAL_BONE = 7
    MARROW = 8
    DISC_NUCLEUS = 9
    DISC_ANNULUS = 10
    LIGAMENT = 11
    CSF = 12
    CORD = 13
    CORD_LESION = 14
    ENHANCING_LESION = 15
    BRAIN = 16
    FLOW_VOID = 17
    EPIDURAL_VEINS = 18
    LUNG = 19
    CARTILAGE = 20
    DEGENERATED_NUCLEUS = 21


N_TISSUES = len(Tissue)

# Water: proton density, T1 (ms), T2 (ms); fat fraction; gadolinium uptake (mM) on CE.
# 1.5 T literature values, rounded.
_TISSUE_PARAMETERS: dict[Tissue, tuple[float, float, float, float, float]] = {
    Tissue.AIR: (0.0, 1000, 1, 0.0, 0.0),
    Tissue.FAT: (0.8, 600, 60, 0.9, 0.0),  # adipose tissue keeps ~10 % water (seen on water-only Dixon)
    Tissue.SKIN: (0.8, 800, 50, 0.1, 0.1),
    Tissue.MUSCLE: (0.75, 1000, 40, 0.03, 0.03),
    Tissue.SOFT_TISSUE: (0.8, 950, 60, 0.05, 0.06),
    Tissue.MUCOSA: (0.85, 1000, 80, 0.0, 0.3),
    Tissue.THYROID: (0.8, 600, 80, 0.0, 0.3),
    Tissue.CORTICAL_BONE: (0.05, 1000, 5, 0.0, 0.0),
    Tissue.MARROW: (0.8, 900, 50, 0.4, 0.08),
    Tissue.DISC_NUCLEUS: (0.9, 1100, 130, 0.0, 0.0),
    Tissue.DISC_ANNULUS: (0.7, 900, 40, 0.0, 0.0),
    Tissue.LIGAMENT: (0.15, 800, 15, 0.0, 0.0),
    Tissue.CSF: (1.0, 3800, 1800, 0.0, 0.0),
    Tissue.CORD: (0.75, 800, 80, 0.0, 0.0),
    Tissue.CORD_LESION: (0.85, 1100, 140, 0.0, 0.0),
    Tissue.ENHANCING_LESION: (0.85, 1100, 110, 0.0, 0.5),
    Tissue.BRAIN: (0.78, 850, 85, 0.0, 0.0),
    Tissue.FLOW_VOID: (0.0, 1000, 1, 0.0, 0.0),
    Tissue.EPIDURAL_VEINS: (0.9, 1200, 120, 0.0, 1.0),
    Tissue.LUNG: (0.05, 1200, 20, 0.0, 0.0),
    Tissue.CARTILAGE: (0.5, 800, 30, 0.2, 0.0),
    Tissue.DEGENERATED_NUCLEUS: (0.75, 950, 60, 0.0, 0.0),
}
_FAT = (1.0, 260.0, 130.0)  # PD, T1, T2 of fat on TSE (J-coupling keeps fat bright on T2)
_GADOBUTROL_R1 = 5.2e-3  # relaxivity, 1/(mM ms), 1.5 T


@dataclass(frozen=True)
class Contrast:
    """A TSE contrast. ``image`` is ``"magnitude"`` (water + fat), ``"in_phase"`` or
    ``"water"`` (Dixon), ``contrast_enhanced`` applies gadolinium T1 shortening."""

    name: str
    repetition_time_ms: float
    echo_time_ms: float
    echo_train_length: int
    image: str = "magnitude"
    contrast_enhanced: bool = False


CONTRASTS: dict[str, Contrast] = {
    "T1": Contrast("T1", 550.0, 8.0, 5),
    "T2": Contrast("T2", 3000.0, 100.0, 18),
    "DIXON_IP": Contrast("DIXON_IP", 3000.0, 100.0, 18, image="in_phase"),
    "DIXON_W": Contrast("DIXON_W", 3000.0, 100.0, 18, image="water"),
    "AX_T2": Contrast("AX_T2", 3500.0, 100.0, 15),
    "CE_T1": Contrast("CE_T1", 550.0, 8.0, 5, contrast_enhanced=True),
}

# (name, body top z, body bottom z) in mm; discs fill the gaps below each body.
LEVELS: list[tuple[str, float, float]] = [
    ("C2", 50.0, 30.0),
    ("C3", 25.0, 11.0),
    ("C4", 6.0, -8.0),
    ("C5", -13.0, -27.0),
    ("C6", -32.0, -46.0),
    ("C7", -51.0, -65.0),
    ("T1", -70.0, -86.0),
    ("T2", -91.0, -108.0),
    ("T3", -113.0, -130.0),
]
DISC_NAMES = [f"{a}-{b}" for (a, _, _), (b, _, _) in zip(LEVELS[:-1], LEVELS[1:])]

# Vertebral body shape (mm): endplate concavity at the centre (superior, inferior), the
# rounding of the body's vertical edges, cortical rim, height of the uncinate processes.
ENDPLATE_SUPERIOR_MM = 0.8
ENDPLATE_INFERIOR_MM = 1.3
BODY_CORNER_MM = 2.0
CORTEX_MM = 1.0
UNCINATE_MM = 2.5

# Tissue texture amplitudes (fraction of the tissue's signal, per unit-variance field).
MARROW_TEXTURE = 0.07
MUSCLE_STRIATION = 0.05
MUSCLE_BUNDLES = 0.02
FAT_LOBULES = 0.02
FAT_SEPTA = 0.18
SEPTUM_HALF_WIDTH_MM = 0.45

#: Wave sets of the tissue textures: (number of waves, wavelength range mm, orientation).
_TEXTURE_KINDS = {
    "marrow": (48, (1.4, 3.5), "trabecular"),
    "striation": (32, (1.3, 2.6), "across_z"),
    "bundles": (16, (4.0, 9.0), "across_z"),
    "lobules": (24, (6.0, 14.0), "isotropic"),
}


@functools.lru_cache(maxsize=64)
def _texture_waves(seed: int, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plane waves ``k`` (n, 3) rad/mm, phases (n,) and amplitudes (n,) of one texture,
    drawn from the patient seed (a stream of its own: the anatomy's draws are unchanged).
    Amplitudes ``sqrt(2/n)``: the sum has unit variance."""
    n, (lam_lo, lam_hi), orient = _TEXTURE_KINDS[kind]
    rng = np.random.default_rng([seed, 20251, 1 + list(_TEXTURE_KINDS).index(kind)])
    theta = rng.uniform(0, 2 * np.pi, n)
    if orient == "isotropic":
        d = rng.normal(size=(n, 3))
    else:
        horizontal = np.stack([np.cos(theta), np.sin(theta), rng.normal(0, 0.15, n)], axis=1)
        d = horizontal
        if orient == "trabecular":  # 40 % horizontal plates: waves along z
            plates = rng.random(n) < 0.4
            d[plates] = np.stack([rng.normal(0, 0.3, n), rng.normal(0, 0.3, n), np.ones(n)], axis=1)[plates]
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    lam = np.exp(rng.uniform(np.log(lam_lo), np.log(lam_hi), n))
    k = d * (2 * np.pi / lam)[:, None]
    phase = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    amp = np.full(n, np.sqrt(2.0 / n), dtype=np.float32)
    return k, phase, amp


@dataclass(frozen=True)
class Pathology:
    disc_bulge_levels: tuple[int, ...] = ()  # disc indices into DISC_NAMES
    bulge_mm: float = 3.0
    stenosis_level: int | None = None  # disc index
    cord_lesion: bool = False  # T2 hyperintense lesion at the stenosis (myelopathy)
    enhancing_lesion_z: float | None = None  # intramedullary enhancing lesion centre (mm)


@dataclass(frozen=True)
class PhantomPatient:
    """One phantom patient: anatomy drawn from ``seed`` (deterministic)."""

    seed: int
    lordosis_mm: float = 9.0
    canal_ap_mm: float = 13.5
    cord_ap_mm: float = 7.6
    neck_lr_mm: float = 58.0
    marrow_fat_fraction: float = 0.4
    degenerated_discs: tuple[int, ...] = ()
    pathology: Pathology = field(default_factory=Pathology)
    texture: tuple[tuple[float, float, float, float, float], ...] = ()

    @classmethod
    def from_seed(cls, seed: int, pathology: str = "auto", protocol: str = "myelopathy") -> "PhantomPatient":
        """Draw a patient. ``pathology``: ``"auto"`` (by protocol), ``"none"`` or ``"all"``."""
        rng = np.random.default_rng([seed, 20251])
        degenerated = tuple(int(i) for i in np.flatnonzero(rng.random(7) < 0.3))
        bulge_level = int(rng.integers(2, 5))  # C4-5 .. C6-7
        if pathology == "none":
            path = Pathology()
        else:
            myelo = pathology == "all" or protocol == "myelopathy"
            path = Pathology(
                disc_bulge_levels=(bulge_level,) + ((bulge_level - 1,) if rng.random() < 0.5 else ()),
                bulge_mm=float(rng.uniform(2.0, 4.0)),
                stenosis_level=bulge_level if (myelo or rng.random() < 0.5) else None,
                cord_lesion=myelo,
                enhancing_lesion_z=float(rng.uniform(-5.0, 20.0)) if myelo else None,
            )
        texture = tuple(
            (float(a), float(b), float(c), float(d), float(e))
            for a, b, c, d, e in zip(
                rng.normal(0, 0.35, 12), rng.normal(0, 0.35, 12), rng.normal(0, 0.35, 12),
                rng.uniform(0, 2 * np.pi, 12), rng.uniform(0.01, 0.03, 12),
            )
        )
        return cls(
            seed=seed,
            lordosis_mm=float(rng.uniform(3.0, 14.0)),
            canal_ap_mm=float(rng.uniform(12.0, 15.0)),
            cord_ap_mm=float(rng.uniform(6.8, 8.2)),
            neck_lr_mm=float(rng.uniform(52.0, 66.0)),
            marrow_fat_fraction=float(rng.uniform(0.3, 0.55)),
            degenerated_discs=degenerated,
            pathology=path,
            texture=texture,
        )

    # --- anatomy -------------------------------------------------------------------------
    def body_centre_y(self, z: np.ndarray) -> np.ndarray:
        """AP position of the vertebral body centres (cervical lordosis), mm."""
        s = np.clip((z + 10.0) / 70.0, -1.0, 1.0)
        return self.lordosis_mm * (s**2 - 0.5)

    def labels(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tissue label and vertebral level index at points (any equal shapes), mm.

        Level index: ``2*i`` inside body ``LEVELS[i]`` (z range), ``2*i+1`` in the disc
        below it, ``-1`` outside the column's z range.
        """
        lab = np.full(x.shape, Tissue.AIR, dtype=np.int8)
        u = y - self.body_centre_y(z)  # AP offset from the body centre line

        # Neck outline: ellipse in x-u, with a head above and chest below.
        neck_c = 12.0
        a = self.neck_lr_mm + np.clip(-(z + 95.0), 0, None) * 1.2 + np.clip(z - 75.0, 0, None) * 0.6
        b = 80.0 + np.clip(-(z + 100.0), 0, None) * 0.8 + np.clip(z - 75.0, 0, None) * 0.8
        r = np.sqrt((x / a) ** 2 + ((y - neck_c) / b) ** 2)
        inside = r <= 1.0
        # Chin and floor of the mouth: an anterior lobe between z = 15 and 75.
        chin = ((y + 85.0) / 32.0) ** 2 + (x / 42.0) ** 2 + ((z - 45.0) / 32.0) ** 2 <= 1.0
        body = inside | chin
        lab[body] = Tissue.SKIN
        skin_mm = 1.5
        depth = (1.0 - r) * np.minimum(a, b)  # approximate depth below the skin, mm
        lab[body & ((depth > skin_mm) | chin)] = Tissue.FAT
        fat_mm = 7.0
        core = inside & (depth > skin_mm + fat_mm)
        lab[core] = Tissue.MUSCLE
        # Intermuscular fat planes posteriorly.
        planes = core & (u > 35.0) & (np.abs(np.sin((y - 35.0) / 6.0 + x / 25.0 + z / 40.0)) < 0.12)
        lab[planes] = Tissue.FAT
        # Mandible: a U-shaped cortical band in the chin lobe.
        mand = chin & (np.abs(np.sqrt(((y + 85.0) / 30.0) ** 2 + (x / 40.0) ** 2) - 0.85) < 0.08) & (np.abs(z - 35.0) < 12.0)
        lab[mand] = Tissue.CORTICAL_BONE
        lab[chin & ~mand & (y > -80.0) & (z > 20.0) & (z < 70.0) & (np.abs(x) < 25.0)] = Tissue.MUSCLE  # tongue

        # Head above the foramen magnum: posterior fossa and occipital bone.
        head = inside & (z > 68.0)
        lab[head & (u > 8.0) & (u < 70.0) & (np.abs(x) < 55.0)] = Tissue.BRAIN
        occ = head & (u >= 70.0) & (u < 77.0) & (np.abs(x) < 60.0)
        lab[occ] = Tissue.CORTICAL_BONE
        lab[head & (u >= 72.0) & (u < 75.0) & (np.abs(x) < 55.0)] = Tissue.MARROW
        # Clivus: its lower tip (basion) a few mm above the dens apex.
        clivus = (z > 68.0) & (np.abs(u - 0.3 * (z - 62.0)) < 6.0) & (np.abs(x) < 14.0) & (z < 110.0)
        lab[clivus] = Tissue.CORTICAL_BONE
        lab[clivus & (np.abs(u - 0.3 * (z - 62.0)) < 4.0)] = Tissue.MARROW

        # Prevertebral soft tissue, airway and larynx.
        prevert = np.where(z > -8.0, 4.0, 13.0)
        airway_post = -9.0 - prevert
        airway_ap = np.where(z > 0.0, 13.0, 15.0)
        airway_lr = np.where(z > 0.0, 17.0, 9.0)
        ant_neck = inside & (depth > skin_mm + fat_mm) & (u < -8.0)
        lab[ant_neck] = Tissue.SOFT_TISSUE
        airway_c = airway_post - airway_ap / 2.0
        airway_r = ((u - airway_c) / (airway_ap / 2.0)) ** 2 + (x / airway_lr) ** 2
        in_airway_range = (z < 85.0) & (z > -135.0)
        lab[in_airway_range & (airway_r <= 1.6) & inside] = Tissue.MUCOSA
        lab[in_airway_range & (airway_r <= 1.0)] = Tissue.AIR
        larynx = (z < 0.0) & (z > -28.0) & in_airway_range & (airway_r > 1.6) & (airway_r <= 2.6) & (u < airway_c)
        lab[larynx] = Tissue.CARTILAGE
        thyroid = (z < -35.0) & (z > -62.0) & (airway_r > 1.8) & (airway_r <= 4.0) & (u < airway_post) & inside
        lab[thyroid] = Tissue.THYROID
        # Carotid arteries and vertebral arteries: flow voids.
        for side in (-1.0, 1.0):
            lab[(((x - side * 24.0) / 4.0) ** 2 + ((u + 16.0) / 4.0) ** 2 <= 1.0) & inside] = Tissue.FLOW_VOID
            lab[(((x - side * 16.0) / 2.3) ** 2 + ((u - 1.0) / 2.3) ** 2 <= 1.0) & (z > -60.0) & (z < 55.0)] = Tissue.FLOW_VOID
        # Lung apices below the thoracic inlet.
        lab[inside & (z < -95.0) & (np.abs(x) > 28.0) & (u > -40.0) & (u < 40.0)] = Tissue.LUNG

        # Vertebral column: bodies with rounded corners and concave endplates, discs filling
        # the concavities, the dens of C2, posterior elements. Level index by z slab, then
        # by tissue where bodies and discs interlock.
        level = self._level_slabs(z, u)
        self._column(lab, level, x, u, z, inside)

        # Ligaments: anterior and posterior longitudinal.
        col = (z < 52.0) & (z > -130.0) & (np.abs(x) < 8.0)
        lab[col & (u > -9.2) & (u <= -8.2) & (lab != Tissue.DISC_ANNULUS)] = Tissue.LIGAMENT
        lab[col & (u >= 8.6) & (u < 9.4) & (lab != Tissue.DISC_ANNULUS)] = Tissue.LIGAMENT

        # Spinal canal: CSF, cord (medulla above z = 62), epidural veins.
        canal_c = 9.4 + self.canal_ap_mm / 2.0
        canal_half = np.full(x.shape, self.canal_ap_mm / 2.0)
        cord_half = np.full(x.shape, self.cord_ap_mm / 2.0)
        cord_lr = 6.0 + 1.0 * np.exp(-(((z + 20.0) / 25.0) ** 2))  # cervical enlargement
        if self.pathology.stenosis_level is not None:
            sz = LEVELS[self.pathology.stenosis_level][2] - 2.5  # disc centre
            narrowing = np.exp(-(((z - sz) / 5.0) ** 2))
            canal_half = canal_half - narrowing * 0.3 * self.canal_ap_mm
            cord_half = np.minimum(cord_half, canal_half * 0.8 + (1 - narrowing) * 10)
            # Hypertrophied ligamentum flavum fills the posterior canal at the level.
            flavum = (narrowing > 0.3) & (np.abs(x) < 9.0) & (u > canal_c + canal_half) & (u < 9.4 + self.canal_ap_mm + 0.5)
            lab[flavum & inside] = Tissue.LIGAMENT
        medulla = np.clip((z - 62.0) / 20.0, 0, 1)
        cord_half = cord_half * (1 + 0.6 * medulla)
        cord_lr = cord_lr * (1 + 0.6 * medulla)
        canal_z = (z < 68.0) & (z > -135.0)
        canal = canal_z & (((u - canal_c) / canal_half) ** 2 + (x / 11.0) ** 2 <= 1.0)
        lab[canal] = Tissue.CSF
        veins = canal & (u < canal_c - canal_half + 1.2) & (np.abs(x) < 9.0)
        lab[veins] = Tissue.EPIDURAL_VEINS
        cord_r = ((u - canal_c) / cord_half) ** 2 + (x / cord_lr) ** 2
        cord = (canal_z | (z >= 68.0)) & (cord_r <= 1.0) & (z < 95.0)
        lab[cord] = Tissue.CORD
        if self.pathology.cord_lesion and self.pathology.stenosis_level is not None:
            lz = LEVELS[self.pathology.stenosis_level][2] - 2.5
            les = cord & (((u - canal_c) / 2.2) ** 2 + (x / 2.5) ** 2 + ((z - lz) / 6.0) ** 2 <= 1.0)
            lab[les] = Tissue.CORD_LESION
        if self.pathology.enhancing_lesion_z is not None:
            ez = self.pathology.enhancing_lesion_z
            enh = cord & (((u - canal_c) / 2.3) ** 2 + ((x - 1.0) / 2.3) ** 2 + ((z - ez) / 3.5) ** 2 <= 1.0)
            lab[enh] = Tissue.ENHANCING_LESION
        return lab, level

    def _level_slabs(self, z: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Level index by z slab alone: ``2*i`` in body ``LEVELS[i]``'s z range, ``2*i+1``
        in the disc below it, -1 outside the column's z range or far from it."""
        edges = np.array([v for _, top, bottom in LEVELS for v in (top, bottom)])  # descending
        slab = len(edges) - 1 - np.searchsorted(edges[::-1], z, side="left")  # (edge_{s+1}, edge_s]
        level = np.where((slab >= 0) & (slab < len(edges) - 1) & (np.abs(u) < 60), slab, -1)
        return level.astype(np.int8)

    def _column(self, lab: np.ndarray, level: np.ndarray, x: np.ndarray, u: np.ndarray,
                z: np.ndarray, inside: np.ndarray) -> None:
        """Draw the vertebral column into ``lab`` and ``level`` (in place), working on the
        points near the column only.

        Bodies are rounded boxes: the axial outline is the superellipse ``(u/8)^4 + (x/9)^4``,
        the superior and inferior endplates are concave (the centre lies ``ENDPLATE_*_MM``
        inside the rim), the vertical edges are rounded with ``BODY_CORNER_MM``, and a
        ``CORTEX_MM`` rim of cortical bone surrounds the marrow. C3-C7 carry uncinate
        processes (posterolateral lips of the superior endplate); C2's superior surface
        rises into the dens. Discs are biconvex: they fill the endplate concavities and the
        rounded corners, their nucleus follows the centre height.
        """
        near = (np.abs(x) < 34.0) & (u > -14.0) & (u < 68.0) & (z > -142.0) & (z < 70.0)
        idx = np.flatnonzero(near)
        if idx.size == 0:
            return
        xs, us, zs = (np.asarray(a).reshape(-1)[idx] for a in (x, u, z))
        ins = np.asarray(inside).reshape(-1)[idx]
        ls = lab.reshape(-1)[idx]
        vs = level.reshape(-1)[idx]
        ax_ = np.abs(xs)

        # Axial outline: normalised radius and the distance (mm, along the ray from the
        # centre line, negative inside) to the body's outline.
        rho = np.sqrt(np.sqrt((us / 8.0) ** 4 + (xs / 9.0) ** 4))
        rad = np.hypot(us, xs)
        d_r = np.where(rho > 1e-3, rad - rad / np.maximum(rho, 1e-3), -8.5)
        concave = np.clip(1.0 - rho * rho, 0.0, None)  # endplate depth profile, 1 at the centre
        post_lat = np.clip((us + 3.0) / 4.0, 0.0, 1.0) * np.exp(-(((ax_ - 7.8) / 1.6) ** 2))

        def rounded_box(i: int, sel: np.ndarray) -> np.ndarray:
            _, top, bottom = LEVELS[i]
            c_sup = 0.0 if i == 0 else ENDPLATE_SUPERIOR_MM
            z_top = top - c_sup * concave[sel]
            if i == 0:  # C2: the body's top rises in shoulders towards the dens
                z_top = z_top + 2.5 * concave[sel] ** 2
            elif i <= 5:  # C3-C7: uncinate processes
                z_top = z_top + UNCINATE_MM * post_lat[sel]
            z_bot = bottom + ENDPLATE_INFERIOR_MM * concave[sel]
            d_z = np.maximum(zs[sel] - z_top, z_bot - zs[sel])
            a, b = d_r[sel] + BODY_CORNER_MM, d_z + BODY_CORNER_MM
            return (np.hypot(np.maximum(a, 0.0), np.maximum(b, 0.0)) + np.minimum(np.maximum(a, b), 0.0)
                    - BODY_CORNER_MM)

        # Discs first (bodies drawn afterwards cut them to the endplates).
        reach = BODY_CORNER_MM + max(ENDPLATE_SUPERIOR_MM, ENDPLATE_INFERIOR_MM)
        for i in range(len(LEVELS) - 1):
            d_top, d_bot = LEVELS[i][2], LEVELS[i + 1][1]
            sel = np.flatnonzero((zs <= d_top + reach) & (zs > d_bot - reach) & (np.abs(us) < 14.0) & (ax_ < 9.5))
            if sel.size == 0:
                continue
            u1, x1, z1 = us[sel], xs[sel], zs[sel]
            bulge = self.pathology.bulge_mm if i in self.pathology.disc_bulge_levels else 0.0
            mid = 0.5 * (d_top + d_bot)
            hz = 0.5 * (d_top - d_bot)
            half_ap = np.where(u1 > 0, 8.5 + bulge * np.clip(1 - ((z1 - mid) / hz) ** 2, 0.0, None), 8.5)
            disc = (u1 / half_ap) ** 4 + (x1 / 9.0) ** 4 <= 1.0
            sel, u1, x1, z1 = sel[disc], u1[disc], x1[disc], z1[disc]
            ls[sel] = Tissue.DISC_ANNULUS
            vs[sel] = 2 * i + 1
            # Nucleus: an ellipsoid as tall as the disc's centre (biconvex).
            mid_c = mid + 0.5 * (ENDPLATE_INFERIOR_MM - ENDPLATE_SUPERIOR_MM)
            hz_c = hz + 0.5 * (ENDPLATE_INFERIOR_MM + ENDPLATE_SUPERIOR_MM)
            nucleus = (u1 / 5.0) ** 2 + (x1 / 6.0) ** 2 + ((z1 - mid_c) / (0.6 * hz_c)) ** 2 <= 1.0
            ls[sel[nucleus]] = Tissue.DEGENERATED_NUCLEUS if i in self.degenerated_discs else Tissue.DISC_NUCLEUS

        canal_back = 9.0 + self.canal_ap_mm
        for i, (name, top, bottom) in enumerate(LEVELS):
            # Body (and dens).
            z_hi = top + (15.0 if i == 0 else UNCINATE_MM + 0.1)
            sel = np.flatnonzero((zs <= z_hi) & (zs > bottom - 0.1) & (np.abs(us) < 8.1) & (ax_ < 9.1))
            if sel.size:
                sdf = rounded_box(i, sel)
                bone, marrow = sdf <= 0.0, sdf <= -CORTEX_MM
                if i == 0:  # dens (odontoid): a peg with a waist and a rounded apex, tilted back
                    zd = zs[sel] - top
                    rd = 5.0 - 0.6 * np.exp(-(((zd - 2.5) / 2.0) ** 2))
                    rd = np.where(zd > 7.0, 5.0 * np.sqrt(np.clip(1.0 - ((zd - 7.0) / 7.0) ** 2, 0.0, None)), rd)
                    d_d = np.hypot(us[sel] - 0.8 - 0.12 * np.clip(zd, 0.0, None), xs[sel]) - rd
                    bone |= (d_d <= 0.0) & (zd > -2.0) & (zd < 14.0)
                    marrow |= (d_d <= -CORTEX_MM) & (zd > -0.6) & (zd < 12.9)
                ls[sel[bone]] = Tissue.CORTICAL_BONE
                ls[sel[marrow & bone]] = Tissue.MARROW
                vs[sel[bone]] = 2 * i
            # Posterior elements: pedicles, lateral masses, lamina, spinous process.
            sel = np.flatnonzero((zs <= top - 3.0 + 0.1) & (zs > bottom - 3.0 - 16.0) & (us > 7.0) & ins)
            if sel.size == 0:
                continue
            u1, x1, z1, ax1 = us[sel], xs[sel], zs[sel], ax_[sel]
            pz = (z1 <= top - 3.0) & (z1 > bottom - 3.0)
            pedicle = pz & (ax1 > 10.5) & (ax1 < 14.0) & (u1 > 7.0) & (u1 < 21.0)
            lateral_mass = pz & (ax1 >= 12.0) & (ax1 < 22.0) & (u1 > 12.0) & (u1 < 26.0)
            lamina = pz & (ax1 < 15.0) & (u1 > canal_back + 1.5) & (u1 < canal_back + 6.0)
            sp_len = 30.0 if name in ("C7", "T1") else 18.0
            su = u1 - (canal_back + 6.0)
            zsu = z1 + 0.5 * su
            spinous = (ax1 < 3.0) & (su >= 0) & (su < sp_len) & (zsu <= top - 4.0) & (zsu > bottom - 1.0)
            post = pedicle | lateral_mass | lamina | spinous
            ls[sel[post]] = Tissue.CORTICAL_BONE
            post_core = post & (
                (pedicle & (np.abs(ax1 - 12.25) < 1.0))
                | (lateral_mass & (np.abs(ax1 - 17.0) < 3.5) & (np.abs(u1 - 19.0) < 5.0))
                | (spinous & (ax1 < 1.8) & (zsu <= top - 5.0) & (zsu > bottom))
            )
            ls[sel[post_core]] = Tissue.MARROW

        lab.reshape(-1)[idx] = ls
        level.reshape(-1)[idx] = vs

    def texture_field(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Smooth multiplicative tissue heterogeneity (about +/-5 %), same in every plane."""
        t = np.zeros(x.shape, dtype=np.float32)
        for kx, ky, kz, ph, amp in self.texture:
            t += np.float32(amp) * np.cos(kx * x + ky * y + kz * z + ph).astype(np.float32)
        return 1.0 + t


    def tissue_texture(self, points: np.ndarray, fractions: np.ndarray, plane: PlaneGeometry | None = None) -> np.ndarray:
        """Multiplicative tissue texture ``1 + sum_t f_t m_t`` ``(rows, cols)`` float32 at
        ``points`` ``(3, rows, cols)`` mm, weighted by the tissue ``fractions``.

        ``m_t`` is zero where a tissue is absent, so air stays exactly zero. Textures
        (deterministic per ``seed``, fixed in patient space, so every plane cuts the same
        3-D object):

        - marrow: trabecular, a band-pass random field (wavelengths 1.4-3.5 mm), mostly
          vertical trabeculae with some horizontal plates;
        - muscle (and, at half strength, prevertebral soft tissue): fibre striation
          across the cranio-caudal fibres (1.3-2.6 mm) and fascicle bundles (4-9 mm);
        - fat: lobules (6-14 mm) with thin darker fibrous septa.

        With ``plane`` the object is what that plane's pixels see: each plane wave is
        averaged over the slice thickness and the pixel (sinc factors), and waves above
        90 % of the pixel grid's Nyquist frequency are left out; septa are drawn no
        thinner than a pixel and fade where they lie obliquely in the slab. So no texture
        aliases at any matrix.
        """
        rows_cols = points.shape[1:]
        out = np.ones(rows_cols, dtype=np.float32)
        if plane is not None:
            normal, thick = plane.normal, plane.thickness
            dirs, spacing = (plane.col_dir, plane.row_dir), (plane.spacing[0], plane.spacing[1])
        else:
            normal, thick, dirs, spacing = np.array([0.0, 0.0, 1.0]), 0.0, None, (0.0, 0.0)

        def factor(k: np.ndarray) -> np.ndarray:
            """Slab and pixel averaging of plane waves ``k`` (n, 3) rad/mm, band limit."""
            f = np.sinc(k @ normal * thick / (2 * np.pi))
            if dirs is not None:
                for d, sp in zip(dirs, spacing):
                    kd = k @ d
                    f = f * np.sinc(kd * sp / (2 * np.pi)) * (np.abs(kd) < 0.9 * np.pi / sp)
            return f.astype(np.float32)

        def field(kind: str, p: np.ndarray, gradient: bool = False):
            k, ph, amp = _texture_waves(self.seed, kind)
            a = amp * (1.0 if gradient else factor(k))
            keep = np.flatnonzero(a != 0)
            arg = p.T @ k[keep].T.astype(np.float32) + ph[keep]  # (n_points, n_waves)
            g = np.cos(arg) @ a[keep]
            if not gradient:
                return g
            return g, -(np.sin(arg) * a[keep]) @ k[keep].astype(np.float32)  # (n_points, 3)

        flat = fractions.reshape(fractions.shape[0], -1)
        pts = points.reshape(3, -1).astype(np.float32)
        total = np.zeros(flat.shape[1], dtype=np.float32)

        sel = np.flatnonzero(flat[Tissue.MARROW] > 0)
        if sel.size:
            total[sel] += flat[Tissue.MARROW, sel] * MARROW_TEXTURE * field("marrow", pts[:, sel])
        soft = flat[Tissue.MUSCLE] + 0.5 * flat[Tissue.SOFT_TISSUE]
        sel = np.flatnonzero(soft > 0)
        if sel.size:
            p = pts[:, sel]
            m = MUSCLE_STRIATION * field("striation", p) + MUSCLE_BUNDLES * field("bundles", p)
            total[sel] += soft[sel] * m
        sel = np.flatnonzero(flat[Tissue.FAT] > 0)
        if sel.size:
            p = pts[:, sel]
            g, grad = field("lobules", p, gradient=True)
            # Septa: the zero set of the lobule field, drawn with an in-plane distance.
            grad_in = grad - (grad @ normal.astype(np.float32))[:, None] * normal.astype(np.float32)[None, :]
            gin = np.sqrt(np.sum(grad_in * grad_in, axis=1))
            gall = np.sqrt(np.sum(grad * grad, axis=1)) + 1e-6
            width = max(SEPTUM_HALF_WIDTH_MM, max(spacing))
            septa = np.exp(-((g / (gin + 1e-6) / width) ** 2)) * (gin / gall)
            total[sel] += flat[Tissue.FAT, sel] * (FAT_LOBULES * g - FAT_SEPTA * septa)
        out += total.reshape(rows_cols)
        return out


@dataclass(frozen=True)
class PlaneGeometry:
    """Pixel grid of one image plane in patient coordinates (mm).

    Pixel ``(r, c)`` centre is at ``origin + c * spacing[1] * row_dir + r * spacing[0] * col_dir``
    (``origin`` is DICOM ImagePositionPatient, ``row_dir``/``col_dir`` ImageOrientationPatient).
    """

    origin: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    shape: tuple[int, int]
    spacing: tuple[float, float]  # (between rows, between columns) mm = DICOM PixelSpacing
    thickness: float

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)


def sagittal_geometry(n_slices: int = 13, matrix: int = 512, fov_mm: float = 240.0,
                      thickness: float = 3.0, gap: float = 0.3, x_centre: float = 0.0) -> list[PlaneGeometry]:
    """Sagittal stack from patient right to left; rows run anterior to posterior."""
    sp = fov_mm / matrix
    planes = []
    for k in range(n_slices):
        x = x_centre + (k - (n_slices - 1) / 2.0) * (thickness + gap)
        origin = np.array([x, -125.0 + sp / 2, 125.0 - sp / 2])
        planes.append(PlaneGeometry(origin, np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0]),
                                    (matrix, matrix), (sp, sp), thickness))
    return planes


def axial_geometry(n_slices: int = 24, matrix: int = 320, fov_mm: float = 180.0,
                   thickness: float = 3.0, gap: float = 0.5, z_centre: float = -20.0) -> list[PlaneGeometry]:
    """Axial stack from head to feet through C3-C7; rows run right to left."""
    sp = fov_mm / matrix
    planes = []
    for k in range(n_slices):
        z = z_centre + ((n_slices - 1) / 2.0 - k) * (thickness + gap)
        origin = np.array([-90.0 + sp / 2, -80.0 + sp / 2, z])
        planes.append(PlaneGeometry(origin, np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]),
                                    (matrix, matrix), (sp, sp), thickness))
    return planes


@dataclass
class RenderedPlane:
    """Tissue fractions ``(N_TISSUES, rows, cols)`` float32, the dominant label and level
    ``(rows, cols)``, and the texture field ``(rows, cols)``."""

    fractions: np.ndarray
    label: np.ndarray
    level: np.ndarray
    texture: np.ndarray


def render_plane(patient: PhantomPatient, plane: PlaneGeometry, inplane: int = 1, through: int = 3) -> RenderedPlane:
    """Partial-volume rendering with ``inplane**2 * through`` samples per pixel."""
    rows, cols = plane.shape
    sub = (np.arange(inplane) + 0.5) / inplane - 0.5
    thr = (np.arange(through) + 0.5) / through - 0.5
    r = (np.arange(rows)[:, None] + sub[None, :]).reshape(-1)  # rows*inplane
    c = (np.arange(cols)[:, None] + sub[None, :]).reshape(-1)
    counts = np.zeros((N_TISSUES, rows, cols), dtype=np.float32)
    centre_label = centre_level = None
    for t in thr:
        off = plane.origin + t * plane.thickness * plane.normal
        pts = (off[:, None, None]
               + plane.col_dir[:, None, None] * (r[None, :, None] * plane.spacing[0])
               + plane.row_dir[:, None, None] * (c[None, None, :] * plane.spacing[1])).astype(np.float32)
        lab, lev = patient.labels(pts[0], pts[1], pts[2])
        onehot_idx = lab.reshape(rows, inplane, cols, inplane)
        for tissue in np.unique(lab):
            counts[tissue] += (onehot_idx == tissue).sum(axis=(1, 3), dtype=np.float32)
        if centre_label is None or abs(t) < 1e-9 or (through % 2 == 0 and t == thr[through // 2]):
            centre_label = lab[inplane // 2 :: inplane, inplane // 2 :: inplane]
            centre_level = lev[inplane // 2 :: inplane, inplane // 2 :: inplane]
    fractions = counts / float(inplane * inplane * through)
    pts = plane_points(plane)
    texture = patient.texture_field(pts[0], pts[1], pts[2]) * patient.tissue_texture(pts, fractions, plane)
    return RenderedPlane(fractions, centre_label, centre_level, texture)


def _tissue_signals(patient: PhantomPatient, contrast: Contrast) -> np.ndarray:
    """Signal of each tissue ``(N_TISSUES,)`` for a contrast (spin echo, water + fat)."""
    out = np.zeros(N_TISSUES, dtype=np.float32)
    tr, te = contrast.repetition_time_ms, contrast.echo_time_ms
    pd_f, t1_f, t2_f = _FAT
    fat_signal = pd_f * (1 - np.exp(-tr / t1_f)) * np.exp(-te / t2_f)
    for tissue, (pd, t1, t2, ff, gd) in _TISSUE_PARAMETERS.items():
        if tissue == Tissue.MARROW:
            ff = patient.marrow_fat_fraction
        if contrast.contrast_enhanced and gd > 0:
            t1 = 1.0 / (1.0 / t1 + _GADOBUTROL_R1 * gd)
        water = pd * (1 - np.exp(-tr / t1)) * np.exp(-te / t2)
        if contrast.image == "water":
            s = (1 - ff) * water
        else:
            s = (1 - ff) * water + ff * fat_signal
        out[tissue] = s
    return out


def contrast_image(patient: PhantomPatient, rendered: RenderedPlane, contrast: Contrast,
                   plane: PlaneGeometry | None = None) -> np.ndarray:
    """Clean magnitude object ``(rows, cols)`` float32 for one contrast.

    A posterior surface-coil sensitivity (smooth, stronger near the back of the neck) is
    applied when ``plane`` is given.
    """
    signals = _tissue_signals(patient, contrast)
    img = np.tensordot(signals, rendered.fractions, axes=(0, 0)).astype(np.float32)
    img *= rendered.texture
    if plane is not None:
        pts = plane_points(plane)
        dist_to_coil = np.clip(130.0 - pts[1], 10.0, None)  # coil behind the neck at y ~ 130 mm
        img *= (0.55 + 0.45 * np.exp(-dist_to_coil / 120.0) / np.exp(-10.0 / 120.0)).astype(np.float32)
    return img


def training_objects(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """``n`` clean phantom objects (sagittal 512x512 or axial 320x320, random contrast and
    patient), scaled to about 0..1, for training the model."""
    out = []
    contrast_names = list(CONTRASTS)
    for _ in range(n):
        patient = PhantomPatient.from_seed(int(rng.integers(10_000, 2**31 - 1)), pathology="all" if rng.random() < 0.5 else "none")
        if rng.random() < 0.6:
            planes = sagittal_geometry(x_centre=float(rng.uniform(-3, 3)))
        else:
            planes = axial_geometry(z_centre=float(rng.uniform(-40, 0)))
        plane = planes[int(rng.integers(0, len(planes)))]
        rendered = render_plane(patient, plane, inplane=2, through=2)
        img = contrast_image(patient, rendered, CONTRASTS[contrast_names[int(rng.integers(0, len(contrast_names)))]], plane)
        out.append(img / max(float(np.percentile(img, 99.5)), 1e-6))
    return out


#: Level index in ``RenderedPlane.level``: vertebra i of LEVELS -> 2 i, the disc below it -> 2 i + 1.
C3_LEVEL, C3_C4_DISC_LEVEL = 2, 3
DISC_TISSUES = (Tissue.DISC_NUCLEUS, Tissue.DISC_ANNULUS, Tissue.DEGENERATED_NUCLEUS)


def c3_rois(label: np.ndarray, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The study's ROIs as the phantom knows them: boolean ``(rows, cols)`` masks of the C3
    vertebral marrow and the C3-C4 disc, from a rendered plane's ``label`` and ``level``."""
    marrow = (label == Tissue.MARROW) & (level == C3_LEVEL)
    disc = np.isin(label, DISC_TISSUES) & (level == C3_C4_DISC_LEVEL)
    return marrow, disc


def plane_points(plane: PlaneGeometry) -> np.ndarray:
    """Patient coordinates ``(3, rows, cols)`` in mm of the pixel centres of a plane."""
    rows, cols = plane.shape
    return (plane.origin[:, None, None]
            + plane.col_dir[:, None, None] * (np.arange(rows)[None, :, None] * plane.spacing[0])
            + plane.row_dir[:, None, None] * (np.arange(cols)[None, None, :] * plane.spacing[1]))


def swallowing_weight(patient: PhantomPatient, plane: PlaneGeometry) -> np.ndarray:
    """Where swallowing moves tissue: pharynx, larynx and the anterior neck around them,
    ``(rows, cols)`` in [0, 1]; zero over the spine and cord."""
    x, y, z = plane_points(plane)
    u = y - patient.body_centre_y(z)
    airway_c = -9.0 - np.where(z > -8.0, 4.0, 13.0) - 7.0
    w = np.exp(-(((u - airway_c) / 14.0) ** 2) - (x / 30.0) ** 2)
    w *= 1.0 / (1.0 + np.exp(-(z + 40.0) / 6.0)) * 1.0 / (1.0 + np.exp((z - 65.0) / 6.0))
    w[u > -9.0] = 0.0  # the vertebral column does not move with the larynx
    return w.astype(np.float32)


def swallowing_fill(patient: PhantomPatient, rendered: RenderedPlane, contrast: Contrast,
                    plane: PlaneGeometry) -> np.ndarray:
    """Signal ``(rows, cols)`` where the pharyngeal airway closes during a swallow: the
    air of the pharynx (above the larynx) is replaced by mucosa and bolus."""
    weight = swallowing_weight(patient, plane)
    _, _, z = plane_points(plane)
    # The weight is confined to the pharynx and larynx, well inside the neck.
    air = rendered.fractions[Tissue.AIR] * (weight > 0.3) * (z > -10.0) * (z < 80.0)
    mucosa = _tissue_signals(patient, contrast)[Tissue.MUCOSA]
    return (mucosa * air).astype(np.float32)
