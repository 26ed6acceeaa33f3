"""The web interface under ``/ui/``: pages, sessions, static files (see ``ui.md``)."""
