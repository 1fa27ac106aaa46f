"""The stages, in data-flow order: cache -> train -> predict -> evaluate, with their settings,
samples, model file, window decoder and metrics. Training and prediction never import each other."""
