"""Physics of the acquisition simulator."""
import numpy as np
import pytest

from simulation import acquisition as acq


def _box(shape=(256, 256)):
    img = np.zeros(shape)
    img[80:176, 100:156] = 1.0
    return img


def test_background_noise_matches_rayleigh_expectation():
    rng = np.random.default_rng(0)
    sigma = 0.03
    full = acq.AcquisitionProtocol()  # every k-space sample: image noise SD == sigma
    mag = acq.simulate_acquisition(_box(), full, sigma, rng)
    background = mag[:60, :]
    assert background.mean() == pytest.approx(acq.rayleigh_mean(sigma), rel=0.03)
    assert background.std() == pytest.approx(acq.rayleigh_sd(sigma), rel=0.05)


def test_fewer_averages_raise_noise_by_sqrt_of_ratio():
    p1 = acq.AcquisitionProtocol()
    p2 = acq.AcquisitionProtocol(averages_ratio=0.5)
    m1 = acq.simulate_acquisition(np.zeros((256, 256)), p1, 0.02, np.random.default_rng(1))
    m2 = acq.simulate_acquisition(np.zeros((256, 256)), p2, 0.02, np.random.default_rng(1))
    assert m2.mean() / m1.mean() == pytest.approx(np.sqrt(2.0), rel=0.03)


@pytest.mark.parametrize("pe_axis", [0, 1])
def test_kspace_outside_acquired_band_is_zero_before_noise(pe_axis):
    protocol = acq.DEFAULT_ACCELERATED.with_phase_encode_axis(pe_axis)
    textured = np.random.default_rng(9).random((256, 256))  # energy at every frequency
    _, kspace = acq.simulate_acquisition(textured, protocol, 0.0, np.random.default_rng(0), return_kspace=True)
    lines = acq.acquired_phase_encode_mask(256, protocol)
    energy = np.abs(kspace).sum(axis=1 - pe_axis)
    assert np.all(energy[~lines] == 0)
    assert np.all(energy[lines] > 0)
    assert lines.sum() == round(256 * protocol.phase_encode_fraction)
    assert lines[128]  # the centre of k-space is always acquired


def test_partial_fourier_drops_one_side_of_the_band():
    p = acq.AcquisitionProtocol(phase_encode_fraction=1.0, partial_fourier_fraction=0.625)
    lines = acq.acquired_phase_encode_mask(256, p)
    assert lines.sum() == 160
    assert lines[0] and not lines[-1] and lines[128]


def test_scan_time_ratio_follows_lines_and_averages():
    assert acq.DEFAULT_ACCELERATED.scan_time_ratio(acq.CONVENTIONAL) == pytest.approx(0.5)
    p = acq.CONVENTIONAL.accelerated(phase_encode_factor=0.8, averages_ratio=0.5, partial_fourier_fraction=0.75)
    assert p.scan_time_ratio(acq.CONVENTIONAL) == pytest.approx(0.8 * 0.5 * 0.75)
    # The study: 47-48 % shorter.
    assert 0.45 <= acq.DEFAULT_ACCELERATED.scan_time_ratio(acq.CONVENTIONAL) <= 0.55


def test_accelerated_is_blurrier_along_phase_encode_only():
    img = np.zeros((256, 256))
    img[:, 128] = 1.0  # a thin vertical line: sharp along columns (axis 1)
    img[128, :] += 1.0  # a thin horizontal line: sharp along rows (axis 0)
    p = acq.AcquisitionProtocol(phase_encode_fraction=0.4, phase_encode_axis=1)
    mag = acq.simulate_acquisition(img, p, 0.0, np.random.default_rng(0))
    profile_pe = mag[60, 120:137]  # across the vertical line, along axis 1 = phase encode
    profile_ro = mag[120:137, 60]  # across the horizontal line, along readout
    assert profile_pe.max() < 0.6 * profile_ro.max()


