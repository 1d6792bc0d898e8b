"""What the hypothesis properties share: the settings, sizes around the edges, and damaged bytes.

    from tests.helpers.properties import PROPERTY, DIM, damage
"""
from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Sizes around the edges: 0, small, and huge ones that overflow int64 products or numpy's size limits.
DIM = st.one_of(st.integers(-3, 6), st.sampled_from([2**31, 2**32 - 1, 2**62, -(2**63), 2**63 - 1]))


def damage(draw, data: bytes, kind: str) -> bytes:
    """``data`` cut short ("cut"), with one byte changed ("flip"), or as it is (any other kind)."""
    data = bytearray(data)
    if kind == "cut":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif kind == "flip":
        data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    return bytes(data)


def one_line(message: str) -> None:
    assert message and "\n" not in message, message
