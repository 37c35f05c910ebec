"""The inference-variant check (models.evaluation.variant_check): both variants on the same inputs."""
import pytest

from models.evaluation.variant_check import compare_variants


def test_precision_variants_run_on_the_same_slices_and_differ_by_rounding_only():
    result = compare_variants("precision", quick=True)  # the selection source at its first matrix
    for label in ("all", "R=2 SENSE"):
        f32, bf16 = result["summary"][label]["float32"], result["summary"][label]["bfloat16"]
        assert f32["slices"] == bf16["slices"] > 0
        assert abs(f32["body_ssim"] - bf16["body_ssim"]) < 0.001
    assert result["summary"]["all"]["float32"]["slices"] == len(result["rows"])
    # the variants really are different computations, yet close
    assert 0.0 < result["max_slice_body_ssim_difference"] < 0.01
    assert all({"product_float32", "product_bfloat16", "accelerated", "conventional"} <= set(r["metrics"])
               for r in result["rows"])


def test_an_unknown_variant_set_is_refused():
    with pytest.raises(ValueError, match="unknown variant set"):
        compare_variants("fp8")
