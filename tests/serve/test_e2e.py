"""The page in a real headless Chromium (Debian's package, driven by Playwright)."""

import io
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from benchmarks.browser import CHROMIUM, DESKTOP, PHONE, chromium, live_server, open_page
from PIL import Image

import ddim
from ddim.serve import Limits, create_app
from ddim.serve.images import data_url
from ddim.toy import GLYPH_NAMES, toy_model

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)"
)
TOY_LIMITS = Limits(max_n=16, max_steps=50)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    """The analytic toy model (32×32 glyphs: never blank when sampled right)."""
    with live_server(create_app(ddim.load("toy"), TOY_LIMITS, name="toy")) as base:
        yield base


@pytest.fixture(scope="module")
def conditional_url() -> Iterator[str]:
    """The class-conditional toy model: one class per glyph."""
    with live_server(create_app(toy_model(conditional=True), TOY_LIMITS, name="toy-cond")) as base:
        yield base


@pytest.fixture
def page(url):
    with chromium() as browser:
        yield open_page(browser, url, DESKTOP)


def not_blank(png: bytes) -> np.ndarray:
    """The screenshot as grey pixels, after checking that it shows more than one flat colour."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)
    assert pixels.std() > 20, f"blank image: std {pixels.std():.1f}"
    assert (pixels > 128).mean() > 0.02
    assert (pixels < 128).mean() > 0.02
    return pixels


def test_press_sample_watch_it_denoise_and_get_the_final_images(page, tmp_path):
    form = page.locator("#sample-form")
    form.locator("input[name=steps]").fill("40")
    form.locator("input[name=n]").fill("4")
    # record every state and image the section goes through: a fast machine finishes in
    # milliseconds, too quick to catch "running" by polling for it
    page.evaluate("""() => {
      const section = document.querySelector('#sample'), image = document.querySelector('#sample-image');
      window.seen = [];
      new MutationObserver(() => window.seen.push([section.dataset.state, image.alt]))
        .observe(section, {attributes: true, subtree: true});
    }""")
    page.click("#sample-button")
    page.wait_for_selector("#sample-image[data-final=true]", timeout=60_000)
    seen = page.evaluate("window.seen")
    assert any(state == "running" for state, _ in seen)
    assert any(alt.startswith("step ") for _, alt in seen)  # previews were shown while it denoised
    status = page.inner_text("#sample-status")
    assert status.startswith("4 images, 40 steps in ")
    assert "per step" in status
    assert page.get_attribute("#sample", "data-state") == "done"
    not_blank(page.locator("#sample-image").screenshot(path=tmp_path / "sample-image.png"))
    page.screenshot(path=tmp_path / "page.png", full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 0


def test_bad_input_is_shown_not_thrown(page):
    page.locator("#sample-form input[name=n]").fill("17")  # over max_n
    page.evaluate("document.querySelector('#sample-form').noValidate = true")  # let the server judge
    page.click("#sample-button")
    page.wait_for_selector("#sample[data-state=error]")
    assert page.inner_text("#sample-status") == "error: n: Input should be less than or equal to 16"


def test_interpolation_slider_by_keyboard(page, tmp_path):
    form = page.locator("#interpolate-form")
    form.locator("input[name=frames]").fill("5")
    form.locator("input[name=steps]").press("Enter")  # submit from the keyboard
    page.wait_for_selector("#interpolate[data-state=done]", timeout=60_000)
    first = page.get_attribute("#interpolate-image", "src")
    not_blank(page.locator("#interpolate-image").screenshot(path=tmp_path / "frame-1.png"))
    slider = page.locator("#frame-slider")
    slider.focus()
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    assert page.inner_text("#frame-label") == "5 / 5 (α = 1.00)"
    assert page.get_attribute("#interpolate-image", "src") != first
    not_blank(page.locator("#interpolate-image").screenshot(path=tmp_path / "frame-5.png"))


def test_readable_on_a_phone(url):
    with chromium() as browser:
        page = open_page(browser, url, PHONE)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        font = page.evaluate("parseFloat(getComputedStyle(document.querySelector('label')).fontSize)")
        button = page.locator("#sample-button").bounding_box()
    assert overflow <= 0  # nothing wider than the screen
    assert font >= 12
    assert button["height"] >= 40  # a finger-sized target


def test_an_unconditional_model_shows_no_class_or_guidance(page):
    for form in ("#sample-form", "#interpolate-form"):
        for name in ("classes", "guidance"):
            field = page.locator(f"{form} [name={name}]")
            assert not field.is_visible()
            assert field.is_disabled()  # so the form never sends it


def test_a_class_and_guidance_chosen_on_the_page_reach_the_sampler(conditional_url):
    body = {"n": 4, "steps": 5, "seed": 2, "classes": 3, "guidance": 2.5}
    with chromium() as browser:
        page = open_page(browser, conditional_url, DESKTOP)
        form = page.locator("#sample-form")
        options = form.locator("select[name=classes] option").all_inner_texts()
        assert options == ["unconditional", *GLYPH_NAMES]
        assert form.locator("input[name=guidance]").is_disabled()  # no class chosen: nothing to guide
        form.locator("select[name=classes]").select_option(label=GLYPH_NAMES[3])
        form.locator("input[name=guidance]").fill("2.5")
        for name in ("steps", "n", "seed"):
            form.locator(f"input[name={name}]").fill(str(body[name]))
        page.click("#sample-button")
        page.wait_for_selector("#sample-image[data-final=true]", timeout=60_000)
        shown = page.get_attribute("#sample-image", "src")
    expected = httpx.post(f"{conditional_url}/api/sample", json=body, timeout=60)
    assert expected.status_code == 200
    assert shown == data_url(expected.content)


def test_a_solver_with_logsnr_spacing_sends_no_eta(page, url):
    form = page.locator("#sample-form")
    samplers = form.locator("select[name=sampler] option").all_inner_texts()
    assert samplers == ["ddim", "ddpm", "ddpm-large", "dpm-solver++", "dpm-solver++3m", "unipc", "plms"]
    form.locator("select[name=sampler]").select_option("plms")
    assert form.locator("input[name=eta]").is_disabled()  # η is for ddim only
    form.locator("select[name=spacing]").select_option("logsnr")
    for name, value in (("steps", "6"), ("n", "2"), ("seed", "4")):
        form.locator(f"input[name={name}]").fill(value)
    page.click("#sample-button")
    page.wait_for_selector("#sample-image[data-final=true]", timeout=60_000)
    body = {"n": 2, "steps": 6, "seed": 4, "sampler": "plms", "spacing": "logsnr"}
    expected = httpx.post(f"{url}/api/sample", json=body, timeout=60)
    assert page.get_attribute("#sample-image", "src") == data_url(expected.content)


# -- issue 24: the page's rough edges ----------------------------------------------------------


def watch_status(page) -> None:
    """Record every text #sample-status shows, in window.statuses."""
    page.evaluate("""() => {
      const status = document.querySelector('#sample-status');
      window.statuses = [];
      new MutationObserver(() => window.statuses.push(status.textContent))
        .observe(status, {childList: true, characterData: true, subtree: true});
    }""")


