"""EDIL benchmarks: every scheme's overhead against plaintext and peers, measured side by side."""
