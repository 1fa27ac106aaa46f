"""Evaluation: predictions scored against references (``run_evaluate``), and the HTML report."""
