"""FineControl Studio: the Gradio app around the engine (imports gradio; the engine does not)."""
