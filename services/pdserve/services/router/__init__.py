"""The router: an OpenAI-compatible HTTP gateway in front of pdserve's workers (docs/http_api.md)."""

from pdserve.services.router.app import create_app
from pdserve.services.router.server import RouterServer, run_router

__all__ = ["RouterServer", "create_app", "run_router"]
