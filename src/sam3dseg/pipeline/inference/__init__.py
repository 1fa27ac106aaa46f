"""Inference: new volumes segmented with a model file (``run_predict``), the predictor, and the files for other tools."""
