"""Fine-tuning tools: datasets from scripts, LoRA training, evaluation (`python -m finetune`)."""
