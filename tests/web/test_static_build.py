"""The built web UI (``web-ui/`` → ``src/cityops/web/static/``) as FastAPI will serve it.

The build output is generated and git-ignored, so these tests skip, saying how to build it,
when it is absent. The source checks run always: the page must work offline (DESIGN §7 "no CDN,
no external tiles"), so no code of ours may name a URL on the internet.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
WEB_UI = REPO_ROOT / "web-ui"
STATIC = REPO_ROOT / "src" / "cityops" / "web" / "static"
INDEX = STATIC / "index.html"

BUILD_HINT = "web UI not built: run `cd web-ui && npm ci && npm run build`"
ASSET_REF = re.compile(r"""<(?:script|link)\b[^>]*?\b(?:src|href)="([^"]+)\"""")
EXTERNAL_URL = re.compile(r"""https?://[^\s"'`)<>]+""")
# XML namespaces are names, not requests: inline SVG in MapLibre's CSS carries one.
NAMESPACES = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xhtml"}


@pytest.fixture(scope="module")
def index_html() -> str:
    if not INDEX.is_file():
        pytest.skip(BUILD_HINT)
    return INDEX.read_text(encoding="utf-8")


def asset_refs(html: str) -> list[str]:
    return [ref for ref in ASSET_REF.findall(html) if not ref.startswith("data:")]


def test_source_names_no_url_on_the_internet() -> None:
    src = WEB_UI / "src"
    sources = [WEB_UI / "index.html", *sorted(src.rglob("*.ts")), *sorted(src.rglob("*.css"))]
    assert len(sources) > 3, f"web-ui sources not found under {WEB_UI}"
    offenders = {
        str(path.relative_to(REPO_ROOT)): urls
        for path in sources
        if (urls := set(EXTERNAL_URL.findall(path.read_text(encoding="utf-8"))) - NAMESPACES)
    }
    assert offenders == {}, "the page must work offline: no tiles, glyphs, fonts or CDNs"


def test_build_is_configured_relative_into_the_package() -> None:
    config = (WEB_UI / "vite.config.ts").read_text(encoding="utf-8")
    assert re.search(r"""base:\s*["']\./["']""", config)
    assert re.search(r"""outDir:\s*["']\.\./src/cityops/web/static["']""", config)


def test_index_references_assets_relatively(index_html: str) -> None:
    refs = asset_refs(index_html)
    assert any(ref.endswith(".js") for ref in refs), refs
    assert any(ref.endswith(".css") for ref in refs), refs
    for ref in refs:
        # Relative, so the page works wherever StaticFiles is mounted.
        assert ref.startswith("./"), ref
        assert (STATIC / ref).is_file(), f"{ref} is referenced but missing"
    assert "cityops 城市运行" in index_html


def test_bundle_ships_the_maplibre_worker_as_js(index_html: str) -> None:
    assets = STATIC / "assets"
    workers = sorted(assets.glob("maplibre-gl-worker-*.js"))
    assert workers, "MapLibre's worker is missing from the build"
    # Python's mimetypes maps .mjs to JavaScript only where /etc/mime.types says so.
    assert not list(assets.glob("*.mjs"))
    main_js = STATIC / next(ref for ref in asset_refs(index_html) if ref.endswith(".js"))
    assert workers[0].name in main_js.read_text(encoding="utf-8")


def test_built_page_and_css_fetch_nothing_external(index_html: str) -> None:
    css = [path.read_text(encoding="utf-8") for path in (STATIC / "assets").glob("*.css")]
    urls: set[str] = set()
    for text in [index_html, *css]:
        urls |= set(EXTERNAL_URL.findall(text))
    assert urls - NAMESPACES == set()


@pytest.mark.parametrize("mount", ["/", "/ui"])
def test_served_by_starlette_static_files(index_html: str, mount: str) -> None:
    """As ``cityops.app`` serves it (under ``/ui``) and at the root: relative paths work in both."""
    from fastapi import FastAPI
    from fastapi.staticfiles import StaticFiles
    from fastapi.testclient import TestClient

    app = FastAPI()
    app.mount(mount, StaticFiles(directory=STATIC, html=True), name="web")
    client = TestClient(app)
    page_url = mount.rstrip("/") + "/"

    page = client.get(page_url)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    workers = [f"./assets/{p.name}" for p in (STATIC / "assets").glob("maplibre-gl-worker-*.js")]
    for ref in [*asset_refs(index_html), *workers]:
        # Resolved the way a browser resolves it against the page's URL.
        response = client.get(page_url + ref.removeprefix("./"))
        assert response.status_code == 200, ref
        expected = "text/css" if ref.endswith(".css") else "javascript"
        assert expected in response.headers["content-type"], (ref, response.headers["content-type"])
