"""Exit heads: what decides, after a stage, whether a sample leaves.

* :mod:`.class_means`: streaming class statistics, distances, eq. 4
  normalisation, softmax and the whitened (shared-covariance) variant.
* :mod:`.internal_classifier`: a trained internal classifier, optionally
  boosted by E²CM.
* :mod:`.protocol`: the members every head offers to the router.
"""

from .protocol import ExitHeadProtocol

__all__ = ["ExitHeadProtocol"]
