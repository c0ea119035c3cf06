"""ptp: Parallel Token Prediction for any Hugging Face causal language model."""

from .config import SamplingConfig
from .errors import UserError
from .student import Student, StudentConfig

__all__ = ["SamplingConfig", "Student", "StudentConfig", "UserError"]
__version__ = "0.1.0"
