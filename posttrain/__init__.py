"""posttrain: a post-training pipeline for small reasoning models (the VibeThinker recipe).

The library never imports Prefect; ``flows/`` and ``tasks/`` wire it into Prefect.
"""

__version__ = "0.1.0"
