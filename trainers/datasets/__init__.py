"""Dataset tooling the studio runs on a user's folder: torch-free, no import of the studio."""
