"""Where Prefect keeps task results and cache records: in the run's artifact store, so workers on
other machines (a GPU pool's pods, say) find the same cached stages.

An ``s3://bucket/prefix`` artifact root keeps them under ``s3://bucket/prefix/prefect-results/``
through prefect-aws's ``S3Bucket`` block; a local root under ``<root>/prefect-results/``.
The block carries no credentials: boto3 takes them, and ``AWS_ENDPOINT_URL_S3``, from the
environment of whichever process reads or writes, as the artifact store does.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

RESULTS_FOLDER = "prefect-results"


@functools.lru_cache(maxsize=None)
def _s3_block(artifacts: str, api_url: str | None):
    from prefect_aws import S3Bucket

    bucket, _, prefix = artifacts.removeprefix("s3://").partition("/")
    block = S3Bucket(bucket_name=bucket, bucket_folder=f"{prefix.strip('/')}/{RESULTS_FOLDER}".lstrip("/"))
    # Prefect resolves result storage by a saved block's document: save it once per root and API.
    block.save(f"posttrain-results-{hashlib.sha256(artifacts.encode()).hexdigest()[:12]}", overwrite=True)
    return block


def result_storage(artifacts: str):
    """The ``result_storage`` for tasks of a run whose artifact root is ``artifacts``.

    Returns a saved ``S3Bucket`` block for an ``s3://`` root, else a local folder path.
    """
    if artifacts.startswith("s3://"):
        from prefect.settings import PREFECT_API_URL

        return _s3_block(artifacts, PREFECT_API_URL.value())
    return Path(artifacts).resolve() / RESULTS_FOLDER
