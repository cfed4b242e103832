"""Make ``descript-audiotools`` importable without torchaudio.

Why: every Linux torchaudio wheel on PyPI is a CUDA build that cannot load beside the CPU torch
wheel, and ``audiotools`` (imported by ``dac``) does ``import torchaudio`` at module level although
DAC's encode/decode never call it. When no torchaudio is installed we register a placeholder
module whose attributes raise a clear error, so ``import dac`` works and any code path that
really needs torchaudio fails loudly instead of silently. With a real torchaudio installed
(e.g. on a GPU machine with a matching CUDA torch) this does nothing.
"""

from __future__ import annotations

import importlib.util
import sys
import types


class _MissingTorchaudio(types.ModuleType):
    __version__ = "0.0.0+placeholder"

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ImportError(
            f"torchaudio.{name} was called, but torchaudio is not installed: this project installs a "
            "placeholder so that descript-audiotools imports (see README, 'Why it is installed this way'). "
            "Install a torchaudio that matches your torch to use this function."
        )


def install_torchaudio_placeholder() -> bool:
    """Register the placeholder if torchaudio is missing. Returns True if it was installed."""
    if "torchaudio" in sys.modules or importlib.util.find_spec("torchaudio") is not None:
        return False
    sys.modules["torchaudio"] = _MissingTorchaudio("torchaudio")
    return True
