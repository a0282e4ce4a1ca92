"""``mtdeploy targets``: the bundled hardware profiles and where their figures come from."""
from __future__ import annotations

from mtdeploy.targets.profiles import list_profiles


def run(a) -> int:
    for profile in list_profiles():
        print(profile.describe())
    return 0
