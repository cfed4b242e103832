"""Background noise for the rhythm-prompt augmentations (SPEC 5.3, `BackgroundNoise`).

Default corpus: the noise part of OpenSLR 28 (`rirs_noises.zip`, Apache-2.0):
`RIRS_NOISES/pointsource_noises/*.wav` and the isotropic noise recordings in
`RIRS_NOISES/real_rirs_isotropic_noises/` (files with "noise" in their names). To avoid a
second download of the same archive, point `location` at the `rir` source's extracted folder.
MUSAN (`musan/noise/**`, CC-BY-4.0) fits the same adapter with `include: ["musan/noise/*"]`.
"""

from __future__ import annotations

from typing import ClassVar

from pipelines.sources.base import SourceInfo
from pipelines.sources.local_folder import AudioFolderSource


class BackgroundNoise(AudioFolderSource):
    """Every noise recording of the configured archives; one track and one "noise" stem per file."""

    info = SourceInfo(
        name="noise",
        title="Background noise (OpenSLR 28)",
        licence="Apache-2.0",
        tier="isolated",
        role="noise",
        homepage="https://www.openslr.org/28/",
        description="Point-source and isotropic noise recordings mixed into rhythm prompts.",
    )
    default_include: ClassVar[tuple[str, ...]] = (
        "*pointsource_noises/*",
        "*real_rirs_isotropic_noises/*noise*",
    )
