"""The HTTP contract between edge and cloud: paths, headers, content types, answer fields.

Both sides name these constants instead of repeating string literals, so a rename breaks at
import time, not on the wire. docs/FORMATS.md and cloud_runtime/README.md describe them.
"""
from __future__ import annotations

# ---- paths ----------------------------------------------------------------------------------
INFER = "/v1/infer"  # POST a packed activation
INFER_IMAGE = "/v1/infer/image"  # POST a whole JPEG/PNG frame (cloud-only)
PROBE = "/v1/probe"  # POST bytes the server drops: a bandwidth sample without tail compute
MODELS = "/v1/models"
HEALTH = "/healthz"  # no auth, no TensorFlow: is the process up
READY = "/readyz"  # 503 + Retry-After until the tails are loaded
METRICS = "/metrics"  # Prometheus text

# ---- headers and content types --------------------------------------------------------------
MODEL_SHA256_HEADER = "X-Model-Sha256"  # the model's sha256 (or a prefix of >= 8 hex chars)
PACKED_CONTENT_TYPE = "application/x-splitinfer-activation"
PROBE_CONTENT_TYPE = "application/octet-stream"
TOKEN_ENV = "SPLITINFER_TOKEN"  # bearer token, on both sides, when not passed as --token

# ---- answer fields --------------------------------------------------------------------------
TOP_K = "top_k"  # [{"class": int, "score": float | None}, ...], best first
#: server timings in ms: RECEIVE is upload time (the body arriving), the rest is the server's
RECEIVE_MS, DECODE_MS, QUEUE_MS, TAIL_MS, TOTAL_MS = ("receive_ms", "decode_ms", "queue_ms",
                                                      "tail_ms", "total_ms")
BATCH_SIZE = "batch_size"
# The worker's load with every answer (JSON object, and the same as one header): utilisation,
# queue_ms, batch_occupancy, in_flight, window_s. See docs/FORMATS.md.
LOAD = "load"
LOAD_HEADER = "X-Splitinfer-Load"
TIMING_FIELDS = (RECEIVE_MS, DECODE_MS, QUEUE_MS, TAIL_MS, TOTAL_MS, BATCH_SIZE)
