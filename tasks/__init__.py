"""Prefect tasks: thin wrappers (caching, retries, artifacts) over the ``posttrain`` library."""
