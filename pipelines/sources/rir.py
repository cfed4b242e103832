"""Room impulse responses for the rhythm-prompt augmentations (SPEC 5.3, `RoomImpulseResponse`).

Default corpus: OpenSLR 28 "Room Impulse Response and Noise Database" (`rirs_noises.zip`,
Apache-2.0), laid out as `RIRS_NOISES/simulated_rirs/<size>room/RoomNNN/*.wav` and
`RIRS_NOISES/real_rirs_isotropic_noises/*.wav` (where the isotropic noise recordings have
"noise" in their names and belong to the `noise` source instead). Other RIR collections (for
example the MIT IR Survey) can be added as more `files` with their own `include` patterns.
"""

from __future__ import annotations

from typing import ClassVar

from pipelines.sources.base import SourceInfo
from pipelines.sources.local_folder import AudioFolderSource


class RoomImpulseResponses(AudioFolderSource):
    """Every RIR wav of the configured archives; one track and one "rir" stem per file."""

    info = SourceInfo(
        name="rir",
        title="Room impulse responses (OpenSLR 28)",
        licence="Apache-2.0",
        tier="isolated",
        role="rir",
        homepage="https://www.openslr.org/28/",
        description="Simulated and real room impulse responses used to reverberate rhythm prompts.",
    )
    default_include: ClassVar[tuple[str, ...]] = (
        "*simulated_rirs/*",
        "*real_rirs_isotropic_noises/*",
    )

    def wanted(self, rel: str) -> bool:
        # The real-RIR folder also holds isotropic noise recordings: those are noise, not RIRs.
        name = rel.rsplit("/", 1)[-1].lower()
        return super().wanted(rel) and "noise" not in name
