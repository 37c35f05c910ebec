"""Training of the enhancement network and the QC motion detector (outside the MAP)."""
