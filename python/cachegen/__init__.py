"""cachegen: compress LLM KV caches and move them fast.

blob = cachegen.encode(kv, level=3)
kv2 = cachegen.decode(blob)
info = cachegen.inspect(blob)
"""

from . import paged
from .api import (
    DEFAULT_MAX_OUTPUT_BYTES,
    FORMAT_VERSION,
    BlobInfo,
    FormatError,
    GroupInfo,
    QuantizedGroup,
    build_info,
    decode,
    encode,
    entropy_stats,
    inspect,
    quantize,
)
from .calibrate import calibrate, refit_importance
from .config import DEFAULT_LEVEL, LEVELS, LOSSLESS, QUANTIZERS, CodecConfig
from .profile import ModelProfile
from .targets import expected_kl, level_for_kl

__version__ = "0.1.0"  # the one version source: pyproject.toml reads it at build time

__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "FORMAT_VERSION",
    "LEVELS",
    "LOSSLESS",
    "QUANTIZERS",
    "BlobInfo",
    "CodecConfig",
    "FormatError",
    "GroupInfo",
    "ModelProfile",
    "QuantizedGroup",
    "build_info",
    "calibrate",
    "refit_importance",
    "decode",
    "encode",
    "entropy_stats",
    "expected_kl",
    "inspect",
    "level_for_kl",
    "paged",
    "quantize",
]
