"""Data loaders: every shipped data file (and hub datasets) to one ``Record`` schema.

``load_source(name)`` loads one registered source, ``load_mixture(specs)`` several with seeded
subsampling; ``registered_sources()`` lists them. Sources live in ``sources_math``,
``sources_code``, ``sources_stem``, ``sources_instruct`` and ``synthetic``; prompt wording in
``prompts``. A bad row raises ``DataError`` naming the file, the row and the field.
"""

from posttrain.data.errors import DataError, UnknownSourceError
from posttrain.data.hub import HubMapping
from posttrain.data.loading import MixtureSpec, load_mixture, load_source, resolve_data_root, subsample
from posttrain.data.sources import (
    SourceSpec,
    check_benchmark,
    get_source,
    register_source,
    registered_sources,
    skipped_rows,
)
from posttrain.data.synthetic import make_digit_records

__all__ = [
    "DataError",
    "HubMapping",
    "MixtureSpec",
    "SourceSpec",
    "UnknownSourceError",
    "check_benchmark",
    "get_source",
    "load_mixture",
    "load_source",
    "make_digit_records",
    "register_source",
    "registered_sources",
    "resolve_data_root",
    "skipped_rows",
    "subsample",
]
