"""Inference: base model loading, the multi-adapter engine and its asyncio batcher."""

from bot.engine.batcher import Batcher, BatcherClosed
from bot.engine.engine import (
    BASE_ADAPTER,
    AdapterError,
    GenerationRequest,
    GenerationResult,
    InferenceEngine,
    SamplingSettings,
)
from bot.engine.loading import ModelLoadError

__all__ = [
    "BASE_ADAPTER",
    "AdapterError",
    "Batcher",
    "BatcherClosed",
    "GenerationRequest",
    "GenerationResult",
    "InferenceEngine",
    "ModelLoadError",
    "SamplingSettings",
]
