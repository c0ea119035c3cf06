"""ptp: Parallel Token Prediction for any Hugging Face causal language model.

``ptp.generate`` is the decoding function (``ptp.generate(model, input_ids, ...)``). The module of
the same name stays importable as before: ``from ptp.generate import generate, GenerationResult``
and ``importlib.import_module("ptp.generate")`` find it in ``sys.modules``; only attribute access
(``import ptp.generate as m``, ``ptp.generate.X``) reaches the function instead.
"""

from .config import SamplingConfig
from .errors import UserError
from .generate import generate
from .student import Student, StudentConfig

__all__ = ["SamplingConfig", "Student", "StudentConfig", "UserError", "generate"]
__version__ = "0.1.0"
