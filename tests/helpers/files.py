"""Checks and writers on files the tests share: strict JSON, a tiny train-all profile."""
import json
from pathlib import Path


def strict_json(path):
    """The JSON files must be strict (no NaN/Infinity) so that browsers and jq read them."""
    def refuse(token):
        raise AssertionError(f"{path.name} holds {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


def tiny_profile(path: Path, data_dir, runs: str, subset: int = 600, defaults: str = "") -> Path:
    """Write a one-epoch train-all profile on ``subset`` Fashion-MNIST images (batch 32, constant lr):
    the shared header, ``defaults`` lines added to it, then ``runs`` (the ``[[runs]]`` tables)."""
    path.write_text(f'[defaults]\ndataset = {{ name = "fashion-mnist", data_dir = "{data_dir}", subset = {subset} }}\n'
                    f'epochs = 1\nbatch_size = 32\nschedule = {{ name = "constant" }}\n{defaults}{runs}')
    return path
