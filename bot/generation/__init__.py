"""Generation backends: where the model runs for the chat service.

`embedded` (the engine and batcher in this process, the default), `worker` (jobs on a Redis
Stream for `python -m bot worker` processes) and `openai` (any OpenAI-compatible server: vLLM,
llama.cpp's server, Ollama). `open_backend` picks one from `backend.mode` in the config. This
package's own modules import no torch: a bot whose model runs elsewhere never loads it.
"""

from bot.generation.backend import (
    BackendStatus,
    BackendUnavailable,
    GenerationBackend,
    ReloadOutcome,
    WorkerInfo,
)
from bot.generation.request import (
    GenerationRequest,
    GenerationResult,
    SamplingSettings,
    ScoreRequest,
    TextCallback,
    TextScore,
)

__all__ = [
    "BackendStatus",
    "BackendUnavailable",
    "GenerationBackend",
    "GenerationRequest",
    "GenerationResult",
    "ReloadOutcome",
    "SamplingSettings",
    "ScoreRequest",
    "TextCallback",
    "TextScore",
    "WorkerInfo",
]
