"""ferlab: facial expression recognition by transfer learning.

The public API is small: `Predictor` labels faces with a saved model; the `ferlab` command
(see `ferlab.cli`) trains, compares, evaluates and predicts.
"""

from ferlab._version import __version__
from ferlab.predict import Prediction, Predictor

__all__ = ["Prediction", "Predictor", "__version__"]
