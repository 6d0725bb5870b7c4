"""`ddim serve`: a web page and a JSON API to sample, watch, interpolate and invert one model.

from ddim.serve import Limits, create_app
app = create_app(ddim.load("toy"), Limits(max_n=16))     # an ASGI app; run it with uvicorn

Needs the `serve` extra: pip install 'ddim[serve]'.
"""

from ddim.serve.app import create_app
from ddim.serve.limits import Limits

__all__ = ["Limits", "create_app"]
