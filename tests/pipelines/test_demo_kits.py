"""Parsing Hydrogen drumkit.xml (all three layouts) and .h2song files; loading samples."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from pipelines.demo import kits

NS = 'xmlns="http://www.hydrogen-music.org/drumkit"'

# Newest layout: layers inside <instrumentComponent>, default namespace, single <pan>.
COMPONENT_KIT = f"""<?xml version="1.0" encoding="UTF-8"?>
<drumkit_info {NS}>
 <name>Component Kit</name><author>A. Drummer</author><license>CC0</license>
 <instrumentList>
  <instrument>
   <id>0</id><name>Kick</name><volume>0.9</volume><gain>1.2</gain><pan>-0.5</pan>
   <muteGroup>-1</muteGroup>
   <instrumentComponent><component_id>0</component_id>
    <layer><filename>kick_soft.wav</filename><min>0</min><max>0.5</max><gain>1</gain><pitch>0</pitch></layer>
    <layer><filename>kick_hard.wav</filename><min>0.5</min><max>1</max><gain>0.8</gain><pitch>-2</pitch></layer>
   </instrumentComponent>
  </instrument>
  <instrument>
   <id>3</id><name>Hat Closed</name><muteGroup>1</muteGroup>
   <instrumentComponent><layer><filename>hat.wav</filename><min>0</min><max>1</max></layer></instrumentComponent>
  </instrument>
  <instrument><id>4</id><name>17</name>
   <instrumentComponent><layer><filename>hat.wav</filename></layer></instrumentComponent>
  </instrument>
 </instrumentList>
</drumkit_info>
"""

# Middle layout: <layer> directly in <instrument>, no namespace, pan_L/pan_R, British spelling.
LAYER_KIT = """<drumkit_info>
 <name>Layer Kit</name><licence>GPL</licence>
 <instrumentList>
  <instrument><id>0</id><name>Snare Rock</name><pan_L>1</pan_L><pan_R>0.5</pan_R>
   <layer><filename>snare.wav</filename><min>0</min><max>1</max><gain>0.7</gain></layer>
  </instrument>
  <instrument><id>1</id><name>Tom Low</name>
   <layer><filename>missing.wav</filename><min>0</min><max>1</max></layer>
  </instrument>
 </instrumentList>
</drumkit_info>
"""

# Oldest layout: one <filename> per instrument.
OLD_KIT = """<drumkit_info><name>Old Kit</name><author>B</author>
 <instrumentList>
  <instrument><id>0</id><filename>kick.flac</filename><name>Kick 1</name><volume>0.5</volume>
   <pan_L>0.25</pan_L><pan_R>1</pan_R></instrument>
 </instrumentList></drumkit_info>
