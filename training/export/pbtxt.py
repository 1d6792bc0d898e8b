"""Triton ``config.pbtxt`` for each graph, checked by parsing it into Triton's ModelConfig."""
from __future__ import annotations

from google.protobuf import text_format

from glassbox.manifest import MAX_QUEUE_DELAY_US

TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64"}


def _tensor(t: dict) -> str:
    dims = t["shape"][1:]  # Triton's dims exclude the batch axis when max_batch_size > 0
    if not dims:  # a per-image scalar, e.g. the Grad-CAM target: [N] is [N, 1] reshaped
        return f'  {{ name: "{t["name"]}" data_type: {TYPES[t["dtype"]]} dims: [ 1 ] reshape: {{ shape: [ ] }} }}'
    return f'  {{ name: "{t["name"]}" data_type: {TYPES[t["dtype"]]} dims: [ {", ".join(map(str, dims))} ] }}'


def triton_config(triton_name: str, graph: dict, max_batch_size: int,
                  max_queue_delay_us: int = MAX_QUEUE_DELAY_US) -> str:
    return "\n".join([
        f'name: "{triton_name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        "input [", ",\n".join(_tensor(t) for t in graph["inputs"]), "]",
        "output [", ",\n".join(_tensor(t) for t in graph["outputs"]), "]",
        f"dynamic_batching {{ max_queue_delay_microseconds: {max_queue_delay_us} }}",
        # Every graph is a pure function of its inputs, so repeated requests may be answered from the
        # response cache, where the server has one (serve --cache-config, tritonserver --cache-config).
        "response_cache { enable: true }",
        "",
    ])


def parse_triton_config(text: str):
    """Parse into ``tritonclient``'s ModelConfig message; raises on anything Triton would reject
    syntactically (unknown fields, wrong types)."""
    from tritonclient.grpc import model_config_pb2
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def write_triton_configs(folder, graphs: dict, max_batch_size: int) -> None:
    """Each graph's ``<graph>.config.pbtxt`` in ``folder``, parsed as Triton would before it is written."""
    from pathlib import Path
    for graph, g in graphs.items():
        text = triton_config(g["triton_name"], g, max_batch_size)
        parse_triton_config(text)
        (Path(folder) / f"{graph}.config.pbtxt").write_text(text)
