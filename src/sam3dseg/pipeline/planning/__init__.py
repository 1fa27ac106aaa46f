"""Planning: the dataset fingerprint and the settings proposed for it (``run_plan``), and the paper's recipes."""
