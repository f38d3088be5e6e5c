"""What draft heads and AR->dLLM conversion share: prompts and target-generated data, model fingerprints, LoRA."""
