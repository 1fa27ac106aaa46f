"""Below every stage: files (atomic writes, JSON, tensors, hashes), run time (device, process group),
settings (dataclasses with checked values, YAML, ``key=value``) and plots."""
