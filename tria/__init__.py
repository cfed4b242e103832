"""TRIA ("The Rhythm In Anything"): model library - codec, rhythm features, model, training, generation."""

from tria._compat import install_torchaudio_placeholder

install_torchaudio_placeholder()

__version__ = "0.1.0"
