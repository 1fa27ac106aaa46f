"""Post-processing: keep the largest connected component where validation says it helps (``run_postprocess``)."""
