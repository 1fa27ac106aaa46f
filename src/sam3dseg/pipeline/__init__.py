"""The stages, in data-flow order, one subpackage each, as nnU-Net lays out its own:

=================  =====================  ==================================================================
stage              entry point            what it does
=================  =====================  ==================================================================
planning/          ``run_plan``           the dataset's fingerprint and the settings proposed for it; recipes
caching/           ``run_cache``          every slice encoded once by the frozen encoder, with its record
training/          ``run_train``          the decoder trained on cached features (folds, samples)
postprocessing/    ``run_postprocess``    keep-the-largest-component decided on validation predictions
inference/         ``run_predict``        new volumes segmented with a model file, and the files for other tools
evaluation/        ``run_evaluate``       Dice, HD95 and NSD of predictions against references, and the report
=================  =====================  ==================================================================

Beside them, modules that several stages share, named for what they hold: ``config`` (every stage's
settings), ``model_file`` (the record training writes and prediction reads), ``windows`` (the depth-window
decoder of validation and prediction) and ``metrics``. Training and prediction never import each other
(``tests/test_layout.py``).
"""
