"""dyllm: fast inference for masked diffusion language models (LLaDA, Dream).

`dyllm.load` reads an unmodified Hugging Face checkpoint folder (or a built-in reference model)
into dyllm's own modules; `dyllm.generate` runs the models' own samplers over it, each step dense
or sparse as a `SaliencyPolicy` plans it (`dyllm.policies`).
"""

from dyllm.api import generate, load
from dyllm.generation import GenerationConfig, GenerationResult
from dyllm.models import DiffusionTransformer, ModelConfig, save_pretrained

__version__ = "0.1.0"

__all__ = [
    "DiffusionTransformer",
    "GenerationConfig",
    "GenerationResult",
    "ModelConfig",
    "__version__",
    "generate",
    "load",
    "save_pretrained",
]
