"""The console's web UI: server-rendered pages (Jinja2), inline SVG charts, one script.

Included by console/app.py; nothing in it is fetched from elsewhere at run time.
"""

from console.web.pages import router

__all__ = ["router"]
