"""dp-studio's trainer side, torch-free at this level.

Config schema, events, commands and the RunManager live here; anything that imports torch lives
under ``trainers.native``.
"""
