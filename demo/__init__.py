"""The Gradio demo's own package: what app.py builds the page from (see app.py)."""
