"""The embedded demo corpus: drum loops rendered from real sampled kits, and rhythm gestures.

So that the whole system runs on a fresh machine with no dataset download, the demo corpus is
made here: Debian's Hydrogen kit packages (16 multi-sampled kits, fetched with
`apt-get download`, no root) or, without apt, procedural kits play seeded grooves.

    from pipelines.demo import build_demo_corpus
    manifest = build_demo_corpus("data/demo")          # ~4 min of loops + 6 gestures, cached

Modules, bottom up:

* `debs`     - `apt-get download`, `.deb` (ar + tar) and `.h2drumkit` unpacking, safely, cached;
* `kits`     - Hydrogen `drumkit.xml` / `.h2song` parsing, `Kit` dataclasses, sample loading;
* `synth`    - procedural kits (the fallback), same `Kit` type;
* `grooves`  - seeded genre grooves and song patterns as `NoteEvent`s;
* `render`   - events + kit -> stereo 44.1 kHz loop (layers, pan, chokes, room);
* `gestures` - the same grooves played with claps, knocks and mouth sounds (rhythm prompts);
* `build`    - the corpus on disk with `manifest.json`.

The catalogue sees the loops through `pipelines.sources.hydrogen`.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> defining module. Imported on first use (PEP 562), so that
# `python -m pipelines.demo.build` does not import its own module twice.
_EXPORTS = {
    "build_demo_corpus": "build",
    "gesture_kit": "gestures",
    "render_gesture": "gestures",
    "GENRES": "grooves",
    "Groove": "grooves",
    "NoteEvent": "grooves",
    "generate_groove": "grooves",
    "song_groove": "grooves",
    "Instrument": "kits",
    "Kit": "kits",
    "Layer": "kits",
    "Song": "kits",
    "load_kits": "kits",
    "parse_drumkit_xml": "kits",
    "parse_h2song": "kits",
    "RenderConfig": "render",
    "RenderedLoop": "render",
    "render_events": "render",
    "procedural_kit": "synth",
    "procedural_kits": "synth",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipelines.demo' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pipelines.demo.{_EXPORTS[name]}"), name)


__all__ = [
    "GENRES",
    "Groove",
    "Instrument",
    "Kit",
    "Layer",
    "NoteEvent",
    "RenderConfig",
    "RenderedLoop",
    "Song",
    "build_demo_corpus",
    "generate_groove",
    "gesture_kit",
    "load_kits",
    "parse_drumkit_xml",
    "parse_h2song",
    "procedural_kit",
    "procedural_kits",
    "render_events",
    "render_gesture",
    "song_groove",
]
