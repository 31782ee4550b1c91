"""Fine-tuning tools: datasets from scripts, LoRA training, evaluation (`python -m finetune`)."""

from bot.engine.loading import quiet_kernels_notice

# Before any finetune module imports peft (and with it bitsandbytes, which logs the notice).
quiet_kernels_notice()
