"""The method's claims, measured (``sam3dseg analyze``): a 3-D self-attention baseline, FLOP and
memory sweeps, gradient forms, Lipschitz bounds, deep supervision, and the report.

Not imported by ``import sam3dseg``; ``sam3dseg.AttentionDecoder`` and
``sam3dseg.run_analysis`` load it on first use.
"""

from .attention import AttentionDecoder
from .measurements import run_analysis

__all__ = ["AttentionDecoder", "run_analysis"]
