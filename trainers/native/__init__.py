"""The native trainer: torch lives here and nowhere else in dp-studio."""
