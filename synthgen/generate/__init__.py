"""Generate stage: image backends that add ``image`` (H, W, 3) uint8 RGB to each sample.

The backends and :func:`build_image_backend`: :mod:`.backends`; the checks that every model a
recipe needs is there before any work: :mod:`.model_check`; the ControlNet pipelines:
:mod:`.controlnet`; weight-free shaded images: :mod:`.shaded`.
"""

from synthgen.generate.backends import ImageBackend, build_image_backend
from synthgen.generate.model_check import check_backend_models

__all__ = ["ImageBackend", "build_image_backend", "check_backend_models"]