def sample_on_page(page, **fields) -> None:
    form = page.locator("#sample-form")
    for name, value in fields.items():
        field = form.locator(f"[name={name}]")
        field.select_option(value) if name in ("sampler", "spacing") else field.fill(value)
    page.click("#sample-button")
    page.wait_for_selector("#sample[data-state=done]", timeout=60_000)


def test_results_download_history_url_settings_eta_and_focus(page, url):
    form = page.locator("#sample-form")
    eta = form.locator("input[name=eta]")
    eta.fill("0.15")  # the API takes any η in [0, 1]: so does the page
    assert page.evaluate("document.querySelector('#sample-form [name=eta]').checkValidity()")
    watch_status(page)
    sample_on_page(page, steps="7", n="2", seed="3")
    assert any(s.endswith(" s left") for s in page.evaluate("window.statuses"))  # an ETA while sampling
    assert page.evaluate("document.activeElement.id") == "sample-button"  # focus not lost to <body>
    first = page.get_attribute("#sample-image", "src")
    download = page.locator("#sample-download")
    assert download.is_visible()
    assert (download.get_attribute("href"), download.get_attribute("download")) == (first, "ddim-samples.png")
    assert {"steps=7", "seed=3", "eta=0.15"} <= set(page.url.split("?")[1].split("&"))  # shareable
    sample_on_page(page, seed="4")
    history = page.locator("#history button")
    assert history.count() == 2
    history.nth(1).click()  # the older result comes back
    assert page.get_attribute("#sample-image", "src") == first
    shared = open_page(page.context.browser, page.url, DESKTOP)  # the shared URL restores the settings
    values = {n: shared.locator(f"#sample-form [name={n}]").input_value() for n in ("steps", "seed", "eta")}
    assert values == {"steps": "7", "seed": "4", "eta": "0.15"}
    form.locator("select[name=sampler]").select_option("plms")
    assert (eta.input_value(), eta.get_attribute("placeholder")) == ("", "0")  # no stale η shown
    form.locator("select[name=sampler]").select_option("ddim")
    assert eta.input_value() == "0.15"


