"""kpod: chain-of-thought distillation toolkit built around KPOD (Feng et al., ICML 2024)."""

__all__ = ["extract_answer"]
__version__ = "0.1.0"


def __getattr__(name):  # keeps `import kpod` light; the answer module is imported on first use
    if name == "extract_answer":
        from kpod.data.answers import extract_answer

        return extract_answer
    raise AttributeError(f"module 'kpod' has no attribute {name!r}")
