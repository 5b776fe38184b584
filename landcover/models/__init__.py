"""Models: the timm factory, model references and the Hub, the model card."""
