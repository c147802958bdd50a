"""Profiles: named, versioned diffusion-pipe config pairs in the user data folder (torch-free)."""

from trainers.profiles.diff import DiffEntry, diff_profiles, diff_texts
from trainers.profiles.store import (
    ProfileError,
    ProfileInfo,
    ProfileStore,
    ProfileTexts,
    ProfileVersion,
    SaveReport,
    slugify,
)
from trainers.profiles.transfer import export_zip, import_path, import_toml, import_zip

__all__ = [
    "DiffEntry", "ProfileError", "ProfileInfo", "ProfileStore", "ProfileTexts", "ProfileVersion", "SaveReport",
    "diff_profiles", "diff_texts", "export_zip", "import_path", "import_toml", "import_zip", "slugify",
]