def test_steps_a_spacing_merges_are_shown_and_errors_clear_the_old_result(page):
    sample_on_page(page, steps="50", n="1", spacing="quadratic")
    assert "49 steps (50 asked: the quadratic spacing repeats timesteps)" in page.inner_text("#sample-status")
    page.locator("#sample-form input[name=n]").fill("17")  # over max_n
    page.evaluate("document.querySelector('#sample-form').noValidate = true")
    page.click("#sample-button")
    page.wait_for_selector("#sample[data-state=error]")
    assert not page.locator("#sample-image").is_visible()  # not left under the error as if it were its answer
    assert not page.locator("#sample-download").is_visible()


def test_a_busy_server_is_said_once_and_seeds_are_bounded(page):
    message = "the job queue is full; retry after 3 s"
    page.route("**/api/sample/stream", lambda route: route.fulfill(
        status=429, headers={"Retry-After": "3"}, content_type="application/json",
        body=f'{{"message": "{message}"}}'))  # fmt: skip
    page.click("#sample-button")
    page.wait_for_selector("#sample[data-state=error]")
    assert page.inner_text("#sample-status") == f"error: {message}"
    for name in (
        "#sample-form [name=seed]",
        "#interpolate-form [name=seed_a]",
        "#interpolate-form [name=seed_b]",
    ):
        assert page.get_attribute(name, "max") == str(2**32 - 1)


def test_interpolation_time_includes_the_wait_and_frames_download(page):
    page.click("#interpolate-button")
    page.wait_for_selector("#interpolate[data-state=done]", timeout=60_000)
    assert " s computing): move the slider" in page.inner_text("#interpolate-status")
    assert page.get_attribute("#interpolate-download", "href") == page.get_attribute(
        "#interpolate-image", "src"
    )


def contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two CSS rgb() colours."""

    def luminance(css: str) -> float:
        channels = [int(v) / 255 for v in css[css.index("(") + 1 : css.index(")")].split(",")[:3]]
        r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_text_contrast_is_at_least_wcag_aa_in_both_schemes(url, scheme):
    canvas = {"light": "rgb(255, 255, 255)", "dark": "rgb(18, 18, 18)"}[scheme]  # Chromium's canvas
    with chromium() as browser:
        page = open_page(browser, url, {**DESKTOP, "color_scheme": scheme})
        style = (
            "(s) => ['color', 'backgroundColor'].map((p) => getComputedStyle(document.querySelector(s))[p])"
        )
        button = page.evaluate(style, "#sample-button")
        stop = page.evaluate(style, "#stop-button")[0]
        page.evaluate("document.querySelector('#sample-status').classList.add('error')")
        error = page.evaluate(style, "#sample-status")[0]
    assert contrast(*button) >= 4.5  # the primary buttons' text (2.07:1 in dark mode before)
    assert contrast(stop, canvas) >= 4.5
    assert contrast(error, canvas) >= 4.5


def test_the_page_has_an_icon(url):
    r = httpx.get(f"{url}/favicon.ico")
    assert (r.status_code, r.headers["content-type"]) == (200, "image/x-icon")
    assert Image.open(io.BytesIO(r.content)).size == (32, 32)