def test_same_seed_same_result():
    a = acq.simulate_acquisition(_box(), acq.DEFAULT_ACCELERATED, 0.05, np.random.default_rng(3))
    b = acq.simulate_acquisition(_box(), acq.DEFAULT_ACCELERATED, 0.05, np.random.default_rng(3))
    c = acq.simulate_acquisition(_box(), acq.DEFAULT_ACCELERATED, 0.05, np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.mark.parametrize("pe_axis", [0, 1])
def test_rigid_motion_ghosts_along_phase_encode_not_readout(pe_axis):
    shape = (256, 256)
    img = np.zeros(shape)
    img[96:160, 96:160] = 1.0
    rng = np.random.default_rng(5)
    n = 32
    t = np.zeros((n, 2))
    t[::2] = [3.0, 3.0]  # alternate shots displaced: strong periodic ghosting
    motion = acq.MotionTrajectory(t, np.zeros(n), np.zeros((n, 2)))
    p = acq.AcquisitionProtocol(phase_encode_axis=pe_axis)
    mag = acq.simulate_acquisition(img, p, 0.0, rng, motion=motion)
    err = np.abs(mag - acq.simulate_acquisition(img, p, 0.0, rng))
    # Background bands beside the object: along phase encode vs along readout.
    along_pe = err[100:156, 5:80] if pe_axis == 1 else err[5:80, 100:156]
    along_ro = err[5:80, 100:156] if pe_axis == 1 else err[100:156, 5:80]
    assert along_pe.mean() > 10 * along_ro.mean()
    assert along_pe.mean() > 0.01


def test_swallowing_moves_only_the_weighted_region():
    shape = (256, 256)
    img = np.zeros(shape)
    img[40:90, 40:90] = 1.0  # "larynx"
    img[150:220, 150:220] = 1.0  # "spine"
    weight = np.zeros(shape)
    weight[20:110, 20:110] = 1.0
    n = 24
    s = np.zeros((n, 2))
    s[8:12] = [6.0, 0.0]
    motion = acq.MotionTrajectory(np.zeros((n, 2)), np.zeros(n), s, weight, "sequential")
    p = acq.AcquisitionProtocol(phase_encode_axis=1)
    moved = acq.simulate_acquisition(img, p, 0.0, np.random.default_rng(0), motion=motion)
    still = acq.simulate_acquisition(img, p, 0.0, np.random.default_rng(0))
    diff = np.abs(moved - still)
    assert diff[40:90, :].mean() > 5 * diff[150:220, :].mean() + 1e-6


def test_random_trajectory_severity_scales_motion():
    rng = np.random.default_rng(0)
    none = acq.random_motion_trajectory(rng, "none", 0.5)
    mild = acq.random_motion_trajectory(np.random.default_rng(1), "mild", 0.5, kind="rigid")
    severe = acq.random_motion_trajectory(np.random.default_rng(1), "severe", 0.5, kind="rigid")
    assert none.is_static()
    assert np.abs(severe.translations_px).max() > 2 * np.abs(mild.translations_px).max() > 0


def test_invalid_protocols_are_refused():
    with pytest.raises(ValueError):
        acq.AcquisitionProtocol(phase_encode_fraction=0.0)
    with pytest.raises(ValueError):
        acq.AcquisitionProtocol(partial_fourier_fraction=0.4)
    with pytest.raises(ValueError):
        acq.AcquisitionProtocol(phase_encode_axis=2)


def test_motion_free_reference_keeps_the_position_of_the_kspace_centre():
    """frozen_at_centre: every shot in the state that acquired most of central k-space. A
    step early in an interleaved scan (most central lines after it) gives a reference in
    the new position, and the artifact (difference, same noise) is the ghosting only:
    much smaller than the shift."""
    n = 16
    obj = np.zeros((128, 128))
    obj[40:90, 50:80] = 1.0
    t = np.zeros((n, 2))
    t[2:] = [0.0, 4.0]  # 4 px along the phase-encode axis (1) from shot 2 on
    motion = acq.MotionTrajectory(t, np.zeros(n), np.zeros((n, 2)), ordering="interleaved")
    frozen = motion.frozen_at_centre(128)
    assert np.allclose(frozen.translations_px, [0.0, 4.0]) and frozen.n_shots == n
    proto = acq.AcquisitionProtocol(phase_encode_axis=1)
    moved = acq.simulate_acquisition(obj, proto, 0.01, np.random.default_rng(3), motion=motion)
    still = acq.simulate_acquisition(obj, proto, 0.01, np.random.default_rng(3), motion=frozen)
    unmoved = acq.simulate_acquisition(obj, proto, 0.01, np.random.default_rng(3))
    artifact = np.sqrt(np.mean((moved - still) ** 2))
    shift = np.sqrt(np.mean((moved - unmoved) ** 2))
    assert 0 < artifact < 0.5 * shift
    # the still reference is the object moved 4 px, without ghosts
    assert np.allclose(still, acq.simulate_acquisition(np.roll(obj, 4, axis=1), proto, 0.01,
                                                       np.random.default_rng(3)), atol=0.02)


def test_shots_spread_over_acquired_lines_only():
    """Scan time goes to the lines the protocol samples: with half the lines acquired, a
    sequential scan's first shot starts at the edge of the acquired band, and a step in
    the first fifth of the scan ghosts the image (it used to fall on lines never sampled)."""
    n_lines, n_shots = 128, 10
    acquired = acq.acquired_phase_encode_mask(n_lines, acq.CONVENTIONAL.accelerated(phase_encode_factor=0.75, averages_ratio=1.0))
    motion = acq.MotionTrajectory(np.zeros((n_shots, 2)), np.zeros(n_shots), np.zeros((n_shots, 2)),
                                  ordering="sequential")
    shot = motion.shot_of_line(n_lines, acquired)
    assert set(shot[acquired]) == set(range(n_shots))
    assert shot[np.flatnonzero(acquired)[0]] == 0 and shot[np.flatnonzero(acquired)[-1]] == n_shots - 1
    np.testing.assert_array_equal(motion.shot_of_line(n_lines), np.arange(n_lines) * n_shots // n_lines)
    with pytest.raises(ValueError):
        motion.shot_of_line(n_lines, np.zeros(n_lines, dtype=bool))
    obj = np.zeros((n_lines, n_lines))
    obj[40:90, 50:80] = 1.0
    t = np.zeros((n_shots, 2))
    t[:2] = [0.0, 4.0]  # shots 0-1 displaced, then back
    step = acq.MotionTrajectory(t, np.zeros(n_shots), np.zeros((n_shots, 2)), ordering="sequential")
    proto = acq.CONVENTIONAL.accelerated(phase_encode_factor=0.75, averages_ratio=1.0).with_phase_encode_axis(1)
    moved = acq.simulate_acquisition(obj, proto, 0.0, np.random.default_rng(0), motion=step)
    still = acq.simulate_acquisition(obj, proto, 0.0, np.random.default_rng(0))
    assert np.sqrt(np.mean((moved - still) ** 2)) > 0.005


def _through_plane_step(n: int = 32) -> acq.MotionTrajectory:
    """Still in-plane; the second half of the shots 3 mm along the slice normal (sequential)."""
    dz = np.zeros(n)
    dz[n // 2:] = 3.0
    return acq.MotionTrajectory(np.zeros((n, 2)), np.zeros(n), np.zeros((n, 2)), ordering="sequential",
                                through_plane_mm=dz)


def test_through_plane_motion_acquires_the_displaced_anatomy_in_its_shots():
    img = _box()
    other = np.zeros_like(img)
    other[80:176, 110:146] = 1.0  # the neighbouring anatomy: a narrower box
    p = acq.AcquisitionProtocol(phase_encode_axis=1)
    still = acq.simulate_acquisition(img, p, 0.0, np.random.default_rng(0))
    same = acq.simulate_acquisition(img, p, 0.0, np.random.default_rng(0), motion=_through_plane_step(),
                                    object_at_offset=lambda mm: img)
    np.testing.assert_allclose(same, still, atol=1e-9)  # moving into identical anatomy leaves no trace
    moved = acq.simulate_acquisition(img, p, 0.0, np.random.default_rng(0), motion=_through_plane_step(),
                                     object_at_offset=lambda mm: other if mm == 3.0 else img)
    err = np.abs(moved - still)
    assert err.max() > 0.05
    # A mix of two objects through k-space halves: the artifact spreads along phase encode (columns).
    assert err[100:156, 5:80].mean() > 5 * err[5:70, 110:146].mean()
    with pytest.raises(ValueError, match="object_at_offset"):
        acq.simulate_acquisition(img, p, 0.0, np.random.default_rng(0), motion=_through_plane_step())


def test_through_plane_draws_keep_the_in_plane_draws_when_off():
    a = acq.random_motion_trajectory(np.random.default_rng(3), "severe", 0.5, kind="rigid", n_shots=24)
    b = acq.random_motion_trajectory(np.random.default_rng(3), "severe", 0.5, kind="rigid", n_shots=24,
                                     through_plane=False)
    c = acq.random_motion_trajectory(np.random.default_rng(3), "severe", 0.5, kind="rigid", n_shots=24,
                                     through_plane=True)
    assert a.through_plane_mm is None and np.array_equal(a.translations_px, b.translations_px)
    assert c.has_through_plane() and np.abs(c.through_plane_mm).max() <= 1.4 * 5.0 * 3  # <= 3 events of 1.4 x 5 mm
    frozen = c.frozen_at_centre(256)
    assert frozen.is_static() is (not np.any(frozen.through_plane_mm) and not np.any(frozen.translations_px)
                                  and not np.any(frozen.rotations_deg))
    assert len(set(frozen.through_plane_mm)) == 1
