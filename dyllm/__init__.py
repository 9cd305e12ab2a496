"""dyllm: fast inference for masked diffusion language models (LLaDA, Dream).

`dyllm.load` reads an unmodified Hugging Face checkpoint folder into dyllm's own modules;
`dyllm.generate` runs the models' own samplers over it.
"""

from dyllm.models import DiffusionTransformer, ModelConfig, load, save_pretrained

__version__ = "0.1.0"

__all__ = ["DiffusionTransformer", "ModelConfig", "__version__", "load", "save_pretrained"]
