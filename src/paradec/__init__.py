"""paradec: many tokens per model call, exactly the model's output."""

from .engine import Engine, Generation, GenerationConfig, Stream, load
from .errors import ParadecError
from .prefix import PrefixCache
from .proposers import METHODS
from .sampling import SamplingParams
from .version import __version__

__all__ = ["load", "Engine", "Generation", "GenerationConfig", "Stream", "ParadecError", "PrefixCache", "SamplingParams", "METHODS", "__version__"]
