"""The Gradio app: the Blocks UI, the scene tabs, the REST routes."""
