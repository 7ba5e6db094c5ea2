"""Streaming evaluation: a model's next-token log-probabilities on held-out windows, one decoder
block in memory at a time, plus the cached fp16 reference that every quality row is measured against.
"""

from hubtool.evaluate.reference import Reference, compute_reference, open_reference, reference_windows
from hubtool.evaluate.stream import StreamingModel, gptq_weights, stream_logprobs

__all__ = ["Reference", "StreamingModel", "compute_reference", "gptq_weights", "open_reference", "reference_windows", "stream_logprobs"]
