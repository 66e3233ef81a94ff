"""The review UI in a real headless Chromium: log in, work the queue by keyboard, accept in bulk.

`swatch review` runs as a subprocess against the real broker and Redis; product images come from a
local image server (the service fetches them through its SSRF-safe fetcher, loopback allowed in
tests). What the reviewer does in the browser is checked where it matters: in the
``review_decision`` and ``attribute_event`` records on the broker.

Screenshots of the queue and an item page are written under the test's tmp_path, and also to
``docs/review-queue.png`` and ``docs/review-item.png`` when ``SWATCH_SCREENSHOTS=1`` (for the README).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    # CI (.ci/run) installs chromium and sets SWATCH_REQUIRE_BROWSER=1: there a missing browser fails.
    why = f"the browser tests drive Debian's chromium, and {CHROMIUM} is not installed (apt-get install chromium)"
    if os.environ.get("SWATCH_REQUIRE_BROWSER") == "1":
        raise RuntimeError(why + "; SWATCH_REQUIRE_BROWSER=1 says this run must not skip them")
    pytest.skip(why, allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need the playwright package (dev)")

from PIL import Image, ImageDraw  # noqa: E402

import tagger  # noqa: E402
from streams.combine import ImageOutcome  # noqa: E402
from streams.config import Settings  # noqa: E402
from streams.images_server import ImageServer  # noqa: E402
from tests.review.harness import (  # noqa: E402
    ReviewProcess,
    low,
    model_value,
    produce,
    read_all,
    request_record,
    review_settings,
    running_review,
    wait_for,
)

pytestmark = [pytest.mark.browser, pytest.mark.integration, pytest.mark.slow]

DOCS = Path(__file__).resolve().parents[2] / "docs"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
TIMEOUT_MS = 15_000
GRADCAM_TIMEOUT_MS = 60_000  # the first overlay loads the model (seconds on a small CPU)
DEMO_CARD = Path(tagger.__file__).parent / "models" / "demo" / "model_card.json"
DEMO_MODEL = json.loads(DEMO_CARD.read_text())["model_id"]


@dataclass
class Stack:
    """The running review service and where its images come from."""

    settings: Settings
    review: ReviewProcess
    images: str  # base URL of the image server

    def image(self, name: str, content_hash: str) -> ImageOutcome:
        """A usable (tagged) image of the catalog."""
        return ImageOutcome(self.images + name, "TAGGED", content_hash=content_hash)

    def publish(self, *records: dict[str, Any]) -> None:
        """Send review requests and wait until the queue holds them."""
        produce(self.settings, self.settings.topics.review, "review_request", *records)
        wanted = {r["listing_id"] for r in records}

        def queued() -> bool:
            page = self.review.api.get("/api/queue?limit=200")
            return wanted <= {row["listing_id"] for row in page["items"]}

        wait_for(queued, what=f"{sorted(wanted)} in the queue")


def _garment(path: Path, colour: tuple[int, int, int], stripes: bool = False) -> None:
    """A small dress-like PNG: a navy (or other) silhouette on white, striped when asked."""
    image = Image.new("RGB", (320, 320), "white")
    draw = ImageDraw.Draw(image)
    draw.polygon([(130, 40), (190, 40), (205, 110), (260, 290), (60, 290), (115, 110)], fill=colour)
    draw.rectangle([(120, 40), (200, 70)], fill=colour)
    if stripes:
        for y in range(80, 290, 24):
            draw.line([(40, y), (280, y)], fill="white", width=6)
    image.save(path, "PNG")


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`swatch review` and an image server, shared by the module's tests (each uses its own listings)."""
    root = tmp_path_factory.mktemp("catalog")
    _garment(root / "navy-dress.png", (31, 42, 88))
    _garment(root / "striped-dress.png", (200, 40, 50), stripes=True)
    _garment(root / "black-dress.png", (20, 20, 20))
    settings = review_settings(kafka_bootstrap, redis_url, f"rvb-{uuid.uuid4().hex[:8]}", review={"lease_ttl_s": 9})
    with ImageServer(root) as images, running_review(settings, tmp_path_factory.mktemp("logs")) as review:
        yield Stack(settings, review, images.base_url)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium, driven by Playwright (no browser download)."""
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, tmp_path: Path) -> Iterator[Any]:
    """A fresh browser context and page; ``last-state.png`` in tmp_path shows where a failing test stopped."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000}, device_scale_factor=1)
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield tab
    finally:
        with contextlib.suppress(Exception):
            tab.screenshot(path=str(tmp_path / "last-state.png"), full_page=True)
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def screenshot(tab: Any, tmp_path: Path, name: str) -> Path:
    """Save a screenshot as a test artifact, and into docs/ when SWATCH_SCREENSHOTS=1."""
    path = tmp_path / name
    tab.screenshot(path=str(path), full_page=False)
    if os.environ.get("SWATCH_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(path, DOCS / name)
    return path


def login(tab: Any, base: str, name: str = "alice") -> None:
    """Open the UI (which sends us to the login form) and log in."""
    tab.goto(base + "/")
    tab.wait_for_url(re.compile(r"/login"))
    tab.fill("#reviewer", name)
    tab.press("#reviewer", "Enter")
    tab.wait_for_url(base + "/")
    assert tab.locator(".reviewer").inner_text() == name


def by_listing(records: list[dict[str, Any]], listing_id: str) -> list[dict[str, Any]]:
    """The records of one listing."""
    return [r for r in records if r["listing_id"] == listing_id]


def test_review_an_item_by_keyboard(stack: Stack, page: Any, tmp_path: Path) -> None:
    shared = "b" * 64
    conflict = request_record(
        "B-1",
        uncertain=[
            low("colour", [("navy", 0.62), ("black", 0.31), ("blue", 0.05)], "DECLARED_CONFLICT", declared="black"),
            low("pattern", [("solid", 0.58), ("striped", 0.36)]),
        ],
        accepted=[model_value("type", "dress", 0.97), model_value("length", "knee", 0.91)],
        images=[stack.image("navy-dress.png", shared), stack.image("striped-dress.png", "c" * 64)],
        model_id=DEMO_MODEL,  # the service loads the demo model: Grad-CAM works for this one
    )
    conflict["title"] = "Midi wrap dress, navy — <b>summer</b> sale"
    same_image = request_record(
        "B-2",
        uncertain=[low("colour", [("navy", 0.58), ("black", 0.35)]), low("pattern", [("solid", 0.61)])],
        images=[stack.image("navy-dress.png", shared)],
    )
    other = request_record("B-3", images=[stack.image("black-dress.png", "d" * 64)])
    stack.publish(conflict, same_image, other)
    base = stack.review.api.base

    login(page, base)
    row = page.locator("tr[data-listing='B-1']")
    sync_api.expect(row).to_contain_text("Midi wrap dress, navy — <b>summer</b> sale")  # shown as text, not markup
    sync_api.expect(row).to_contain_text("declared conflict")
    assert page.locator(".count-block").first.inner_text().count("declared conflict") == 1
    screenshot(page, tmp_path, "review-queue.png")

    page.keyboard.press("r")  # start reviewing: conflicts come first
    page.wait_for_url(re.compile(r"/items/B-1$"))
    sync_api.expect(page.locator("fieldset.attr.focused .attr-name")).to_have_text("colour")
    sync_api.expect(page.locator("fieldset.attr.conflict .declared.disagrees")).to_contain_text("black")
    sync_api.expect(page.locator(".apply-to")).to_contain_text("1 other listing with the same image")
    overlay = page.locator("#gradcam-body img")
    sync_api.expect(overlay).to_have_attribute("alt", "Grad-CAM overlay for colour", timeout=GRADCAM_TIMEOUT_MS)
    page.locator("figure.zoomable img").first.evaluate("img => img.decode()")  # the image loaded
    assert page.locator("figure.zoomable.broken").count() == 0
    held = {row["listing_id"]: row["leased_by"] for row in stack.review.api.get("/api/queue")["items"]}
    assert held["B-1"] == "alice"

    with page.expect_request(lambda r: r.url.endswith("/api/items/B-1/heartbeat"), timeout=TIMEOUT_MS):
        pass  # the page renews its lease every ttl/3 seconds
    page.keyboard.press("2")  # colour: the second candidate, black (the merchant was right)
    sync_api.expect(page.locator("#attr-0 .choice")).to_contain_text("black (corrects the model)")
    page.keyboard.press("j")  # pattern: corrected with the value list
    sync_api.expect(page.locator("fieldset.attr.focused .attr-name")).to_have_text("pattern")
    page.locator("#attr-1 select").select_option("striped")
    page.locator("#attr-1").focus()
    sync_api.expect(page.locator("#attr-1 .choice")).to_contain_text("striped (corrects the model)")
    sync_api.expect(overlay).to_have_attribute("alt", "Grad-CAM overlay for pattern", timeout=GRADCAM_TIMEOUT_MS)
    page.keyboard.press("o")  # B-2 shows the same image: the same answers for it
    sync_api.expect(page.locator("#apply-to")).to_be_checked()
    screenshot(page, tmp_path, "review-item.png")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/items/B-3$"))  # the next item (B-2 was decided with B-1), claimed for us
    sync_api.expect(page.locator("#messages")).to_contain_text("Decided B-1 (colour = black; pattern = striped)")
    sync_api.expect(page.locator("#messages")).to_contain_text("applied to 1 more listing(s) with the same image")
    sync_api.expect(page.locator("#gradcam-body .placeholder")).to_contain_text(  # graceful without the model
        "No Grad-CAM overlay: model tiny@1+abc is not loaded here"
    )

    settings = stack.settings
    decisions = read_all(settings, settings.topics.decisions, "review_decision", expect=2)
    events = read_all(settings, settings.topics.attributes, "attribute_event", expect=2)
    for listing_id, applied_from in (("B-1", None), ("B-2", "B-1")):
        [decision] = by_listing(decisions, listing_id)
        answers = {d["name"]: d for d in decision["decisions"]}
        assert decision["reviewer"] == "alice" and decision["applied_from"] == applied_from
        assert answers["colour"]["values"] == ["black"] and answers["colour"]["action"] == "CORRECTED"
        assert answers["pattern"]["values"] == ["striped"] and answers["pattern"]["action"] == "CORRECTED"
        [event] = by_listing(events, listing_id)
        values = {(a["name"], a["value"]): a for a in event["attributes"]}
        assert values[("colour", "black")]["source"] == "HUMAN"
        assert values[("pattern", "striped")]["source"] == "HUMAN"
        assert ("colour", "navy") not in values
    [event] = by_listing(events, "B-1")
    assert {(a["name"], a["value"], a["source"]) for a in event["attributes"]} >= {("type", "dress", "MODEL")}


def test_skip_not_visible_accept_and_undo_by_keyboard(stack: Stack, page: Any) -> None:
    def neck(listing_id: str) -> dict[str, Any]:
        return request_record(listing_id, uncertain=[low("neck_type", [("v_neck", 0.6), ("round", 0.3)])],
                              images=[stack.image("navy-dress.png", "9" * 64)])

    stack.publish(neck("D-1"), neck("D-2"), neck("D-3"))
    base = stack.review.api.base
    login(page, base, "carol")
    page.goto(base + "/?attribute=neck_type")
    page.keyboard.press("r")
    page.wait_for_url(re.compile(r"/items/D-1\?attribute=neck_type$"))
    page.keyboard.press("s")  # skip: D-1 goes to someone else
    page.wait_for_url(re.compile(r"/items/D-2\?attribute=neck_type$"))
    sync_api.expect(page.locator("#messages")).to_contain_text("Skipped D-1")
    page.keyboard.press("n")
    sync_api.expect(page.locator("#attr-0 .choice")).to_have_text("→ not visible in the images")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/items/D-3\?attribute=neck_type$"))
    page.keyboard.press("a")  # accept the top candidate; nothing is left for carol (D-1 was skipped)
    page.wait_for_url(re.compile(r"/\?attribute=neck_type&done=empty$"))
    sync_api.expect(page.locator("#messages")).to_contain_text("Nothing left to review with these filters.")
    page.keyboard.press("u")  # undo: D-3 is back, leased to carol
    page.wait_for_url(re.compile(r"/items/D-3\?attribute=neck_type$"))
    sync_api.expect(page.locator("#messages")).to_contain_text("Undid the decision on D-3")
    sync_api.expect(page.locator("#lease")).to_have_text("yours")

    settings = stack.settings
    decisions = read_all(settings, settings.topics.decisions, "review_decision", expect=5)
    assert not by_listing(decisions, "D-1")
    [hidden] = by_listing(decisions, "D-2")
    assert [(d["name"], d["values"], d["action"]) for d in hidden["decisions"]] == [("neck_type", [], "NOT_VISIBLE")]
    accepted, undo = by_listing(decisions, "D-3")
    assert [(d["values"], d["action"]) for d in accepted["decisions"]] == [(["v_neck"], "CONFIRMED")]
    assert undo["undoes"] == accepted["event_id"] and undo["decisions"] == []


def test_bulk_grid_accepts_two_items(stack: Stack, page: Any) -> None:
    stack.publish(
        request_record("C-1", uncertain=[low("colour", [("navy", 0.91), ("blue", 0.05)])],
                       images=[stack.image("navy-dress.png", "e" * 64)]),
        request_record("C-2", uncertain=[low("colour", [("black", 0.86), ("grey", 0.1)])],
                       images=[stack.image("black-dress.png", "f" * 64)]),
    )
    base = stack.review.api.base
    login(page, base, "bob")
    page.goto(base + "/bulk")
    cards = page.locator("li.card")
    sync_api.expect(cards).to_have_count(2)
    sync_api.expect(page.locator("#checked-count")).to_have_text("2")
    sync_api.expect(page.locator("li.card[data-listing='C-1'] .proposals")).to_contain_text("colour: navy 91%")
    page.keyboard.press("a")
    sync_api.expect(page.locator("li.card.done")).to_have_count(2)
    sync_api.expect(page.locator("#messages")).to_contain_text("Accepted 2 items")

    settings = stack.settings
    decisions = read_all(settings, settings.topics.decisions, "review_decision", expect=7)
    for listing_id, value in (("C-1", "navy"), ("C-2", "black")):
        [decision] = by_listing(decisions, listing_id)
        assert decision["reviewer"] == "bob"
        answers = [(d["name"], d["values"], d["action"]) for d in decision["decisions"]]
        assert answers == [("colour", [value], "CONFIRMED")]
    assert stack.review.api.get("/api/bulk")["items"] == []
