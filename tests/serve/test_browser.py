"""End-to-end test of the clinician page in a real headless Chromium (Debian's ``chromium``
driven by Playwright), against ``fetalplanes serve`` started as a user would start it.

Set ``FETALPLANES_SCREENSHOT=path.png`` to save a screenshot of the synthetic-image run
(the committed docs/serve_screenshot.png is made that way; it never shows a real image).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image
from serve_helpers import dicom_bytes, running_server

playwright_api = pytest.importorskip("playwright.sync_api")
expect, sync_playwright = playwright_api.expect, playwright_api.sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path) -> Iterator[str]:
    with running_server(tiny_checkpoint) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, server: str):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url}"))
    page.goto(server + "/")
    # Locator assertions run in Playwright's isolated world: string predicates would need
    # eval(), which the page's Content-Security-Policy (rightly) forbids.
    expect(page.locator("#model-line")).to_contain_text("Model:")
    yield page
    context.close()
    # Any script error, CSP violation or failed asset load means the page is broken; the
    # browser also logs the service's answers to bad uploads (415/422), which are expected.
    expected = ("status of 415", "status of 422")
    assert [p for p in problems if not any(e in p for e in expected)] == []


def class_names(server: str) -> list[str]:
    import httpx

    return httpx.get(server + "/v1/model").json()["class_names"]


def check_result_card(card, names: list[str]) -> None:
    card.locator(".result").wait_for(state="visible", timeout=60_000)
    plane = card.locator(".plane").inner_text().strip()
    image = card.locator(".card-image")
    assert image.evaluate("img => img.complete && img.naturalWidth > 0")
    if plane == "Not a fetal plane":  # the OOD gate's state: a clear warning, no plane bars
        assert card.locator(".ood-warning").is_visible() and not card.locator(".bars").is_visible()
        assert "Not a fetal plane" in card.locator(".ood-warning").inner_text()
        return
    assert plane in names
    assert card.locator(".confidence-value").inner_text().strip().endswith("%")
    bars = card.locator(".bar-row")
    assert bars.count() == 2
    assert bars.nth(0).locator(".bar-label").inner_text().strip() == plane
    widths = [bars.nth(i).locator(".bar-fill").evaluate("el => el.getBoundingClientRect().width") for i in range(2)]
    assert widths[0] > 0 and widths[0] >= widths[1]


def toggle_overlay(card) -> None:
    """The heat map toggle either shows an overlay PNG or says clearly why it cannot."""
    toggle = card.locator(".overlay-toggle")
    if toggle.is_disabled():
        assert "not available" in card.locator(".overlay-note").inner_text()
        return
    before = card.locator(".card-image").get_attribute("src")
    toggle.check()
    expect(card.locator(".card-image")).to_have_attribute("src", re.compile(r"^data:image/png;base64,"), timeout=120_000)
    assert card.locator(".card-image").get_attribute("src") != before
    expect(card.locator(".overlay-note")).to_contain_text("Heat map")
    assert card.locator(".card-image").evaluate("img => img.complete && img.naturalWidth > 0")
    toggle.uncheck()
    assert card.locator(".card-image").get_attribute("src") == before


def test_real_image_end_to_end(page, server: str, shared_data: Path) -> None:
    real = sorted((shared_data / "fetal_planes_db" / "images").glob("*.png"))
    if not real:
        pytest.skip("no real images in ../shared/data/fetal_planes_db/images")
    page.set_input_files("#file-input", str(real[0]))
    card = page.locator(".card").first
    check_result_card(card, class_names(server))
    assert card.locator(".filename").inner_text() == real[0].name
    toggle_overlay(card)
    # The real image is never written into the repository: screenshot only under pytest's tmp.


def test_synthetic_images_errors_and_dicom(page, server: str, synth_data: Path) -> None:
    phantoms = sorted((synth_data / "Images").glob("*.png"))
    png = phantoms[0]
    gray = np.asarray(Image.open(phantoms[-1]).convert("L"))
    files = [
        {"name": png.name, "mimeType": "image/png", "buffer": png.read_bytes()},
        {"name": "phantom.dcm", "mimeType": "application/dicom", "buffer": dicom_bytes(gray)},
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"},
    ]
    page.set_input_files("#file-input", files)
    cards = page.locator(".card")
    assert cards.count() == 3
    # Cards are shown newest first: notes.txt, phantom.dcm, then the PNG.
    by_name = {cards.nth(i).locator(".filename").inner_text(): cards.nth(i) for i in range(3)}
    names = class_names(server)
    check_result_card(by_name[png.name], names)
    dicom_card = by_name["phantom.dcm"]
    check_result_card(dicom_card, names)
    # Browsers cannot show DICOM: the page displays the server's decoded preview instead.
    assert dicom_card.locator(".card-image").get_attribute("src").startswith("data:image/png")
    error = by_name["notes.txt"].locator(".card-error")
    error.wait_for(state="visible", timeout=60_000)
    assert "unsupported file type" in error.inner_text()
    toggle_overlay(by_name[png.name])
    expect(page.locator("#status")).to_have_text("Done.", timeout=60_000)
    shot = os.environ.get("FETALPLANES_SCREENSHOT")
    if shot:
        page.screenshot(path=shot, full_page=True)
