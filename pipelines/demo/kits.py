"""Hydrogen drum kits and songs: parse `drumkit.xml` and `.h2song` files, load samples.

Hydrogen has written three `drumkit.xml` layouts over the years, and all occur in Debian's
`hydrogen-drumkits`:

1. oldest: `<instrument>` holds a single `<filename>` (one sample, full velocity range);
2. middle: `<instrument>` holds `<layer>` elements (filename, min, max, gain, pitch);
3. newest (>= 0.9.7): the layers sit inside `<instrumentComponent>` elements.

Newer files put everything in the default namespace `http://www.hydrogen-music.org/drumkit`,
older ones use none; tags are compared with the namespace stripped. Pan is either `<pan>` in
[-1, 1] or a pair of channel gains `<pan_L>`/`<pan_R>` in [0, 1]; both become one `pan` in
[-1, 1]. The licence tag is spelled `<license>` or `<licence>`.

A `Kit` is the common currency of the demo corpus: real kits carry sample file names, the
procedural kits of `synth.py` carry the audio itself in `Layer.audio`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import logging
import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

log = logging.getLogger(__name__)

SAMPLE_RATE = 44100
# Hydrogen's tick grid: 48 ticks per quarter note, so a 4/4 pattern is 192 ticks long.
TICKS_PER_QUARTER = 48
# A note's lead/lag in [-1, 1] moves it by up to this many ticks (Hydrogen's AudioEngine).
LEAD_LAG_TICKS = 5.0

# Roles are what grooves speak in; kits map their named instruments onto them.
ROLES = (
    "kick", "snare", "rim", "clap", "hat_closed", "hat_pedal", "hat_open",
    "tom_high", "tom_mid", "tom_low", "crash", "ride", "shaker", "perc",
)  # fmt: skip

# When a kit lacks a role, these stand in, in order (a hand-drum kit has no hi-hat, but a
# shaker or a bell keeps the same place in the groove).
ROLE_FALLBACKS: dict[str, tuple[str, ...]] = {
    "kick": ("tom_low",),
    "snare": ("clap", "rim"),
    "rim": ("snare", "perc"),
    "clap": ("snare", "rim"),
    "hat_closed": ("hat_pedal", "shaker", "ride", "perc"),
    "hat_pedal": ("hat_closed", "shaker", "perc"),
    "hat_open": ("hat_closed", "shaker", "ride", "perc"),
    "tom_high": ("tom_mid", "tom_low", "perc"),
    "tom_mid": ("tom_high", "tom_low", "perc"),
    "tom_low": ("tom_mid", "tom_high", "perc"),
    "crash": ("ride", "hat_open"),
    "ride": ("hat_closed", "crash", "shaker"),
    "shaker": ("hat_closed", "perc"),
    "perc": ("rim", "shaker", "hat_closed"),
}

# (role, pattern) in priority order, matched against the lower-cased instrument name.
_ROLE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("hat_pedal", r"(hat|hh).*(pedal|\bpd\b)|pedal.*(hat|hh)"),
    ("hat_open", r"(hat|hh).*(open|\bop\b|semi|swish)|(open|semi).*(hat|hh)|\bohh\b"),
    ("hat_closed", r"hi.?hat|\bhat\b|\bhh\b|hihat"),
    ("kick", r"kick|bass ?drum|\bbd\b|cajon thump|djembe\d* bass|dununba\d* head hit"),
    ("rim", r"rim|stick"),
    ("snare", r"snare|cajon slap|djembe\d* slap"),
    ("clap", r"clap|snap"),
    ("tom_low", r"tom.*(low|floor)|(low|floor).*tom|tom 3"),
    ("tom_high", r"tom.*(hi|high|\b1\b)|(hi|high).*tom"),
    ("tom_mid", r"tom|djembe\d* tone|sangban\d* head hit|kenkeni\d* head hit|conga|bongo"),
    ("crash", r"crash|splash|china|cymbal"),
    ("perc", r"cowbell|clave|wood ?block|agogo|click|waterglass|drum \d"),
    ("ride", r"ride|bell"),
    ("shaker", r"shaker|maraca|tambourine"),
)


def role_of(name: str) -> str | None:
    """Guess the groove role of an instrument from its name (None: not a usable drum)."""
    low = name.lower()
    for role, pattern in _ROLE_PATTERNS:
        if re.search(pattern, low):
            return role
    return None


@dataclasses.dataclass(frozen=True)
class Layer:
    """One velocity layer of an instrument.

    Attributes:
        filename: sample file relative to the kit folder ("" for in-memory audio).
        min_velocity: lowest velocity (0..1) that plays this layer.
        max_velocity: highest velocity (0..1) that plays this layer.
        gain: linear gain of this layer.
        pitch: pitch shift in semitones.
        audio: the sample itself, float32 (2, N) at 44.1 kHz, for procedural kits.
    """

    filename: str
    min_velocity: float = 0.0
    max_velocity: float = 1.0
    gain: float = 1.0
    pitch: float = 0.0
    audio: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class Instrument:
    """One instrument (drum) of a kit.

    Attributes:
        id: Hydrogen's instrument id (songs refer to it).
        name: name from the kit.
        role: groove role (see ROLES), guessed from the name.
        layers: velocity layers, in file order.
        volume: Hydrogen's instrument volume (linear).
        gain: Hydrogen's instrument gain (linear).
        pan: stereo position in [-1 (left), 1 (right)].
        mute_group: instruments sharing a group >= 0 cut each other off (hi-hats).
    """

    id: int
    name: str
    role: str
    layers: tuple[Layer, ...]
    volume: float = 1.0
    gain: float = 1.0
    pan: float = 0.0
    mute_group: int = -1

    def layer_for(self, velocity: float) -> Layer:
        """The layer whose [min, max] velocity range holds `velocity`.

        Hydrogen's ranges touch (one's max is the next one's min), so the first match wins;
        a velocity in a gap goes to the nearest range.
        """
        for layer in self.layers:
            if layer.min_velocity <= velocity <= layer.max_velocity:
                return layer

        def distance(layer: Layer) -> float:
            return min(abs(velocity - layer.min_velocity), abs(velocity - layer.max_velocity))

        return min(self.layers, key=distance)


@dataclasses.dataclass(frozen=True)
class Kit:
    """A drum kit: real (Hydrogen) or procedural.

    Attributes:
        name: kit name.
        author: author credit.
        licence: licence of the samples (rendered audio inherits it).
        instruments: instruments that have at least one playable layer and a role.
        path: folder holding the sample files (None for in-memory kits).
    """

    name: str
    author: str
    licence: str
    instruments: tuple[Instrument, ...]
    path: Path | None = None

    @property
    def n_samples(self) -> int:
        """Number of sample layers over all instruments."""
        return sum(len(i.layers) for i in self.instruments)

    def with_role(self, role: str) -> list[Instrument]:
        """Instruments whose own role is `role` (no fallbacks)."""
        return [i for i in self.instruments if i.role == role]

    def candidates(self, role: str) -> list[Instrument]:
        """Instruments that can play `role`, trying the fallbacks in order."""
        if role not in ROLE_FALLBACKS:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        for r in (role, *ROLE_FALLBACKS[role]):
            found = self.with_role(r)
            if found:
                return found
        return []

    @property
    def can_play_grooves(self) -> bool:
        """True if the kit has something for the backbone of a groove: kick, snare, hat."""
        return all(self.candidates(r) for r in ("kick", "snare", "hat_closed"))


# --------------------------------------------------------------------------- XML helpers


def _strip_namespaces(root: ET.Element) -> ET.Element:
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.split("}", 1)[1]
    return root


def _parse_xml(path: Path) -> ET.Element:
    try:
        return _strip_namespaces(ET.parse(path).getroot())
    except ET.ParseError as exc:
        raise ValueError(f"{path}: not valid XML ({exc})") from exc


def _text(el: ET.Element, tag: str, default: str = "") -> str:
    child = el.find(tag)
    return child.text.strip() if child is not None and child.text else default


def _float(el: ET.Element, tag: str, default: float) -> float:
    try:
        value = float(_text(el, tag, str(default)))
    except ValueError:
        return default
    return value if math.isfinite(value) else default


def _pan(el: ET.Element) -> float:
    """One pan in [-1, 1] from `<pan>` or from the channel-gain pair `<pan_L>`/`<pan_R>`."""
    if el.find("pan") is not None:
        return float(np.clip(_float(el, "pan", 0.0), -1.0, 1.0))
    left, right = _float(el, "pan_L", 1.0), _float(el, "pan_R", 1.0)
    loudest = max(left, right)
    # Inverse of the "ratio" pan law: the louder side stays at 1, the other is 1 - |pan|.
    return 0.0 if loudest <= 0 else float(np.clip((right - left) / loudest, -1.0, 1.0))


def _layers(inst: ET.Element) -> tuple[Layer, ...]:
    # Newest layout: layers of the first component only (the Debian kits have one each;
    # Hydrogen would mix several components, e.g. close and room mics).
    comp = inst.find("instrumentComponent")
    holder = comp if comp is not None else inst
    layers = [
        Layer(
            filename=_text(el, "filename"),
            min_velocity=_float(el, "min", 0.0),
            max_velocity=_float(el, "max", 1.0),
            gain=_float(el, "gain", 1.0),
            pitch=_float(el, "pitch", 0.0),
        )
        for el in holder.findall("layer")
        if _text(el, "filename")
    ]
    if not layers and _text(inst, "filename"):  # oldest layout: one sample per instrument
        layers = [Layer(filename=_text(inst, "filename"))]
    return tuple(layers)


def parse_drumkit_xml(path: str | Path, licence: str | None = None) -> Kit:
    """Parse a Hydrogen `drumkit.xml` (any of the three layouts) into a `Kit`.

    Instruments without a role (see `role_of`), without layers, or whose sample files are
    missing are left out; a missing file is logged.

    Args:
        path: the `drumkit.xml` file.
        licence: overrides the licence written in the file (e.g. Debian's copyright entry).

    Raises:
        ValueError: not XML, or the root is not `<drumkit_info>`.
    """
    path = Path(path)
    root = _parse_xml(path)
    if root.tag != "drumkit_info":
        raise ValueError(f"{path}: root element is <{root.tag}>, expected <drumkit_info>")
    instruments, missing = [], 0
    inst_list = root.find("instrumentList")
    for el in inst_list.findall("instrument") if inst_list is not None else []:
        name, declared = _text(el, "name"), _layers(el)
        role = role_of(name)
        layers = tuple(lay for lay in declared if (path.parent / lay.filename).is_file())
        if role is None:
            continue  # unnamed slots ("17") and effects are not drums
        missing += len(declared) - len(layers)
        if not layers:
            continue
        instruments.append(
            Instrument(
                id=int(_float(el, "id", -1)),
                name=name,
                role=role,
                layers=layers,
                volume=_float(el, "volume", 1.0),
                gain=_float(el, "gain", 1.0),
                pan=_pan(el),
                mute_group=int(_float(el, "muteGroup", -1)),
            )
        )
    if missing:
        log.warning("%s: %d sample files named in the kit are missing", path, missing)
    written = _text(root, "license") or _text(root, "licence")
    return Kit(
        name=_text(root, "name") or path.parent.name,
        author=_text(root, "author"),
        licence=licence or written or "unknown",
        instruments=tuple(instruments),
        path=path.parent,
    )


def debian_licences(copyright_files: Sequence[Path]) -> dict[str, str]:
    """Map kit names to licences from Debian DEP-5 copyright files.

    Each `Files:` stanza lists `drumkits/<kit>.h2drumkit` globs (`?` stands for a space);
    the stanza's `License:` line is the licence the Debian maintainers verified.

    Returns:
        {kit name (as in the archive name): short licence, e.g. "GPL-2+"}.
    """
    out: dict[str, str] = {}
    for path in copyright_files:
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            files = re.search(r"^Files:(.*?)(?=^\S)", stanza + "\nEnd:", re.DOTALL | re.MULTILINE)
            lic = re.search(r"^License:\s*(.+)$", stanza, re.MULTILINE)
            if not files or not lic:
                continue
            for pattern in files.group(1).split():
                if pattern.startswith("drumkits/") and pattern.endswith(".h2drumkit"):
                    out[pattern[len("drumkits/") : -len(".h2drumkit")]] = lic.group(1).strip()
    return out


def _licence_for(folder_name: str, licences: dict[str, str]) -> str | None:
    for pattern, lic in licences.items():
        # "circAfrique v4" is packaged from "circAfrique.h2drumkit": allow a trailing version.
        if fnmatch.fnmatchcase(folder_name, pattern) or fnmatch.fnmatchcase(folder_name, pattern + " *"):
            return lic
    return None


def load_kits(
    kit_dirs: Sequence[Path], copyright_files: Sequence[Path] = ()
) -> tuple[list[Kit], dict[str, str]]:
    """Parse every kit folder; Debian's licence entries override the kit files' free text.

    Returns:
        (kits that parsed, sorted by name; {folder name: error} for those that did not).
    """
    licences = debian_licences(list(copyright_files))
    kits, errors = [], {}
    for folder in sorted(kit_dirs):
        try:
            kit = parse_drumkit_xml(folder / "drumkit.xml", _licence_for(folder.name, licences))
        except (ValueError, OSError) as exc:
            errors[folder.name] = str(exc)
            continue
        kits.append(kit)
    return sorted(kits, key=lambda k: k.name), errors


# --------------------------------------------------------------------------- samples


@functools.lru_cache(maxsize=2048)
def load_sample(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a sample file (wav, flac, aiff) as read-only float32 stereo at `sample_rate`.

    Cached in memory: a kit's samples are read once however many loops use them.

    Returns:
        (2, N) float32; mono files are duplicated to both channels.

    Raises:
        ValueError: unreadable or empty file.
    """
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (N, C)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ValueError(f"{path}: cannot read sample ({exc})") from exc
    if data.shape[0] == 0:
        raise ValueError(f"{path}: empty sample")
    audio = data.T[:2] if data.shape[1] >= 2 else np.repeat(data.T, 2, axis=0)  # (2, N)
    if sr != sample_rate:
        g = math.gcd(sr, sample_rate)
        audio = resample_poly(audio, sample_rate // g, sr // g, axis=-1).astype(np.float32)
    audio = np.ascontiguousarray(np.nan_to_num(audio))
    audio.flags.writeable = False  # shared by the cache: nobody may modify it
    return audio


def layer_audio(kit: Kit, layer: Layer, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The audio of one layer: in-memory for procedural kits, else the cached file. (2, N)."""
    if layer.audio is not None:
        return layer.audio
    if kit.path is None:
        raise ValueError(f"kit {kit.name!r} has no folder and layer {layer.filename!r} has no audio")
    return load_sample(str(kit.path / layer.filename), sample_rate)


# --------------------------------------------------------------------------- songs


@dataclasses.dataclass(frozen=True)
class SongNote:
    """One note of a Hydrogen pattern.

    Attributes:
        position: onset in ticks from the pattern start.
        velocity: 0..1.
        instrument: id in the song's instrument list.
        pan: [-1, 1].
        lead_lag: [-1, 1]; moves the note by up to `LEAD_LAG_TICKS` (negative is early).
    """

    position: int
    velocity: float
    instrument: int
    pan: float = 0.0
    lead_lag: float = 0.0


@dataclasses.dataclass(frozen=True)
class SongPattern:
    """A Hydrogen pattern: a bar-sized grid of notes (`size` ticks, 192 for 4/4)."""

    name: str
    size: int
    notes: tuple[SongNote, ...]


@dataclasses.dataclass(frozen=True)
class Song:
    """A parsed `.h2song`.

    Attributes:
        name: song title.
        bpm: tempo in beats (quarter notes) per minute.
        resolution: ticks per quarter note.
        instruments: {instrument id: name} of the song's own instrument list.
        drumkit: the kit the song was written for, if the file says.
        patterns: all patterns, in file order.
        sequence: pattern names played together in each song position.
    """

    name: str
    bpm: float
    resolution: int
    instruments: dict[int, str]
    drumkit: str | None
    patterns: tuple[SongPattern, ...]
    sequence: tuple[tuple[str, ...], ...]

    def pattern(self, name: str) -> SongPattern:
        """The pattern called `name`."""
        for p in self.patterns:
            if p.name == name:
                return p
        raise KeyError(f"song {self.name!r} has no pattern {name!r}")


def _song_note(el: ET.Element) -> SongNote:
    return SongNote(
        position=int(_float(el, "position", 0)),
        velocity=float(np.clip(_float(el, "velocity", 0.8), 0.0, 1.0)),
        instrument=int(_float(el, "instrument", -1)),
        pan=_pan(el),
        lead_lag=float(np.clip(_float(el, "leadlag", 0.0), -1.0, 1.0)),
    )


def parse_h2song(path: str | Path) -> Song:
    """Parse a Hydrogen `.h2song`: tempo, instrument names, patterns and their sequence.

    Notes are read both from `<pattern><noteList>` (current files) and from
    `<pattern><sequenceList><sequence><noteList>` (files from Hydrogen 0.9.3).

    Raises:
        ValueError: not XML, the root is not `<song>`, or the tempo is not positive.
    """
    path = Path(path)
    root = _parse_xml(path)
    if root.tag != "song":
        raise ValueError(f"{path}: root element is <{root.tag}>, expected <song>")
    bpm = _float(root, "bpm", 120.0)
    if bpm <= 0:
        raise ValueError(f"{path}: tempo must be positive, got {bpm}")
    instruments, kits = {}, set()
    inst_list = root.find("instrumentList")
    for el in inst_list.findall("instrument") if inst_list is not None else []:
        instruments[int(_float(el, "id", -1))] = _text(el, "name")
        if _text(el, "drumkit"):
            kits.add(_text(el, "drumkit"))
    patterns = []
    pat_list = root.find("patternList")
    for el in pat_list.findall("pattern") if pat_list is not None else []:
        notes = tuple(_song_note(n) for n in el.iter("note"))
        size = int(_float(el, "size", 4 * TICKS_PER_QUARTER))
        patterns.append(SongPattern(_text(el, "name"), size, tuple(sorted(notes, key=lambda n: n.position))))
    sequence = tuple(
        tuple((pid.text or "").strip() for pid in group.findall("patternID"))
        for group in root.iterfind("patternSequence/group")
    )
    return Song(
        name=_text(root, "name") or path.stem,
        bpm=bpm,
        resolution=int(_float(root, "resolution", TICKS_PER_QUARTER)),
        instruments=instruments,
        drumkit=next(iter(kits)) if len(kits) == 1 else None,
        patterns=tuple(patterns),
        sequence=sequence,
    )


__all__ = [
    "LEAD_LAG_TICKS",
    "ROLES",
    "ROLE_FALLBACKS",
    "SAMPLE_RATE",
    "TICKS_PER_QUARTER",
    "Instrument",
    "Kit",
    "Layer",
    "Song",
    "SongNote",
    "SongPattern",
    "debian_licences",
    "layer_audio",
    "load_kits",
    "load_sample",
    "parse_drumkit_xml",
    "parse_h2song",
    "role_of",
]
