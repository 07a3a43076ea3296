"""`ferlab serve`: the JSON API through an HTTP client, and the web page in a real browser
(Debian's headless chromium driven by Playwright), against a server the tests start with the
real command line."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
skimage_data = pytest.importorskip("skimage.data")

from ferlab.serve import ServeConfig, UploadRejected, check_upload  # noqa: E402
from photos import composite, iou, tiny_model  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`ferlab serve` on a free port, as a user starts it; its base URL."""
    folder = tmp_path_factory.mktemp("serve")
    model = tiny_model(folder)
    port = _free_port()
    env = {**os.environ, "FERLAB_OFFLINE": "1", "FERLAB_CACHE": str(folder / "cache")}
    log = open(folder / "server.log", "w")  # noqa: SIM115  (closed below, after the process)
    process = subprocess.Popen(
        [sys.executable, "-m", "ferlab.cli", "serve", str(model), "--port", str(port), "--engine", "torch"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"ferlab serve exited: {(folder / 'server.log').read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ferlab serve did not start: {(folder / 'server.log').read_text()}")
            time.sleep(0.3)
        yield url
        assert process.poll() is None, "the server died during the tests"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _jpeg(photo: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _post(url: str, data: bytes, name: str = "photo.jpg", kind: str = "image/jpeg") -> httpx.Response:
    return httpx.post(f"{url}/predict", files={"file": (name, data, kind)}, timeout=120)


def test_health_model_and_api_docs(server: str) -> None:
    assert httpx.get(f"{server}/health").json()["status"] == "ok"
    model = httpx.get(f"{server}/model").json()
    assert model["classes"] == ["happy", "sad"] and model["arch"] == "resnet18"
    assert model["metrics"]["valid"]["accuracy"] == 0.5 and model["detector"] in ("haar", "mtcnn")
    assert model["limits"]["max_pixels"] == ServeConfig().max_pixels
    schema = httpx.get(f"{server}/openapi.json").json()
    assert {"/predict", "/model", "/health"} <= set(schema["paths"])
    assert "413" in schema["paths"]["/predict"]["post"]["responses"]
    docs = httpx.get(f"{server}/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in docs  # served from the package: works offline
    assert httpx.get(f"{server}/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert httpx.get(f"{server}/docs-assets/favicon.png").status_code == 200


def test_three_faces_get_three_boxes_and_labels(server: str) -> None:
    photo, expected = composite()
    response = _post(server, _jpeg(photo), "three.jpg")
    assert response.status_code == 200
    answer = response.json()
    assert (answer["width"], answer["height"]) == (1400, 900) and answer["message"] is None
    assert len(answer["faces"]) == 3
    for face, box in zip(answer["faces"], expected, strict=True):
        assert iou(tuple(face["box"]), box) > 0.5
        assert face["label"] in ("happy", "sad") and face["detector_score"] > 0
        assert face["landmarks"] is None or len(face["landmarks"]) == 5  # mtcnn gives eyes, nose, mouth
        assert sum(face["scores"].values()) == pytest.approx(1.0, abs=1e-5)


def test_a_face_crop_is_scored_whole_and_a_photo_without_faces_says_so(server: str) -> None:
    photo, expected = composite()
    x, y, w, h = expected[2]
    small = np.asarray(Image.fromarray(photo[y : y + h, x : x + w]).resize((48, 48)))
    whole = _post(server, _jpeg(small), "small.jpg").json()
    assert len(whole["faces"]) == 1 and whole["faces"][0]["box"] is None  # a face crop already
    empty = _post(server, _jpeg(np.full((400, 400, 3), 90, np.uint8)), "wall.jpg")
    assert empty.status_code == 200
    assert empty.json()["faces"] == [] and "no face found" in empty.json()["message"]


def test_bad_uploads_get_clear_4xx_and_the_server_keeps_serving(server: str) -> None:
    text = _post(server, b"name,label\nface.jpg,happy\n", "faces.csv", "text/csv")
    assert text.status_code == 415 and "not an image" in text.json()["detail"]
    buffer = io.BytesIO()
    Image.new("L", (10_000, 10_000)).save(buffer, "PNG")  # 100 megapixels, a 100 KB file
    huge = _post(server, buffer.getvalue(), "huge.png", "image/png")
    assert huge.status_code == 413 and "100 megapixels" in huge.json()["detail"]
    truncated = _post(server, _jpeg(composite()[0])[:5000], "cut.jpg")
    assert truncated.status_code == 422 and "cannot be decoded" in truncated.json()["detail"]
    assert _post(server, b"", "empty.jpg").status_code == 400
    oversized = _post(server, b"\xff" * (ServeConfig().max_upload_bytes + 100_000), "big.jpg")
    assert oversized.status_code == 413 and "MB" in oversized.json()["detail"]
    pdf = _post(server, b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", "paper.pdf", "application/pdf")
    assert pdf.status_code == 415
    assert httpx.get(f"{server}/health").status_code == 200


def test_fifty_concurrent_uploads(server: str) -> None:
    photo, _ = composite()
    small = np.asarray(Image.fromarray(photo).resize((700, 450)))  # the same three faces, half size
    data = _jpeg(small)

    def upload(_: int) -> tuple[int, list[str]]:
        response = _post(server, data, "three.jpg")
        return response.status_code, [f["label"] for f in response.json().get("faces", [])]

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(upload, range(50)))
    assert [status for status, _ in results] == [200] * 50
    assert len({tuple(labels) for _, labels in results}) == 1  # every answer the same
    assert len(results[0][1]) == 3


def test_check_upload_reads_only_the_header_of_a_bomb() -> None:
    buffer = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buffer, "PNG")  # 400 megapixels, 1 bit each
    with pytest.raises(UploadRejected) as rejected:
        check_upload(buffer.getvalue(), ServeConfig())
    assert rejected.value.status == 413 and "megapixels" in str(rejected.value)
    small = io.BytesIO()
    Image.new("RGB", (100, 50), (10, 20, 30)).save(small, "WEBP")
    assert check_upload(small.getvalue(), ServeConfig()).shape == (50, 100, 3)
    with pytest.raises(UploadRejected, match="not accepted"):
        check_upload(small.getvalue(), ServeConfig(formats=("JPEG",)))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_the_web_page_draws_each_face_with_its_label(server: str, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    photo, expected = composite()
    path = tmp_path / "three.jpg"
    path.write_bytes(_jpeg(photo))
    not_image = tmp_path / "notes.txt"
    not_image.write_text("not a photo")
    flags = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync"]
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(server)
            page.wait_for_function("document.getElementById('model').textContent.includes('resnet18')")
            page.set_input_files("#file", str(path))
            page.wait_for_selector("#faces li:nth-child(3)", timeout=60_000)
            boxes = page.eval_on_selector_all(
                ".box",
                """boxes => boxes.map(box => {
                    const image = document.getElementById('photo').getBoundingClientRect();
                    const r = box.getBoundingClientRect();
                    return {label: box.dataset.label, tag: box.querySelector('.tag').textContent,
                            visible: r.width > 0 && r.height > 0,
                            box: [r.left - image.left, r.top - image.top, r.width, r.height], shown: image.width};
                })""",
            )
            assert len(boxes) == 3
            for drawn, box in zip(boxes, expected, strict=True):
                assert drawn["label"] in ("happy", "sad") and drawn["visible"]
                assert drawn["tag"].split(": ")[1].startswith(drawn["label"])
                scale = 1400 / drawn["shown"]  # the page shows the photo scaled to fit
                assert iou(tuple(round(v * scale) for v in drawn["box"]), box) > 0.5
            cards = page.eval_on_selector_all("#faces li", "items => items.map(i => i.dataset.label)")
            assert cards == [b["label"] for b in boxes]
            assert page.locator("#faces li").first.locator(".bar").count() == 2  # a bar per class
            assert "3 faces" in page.text_content("#message")
            page.screenshot(path=os.environ.get("FERLAB_SCREENSHOT", str(tmp_path / "page.png")))

            page.set_input_files("#file", str(not_image))
            page.wait_for_selector("#message.error")
            assert "415" in page.text_content("#message") and page.locator(".box").count() == 0

            # Dropped on the page rather than chosen: the astronaut photo, one face.
            transfer = page.evaluate_handle(
                """data => {
                    const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
                    const transfer = new DataTransfer();
                    transfer.items.add(new File([bytes], 'astronaut.jpg', {type: 'image/jpeg'}));
                    return transfer;
                }""",
                base64.b64encode(_jpeg(skimage_data.astronaut())).decode(),
            )
            page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
            page.wait_for_function("document.getElementById('message').textContent.includes('face in astronaut.jpg')")
            assert page.locator(".box").count() == 1 and page.locator("#faces li").count() == 1
            assert "1 face in astronaut.jpg (512×512)" in page.text_content("#message")

            page.goto(f"{server}/docs")  # the API's page renders offline, with its three operations
            page.wait_for_selector(".opblock-summary-path", timeout=30_000)
            paths = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(n => n.textContent)")
            assert {"/predict", "/model", "/health"} <= {p.strip() for p in paths}
        finally:
            browser.close()
