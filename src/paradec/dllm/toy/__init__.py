"""The tiny synthetic dLLM paradec trains and ships, its tasks, training and benchmark."""
