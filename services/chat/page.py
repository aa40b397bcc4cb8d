"""The chat page every node serves at ``/``: static files read once at start, from a
fixed list (no path from a request ever reaches the file system).

``client.js`` is the TypeScript client of ``clients/js``, built (``npm run build``
copies it here; ``nox -s js`` checks that the copy is the build's)."""

from pathlib import Path

from litestar import Response, get
from litestar.params import FromPath

from servicekit.errors import ServiceError

STATIC = Path(__file__).parent / "static"
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
FILES = {
    name: (STATIC / name).read_bytes()
    for name in ("index.html", "chat.js", "client.js", "chat.css")
}
HEADERS = {
    # Scripts and styles from this node only; the page talks to any node (the others of
    # a local cluster) over HTTP and WebSocket; no framing, no referrer with a token.
    "content-security-policy": "default-src 'self'; connect-src 'self' http: https: ws: wss:; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}


def _file(name: str) -> Response[bytes]:
    body = FILES.get(name)
    if body is None:
        raise ServiceError(404, "not_found", f"no file {name!r}; the page is at /")
    return Response(body, media_type=TYPES[Path(name).suffix], headers=HEADERS)


@get("/", sync_to_thread=False)
def page() -> Response[bytes]:
    return _file("index.html")


@get("/static/{name:str}", sync_to_thread=False)
def static(name: FromPath[str]) -> Response[bytes]:
    return _file(name)


PAGE_ROUTES = [page, static]
