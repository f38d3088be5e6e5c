"""Native CPU backend: the GGUF's own quantized weights, int8 kernels compiled from csrc/ at install."""
