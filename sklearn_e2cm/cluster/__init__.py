"""Deep embedded clustering (DEC) and DEC with early exits.

:class:`DEC` is Xie, Girshick & Farhadi (2016): an autoencoder is pretrained
to reconstruct its (corrupted) input, k-means on the embedding initialises the
cluster centres, and the encoder and centres are then trained together by
minimising ``KL(P || Q)`` between the Student-t soft assignment ``Q`` and the
sharpened target distribution ``P``.

:class:`DECEarlyExit` adds the early exits of the E²CM paper (Sections III-C
and IV-D): exit heads on frozen prefixes of the large DEC's encoder, trained by
the same procedure, their cluster ids aligned to the large DEC's, and samples
routed with the shared E²CM thresholds, chosen without labels (agreement with
the large DEC).

Modules:

* :mod:`._training`: the DEC training library (networks, pretraining,
  k-means initialisation, self-training, exit heads on frozen prefixes);
* :mod:`._dec`: the :class:`DEC` estimator;
* :mod:`._early_exit`: the :class:`DECEarlyExit` estimator, which routes
  through the stage adapter :class:`sklearn_e2cm.stages._dec.DECStages`.

Torch is imported when an estimator is fitted: importing this package does
not import it.
"""

from ._dec import DEC
from ._early_exit import DECEarlyExit

__all__ = ["DEC", "DECEarlyExit"]
