"""Prefect flows: wiring only. ``post_training.py`` holds the stage order."""
