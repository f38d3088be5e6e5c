"""AR -> block-diffusion conversion: training, quality evaluation, the text dLLM benchmark."""
