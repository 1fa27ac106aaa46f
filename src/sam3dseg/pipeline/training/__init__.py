"""Training: the decoder trained on cached features (``run_train``); folds and the samples it draws."""
