"""MAP packaging: offline build context for the MONAI Application Package (issue 7)."""
