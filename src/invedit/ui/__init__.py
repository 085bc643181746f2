"""The web UI (`invedit ui`): `session.EditSession` does the work, `app.build_app` lays out the Gradio page."""