"""


def _wav(path, seconds=0.1, sr=44100, value=0.5, channels=1):
    data = np.full((int(seconds * sr), channels), value, dtype=np.float32)
    sf.write(str(path), data, sr)


@pytest.fixture
def kit_dirs(tmp_path):
    comp = tmp_path / "Component Kit"
    comp.mkdir()
    (comp / "drumkit.xml").write_text(COMPONENT_KIT)
    for name in ("kick_soft.wav", "kick_hard.wav", "hat.wav"):
        _wav(comp / name)
    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "drumkit.xml").write_text(LAYER_KIT)
    _wav(layer / "snare.wav")
    old = tmp_path / "old"
    old.mkdir()
    (old / "drumkit.xml").write_text(OLD_KIT)
    sf.write(str(old / "kick.flac"), np.zeros((4800, 2), dtype=np.float32), 48000)
    return comp, layer, old


class TestDrumkitXml:
    def test_component_layout_with_namespace(self, kit_dirs):
        kit = kits.parse_drumkit_xml(kit_dirs[0] / "drumkit.xml")
        assert (kit.name, kit.author, kit.licence) == ("Component Kit", "A. Drummer", "CC0")
        assert [i.name for i in kit.instruments] == ["Kick", "Hat Closed"]  # "17" has no role
        kick = kit.instruments[0]
        assert (kick.id, kick.role, kick.volume, kick.gain, kick.pan) == (0, "kick", 0.9, 1.2, -0.5)
        assert [(lay.filename, lay.min_velocity, lay.max_velocity) for lay in kick.layers] == [
            ("kick_soft.wav", 0.0, 0.5),
            ("kick_hard.wav", 0.5, 1.0),
        ]
        assert (kick.layers[1].gain, kick.layers[1].pitch) == (0.8, -2.0)
        assert kit.instruments[1].mute_group == 1
        assert kit.n_samples == 3

    def test_layer_layout_and_missing_files(self, kit_dirs):
        kit = kits.parse_drumkit_xml(kit_dirs[1] / "drumkit.xml")
        assert kit.licence == "GPL"
        (snare,) = kit.instruments  # the tom's only sample is missing: dropped
        assert snare.role == "snare" and snare.layers[0].gain == 0.7
        assert snare.pan == pytest.approx(-0.5)  # right channel at half: panned left

    def test_old_single_file_layout(self, kit_dirs):
        kit = kits.parse_drumkit_xml(kit_dirs[2] / "drumkit.xml")
        (kick,) = kit.instruments
        assert kick.layers == (kits.Layer("kick.flac", 0.0, 1.0, 1.0, 0.0),)
        assert kick.pan == pytest.approx(0.75) and kick.volume == 0.5
        assert kit.licence == "unknown"

    def test_not_a_kit(self, tmp_path):
        bad = tmp_path / "drumkit.xml"
        bad.write_text("<song><bpm>120</bpm></song>")
        with pytest.raises(ValueError, match="expected <drumkit_info>"):
            kits.parse_drumkit_xml(bad)
        bad.write_text("<drumkit_info><name>unclosed")
        with pytest.raises(ValueError, match="not valid XML"):
            kits.parse_drumkit_xml(bad)

    def test_debian_copyright_overrides_licence(self, kit_dirs, tmp_path):
        copyright_file = tmp_path / "copyright"
        copyright_file.write_text(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
            "Files:\n drumkits/Component?Kit.h2drumkit\n drumkits/layer.h2drumkit\n"
            "Copyright: someone\nLicense: GPL-2+\n\n"
            "Files: drumkits/old.h2drumkit\nCopyright: x\nLicense: CC-BY-3.0\n"
        )
        loaded, errors = kits.load_kits(list(kit_dirs), [copyright_file])
        assert errors == {}
        assert {k.name: k.licence for k in loaded} == {
            "Component Kit": "GPL-2+",
            "Layer Kit": "GPL-2+",
            "Old Kit": "CC-BY-3.0",
        }

    def test_layer_choice_and_fallback_roles(self, kit_dirs):
        kit = kits.parse_drumkit_xml(kit_dirs[0] / "drumkit.xml")
        kick = kit.instruments[0]
        assert kick.layer_for(0.2).filename == "kick_soft.wav"
        assert kick.layer_for(0.9).filename == "kick_hard.wav"
        assert kit.candidates("hat_open")[0].name == "Hat Closed"  # no open hat: closed stands in
        assert kit.candidates("snare") == [] and not kit.can_play_grooves
        with pytest.raises(ValueError, match="unknown role"):
            kit.candidates("cowbell")


@pytest.mark.parametrize(
    "name, role",
    [
        ("Open HH", "hat_open"), ("Closed HH", "hat_closed"), ("Pedal HH", "hat_pedal"),
        ("Hi-Hat Semiopen (Paiste)", "hat_open"), ("Floor Tom", "tom_low"), ("Tom 1", "tom_high"),
        ("Snare Rimshot", "rim"), ("Cowbell", "perc"), ("Ride Bell", "ride"), ("Djembe1 Bass", "kick"),
        ("c3 - bass drum 1", "kick"), ("Maraca", "shaker"), ("Crash Left", "crash"), ("23", None),
    ],
)  # fmt: skip
def test_role_of(name, role):
    assert kits.role_of(name) == role


def test_load_sample_resamples_and_caches(tmp_path):
    path = tmp_path / "s48.flac"
    t = np.arange(4800) / 48000
    sf.write(str(path), np.sin(2 * np.pi * 1000 * t).astype(np.float32), 48000)  # mono, 0.1 s
    audio = kits.load_sample(str(path))
    assert audio.shape == (2, 4410) and audio.dtype == np.float32
    assert np.array_equal(audio[0], audio[1])  # mono duplicated
    spec = np.abs(np.fft.rfft(audio[0]))
    assert abs(np.fft.rfftfreq(4410, 1 / 44100)[spec.argmax()] - 1000) < 15  # pitch kept
    assert kits.load_sample(str(path)) is audio and not audio.flags.writeable
    empty = tmp_path / "bad.wav"
    empty.write_bytes(b"not audio")
    with pytest.raises(ValueError, match="cannot read sample"):
        kits.load_sample(str(empty))


NEW_SONG = """<?xml version="1.0" encoding="UTF-8"?>
<song><version>1.2.0</version><bpm>100</bpm><name>Tiny</name>
 <instrumentList>
  <instrument><id>0</id><name>Kick</name><drumkit>Component Kit</drumkit></instrument>
  <instrument><id>6</id><name>Hat Closed</name><drumkit>Component Kit</drumkit></instrument>
 </instrumentList>
 <patternList>
  <pattern><name>A</name><size>192</size><noteList>
   <note><position>96</position><leadlag>0.2</leadlag><velocity>0.6</velocity><pan>0.5</pan>
    <instrument>6</instrument></note>
   <note><position>0</position><leadlag>0</leadlag><velocity>0.8</velocity><pan>0</pan>
    <instrument>0</instrument></note>
  </noteList></pattern>
  <pattern><name>B</name><size>96</size><noteList>
   <note><position>48</position><velocity>1</velocity><instrument>0</instrument></note>
  </noteList></pattern>
 </patternList>
 <patternSequence><group><patternID>A</patternID></group><group><patternID>A</patternID>
  <patternID>B</patternID></group></patternSequence>
