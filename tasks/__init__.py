"""Prefect tasks: thin wrappers (caching, retries, artifacts) over the ``posttrain`` library."""

from posttrain.redact import install_log_redaction

# Every process that runs a flow imports this package: no log record it creates (botocore's DEBUG
# wire trace included) carries a credential variable's value, on the console or in Prefect's API.
install_log_redaction()
