"""The HTTP API: ``crmscore.serving.api.app.create_app`` builds it, ``run_server`` serves it."""