</song>
"""

# Hydrogen 0.9.3: notes under sequenceList/sequence, pan_L/pan_R per note.
OLD_SONG = """<song><version>0.9.3</version><bpm>90</bpm><name>Old</name>
 <instrumentList><instrument><id>2</id><name>Snare1</name></instrument></instrumentList>
 <patternList><pattern><name>P1</name><size>192</size><sequenceList><sequence><noteList>
  <note><position>48</position><velocity>0.5</velocity><pan_L>1</pan_L><pan_R>1</pan_R>
   <instrument>2</instrument></note>
 </noteList></sequence></sequenceList></pattern></patternList>
 <patternSequence><group><patternID>P1</patternID></group></patternSequence>
</song>
"""


class TestH2Song:
    def test_new_format(self, tmp_path):
        path = tmp_path / "tiny.h2song"
        path.write_text(NEW_SONG)
        song = kits.parse_h2song(path)
        assert (song.name, song.bpm, song.resolution, song.drumkit) == ("Tiny", 100.0, 48, "Component Kit")
        assert song.instruments == {0: "Kick", 6: "Hat Closed"}
        a = song.pattern("A")
        assert a.size == 192 and [n.position for n in a.notes] == [0, 96]  # sorted by position
        assert (a.notes[1].velocity, a.notes[1].pan, a.notes[1].lead_lag, a.notes[1].instrument) == (
            0.6,
            0.5,
            0.2,
            6,
        )
        assert song.pattern("B").size == 96
        assert song.sequence == (("A",), ("A", "B"))
        with pytest.raises(KeyError):
            song.pattern("Z")

    def test_old_format(self, tmp_path):
        path = tmp_path / "old.h2song"
        path.write_text(OLD_SONG)
        song = kits.parse_h2song(path)
        assert song.bpm == 90 and song.drumkit is None
        (note,) = song.pattern("P1").notes
        assert (note.position, note.velocity, note.instrument, note.pan) == (48, 0.5, 2, 0.0)

    def test_bad_tempo(self, tmp_path):
        path = tmp_path / "bad.h2song"
        path.write_text("<song><bpm>0</bpm></song>")
        with pytest.raises(ValueError, match="tempo must be positive"):
            kits.parse_h2song(path)
