"""A content hash of the training data a recipe names, so nightly retraining can tell new data.

Stage keys (``posttrain.pipeline.stage_key``) include the hash of each stage's own sources
(``stage_data_hashes``), so new bytes under the same names retrain that stage and those after it;
the nightly run compares whole snapshots to tell whether there is new data at all. It covers every data source of
the training stages (``data`` of the SFT, RL, distillation and instruct-RL stages, instruct RL's
``prompts.sources``) and, for a tiny model, the tokenizer's sources; not the benchmarks.

A source's files are the ones it registers (``posttrain.data.SourceSpec.files``); each is hashed
by content (sha256, streamed), never by modification time. Generated sources read no file and
hash to the same constant.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from posttrain.config import Recipe
from posttrain.storage import sha256_file

TRAINING_DATA_FIELDS = ("sft_stage1", "sft_stage2", "rl_math", "rl_code", "rl_stem", "distill", "instruct_rl")


def recipe_sources(recipe: Recipe) -> list[tuple[str, str, str | None]]:
    """The training data sources of a recipe as ``(where, source, data_root override)``, in recipe
    order; ``where`` is the recipe path of the entry (``rl_math.data[0]``)."""
    found: list[tuple[str, str, str | None]] = []
    for stage in TRAINING_DATA_FIELDS:
        cfg = getattr(recipe, stage)
        for i, spec in enumerate(cfg.data):
            found.append((f"{stage}.data[{i}]", spec.source, spec.data_root))
    for i, spec in enumerate(recipe.instruct_rl.prompts.sources):
        found.append((f"instruct_rl.prompts.sources[{i}]", spec.source, spec.data_root))
    if recipe.model.source == "tiny" and recipe.model.tiny is not None:
        found += [(f"model.tiny.tokenizer_sources[{i}]", name, None)
                  for i, name in enumerate(recipe.model.tiny.tokenizer_sources)]
    return found


def _hash_s3_object(uri: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of an S3 object's bytes, streamed (not through the local cache, which could be stale)."""
    from posttrain.storage import S3Store, StorageError

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    store = S3Store(f"s3://{bucket}")
    try:
        body = store.client.get_object(Bucket=bucket, Key=key)["Body"]
    except Exception as e:  # botocore raises several unrelated types here
        raise StorageError(f"cannot read {uri}: {e}") from e
    h = hashlib.sha256()
    for block in body.iter_chunks(chunk):
        h.update(block)
    return h.hexdigest()


def _hash_location(root: str, rel: str) -> str:
    """sha256 of the file ``rel`` under a data root (local folder or ``s3://`` prefix).

    Raises:
        FileNotFoundError: naming a missing local file.
        ValueError: for a root that is neither (``hf://`` roots name no files of a source).
    """
    if root.startswith("s3://"):
        return _hash_s3_object(f"{root.rstrip('/')}/{rel}")
    if "://" in root and not root.startswith("file://"):
        raise ValueError(f"cannot snapshot data root {root!r}: use a local folder or s3://")
    path = Path(root.removeprefix("file://")) / rel
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    return sha256_file(path)


def _hash_hub_folder(root: str, where: str) -> dict[str, str]:
    """Every file of a local hub-layout dataset folder (``hf://<folder>``), by relative path.

    Raises:
        ValueError: for a hub dataset id (no local folder): its bytes cannot be read offline.
    """
    folder = Path(root.removeprefix("hf://"))
    if not folder.is_dir():
        raise ValueError(f"{where}: cannot snapshot hub dataset {root!r}: only a local folder in hub "
                         f"layout can be hashed")
    return {p.relative_to(folder).as_posix(): sha256_file(p)
            for p in sorted(folder.rglob("*")) if p.is_file() and ".cache" not in p.relative_to(folder).parts}


def data_snapshot(recipe: Recipe, data_root: str | Path | None = None) -> dict:
    """A content hash of the training data sources ``recipe`` names, read from ``data_root``
    (None: the recipe's ``data_root``, else ``$POSTTRAIN_DATA``, else ``../shared/data``).

    Returns ``{"hash": hex, "sources": {source: hex}, "files": {file: hex}}``: ``sources[s]`` =
    sha256 of the JSON of ``{relative path: sha256 of the file's bytes}`` over the files ``s``
    reads; ``hash`` = sha256 of the JSON of ``sources`` (keys sorted). A source read from a root
    other than the recipe's (a per-entry ``data_root``) is named ``<source>@<root>`` and its
    files ``<root>/<path>``. The same bytes under another root folder give the same hash.

    Raises:
        ValueError: naming the recipe entry of an unknown source, or a hub dataset id.
        FileNotFoundError: naming a missing data file.
        posttrain.storage.StorageError: an S3 object that cannot be read.
    """
    from posttrain.data import get_source, resolve_data_root

    main_root = resolve_data_root(str(data_root) if data_root is not None else recipe.data_root)
    sources: dict[str, str] = {}
    files: dict[str, str] = {}
    for where, name, override in recipe_sources(recipe):
        root = override or main_root
        label = name if root == main_root else f"{name}@{root}"
        if label in sources:
            continue
        if root.startswith("hf://"):  # the source name only labels the records of a hub dataset
            digests = _hash_hub_folder(root, where)
        else:
            try:
                spec = get_source(name)
            except KeyError:
                raise ValueError(f"{where}: unknown data source {name!r}; registered training sources: "
                                 f"{', '.join(_training_sources())}") from None
            digests = {rel: _hash_location(root, rel) for rel in sorted(spec.files)}
        for rel, digest in digests.items():
            files[rel if root == main_root else f"{root.rstrip('/')}/{rel}"] = digest
        sources[label] = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()
    total = hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()
    return {"hash": total, "sources": dict(sorted(sources.items())), "files": dict(sorted(files.items()))}


def stage_data_hashes(recipe: Recipe, data_root: str | Path | None = None) -> dict[str, str]:
    """Per pipeline stage, sha256 over the content hashes of the data sources that stage names
    (``prepare_model``: a tiny model's tokenizer sources). Stages that name no source are absent.

    Raises: as ``data_snapshot``.
    """
    from posttrain.data import resolve_data_root

    main_root = resolve_data_root(str(data_root) if data_root is not None else recipe.data_root)
    sources = data_snapshot(recipe, main_root)["sources"]
    per_stage: dict[str, list[str]] = {}
    for where, name, override in recipe_sources(recipe):
        root = override or main_root
        stage = "prepare_model" if where.startswith("model.") else where.split(".")[0]
        per_stage.setdefault(stage, []).append(sources[name if root == main_root else f"{name}@{root}"])
    return {stage: hashlib.sha256(json.dumps(sorted(set(h))).encode()).hexdigest() for stage, h in per_stage.items()}


def _training_sources() -> list[str]:
    from posttrain.data import registered_sources

    return registered_sources("train")
