"""EuroSAT land-cover classification: train (timm + accelerate), share (Hub), serve (Gradio)."""

__version__ = "0.1.0"
