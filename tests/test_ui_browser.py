"""End to end in a real headless Chromium (Debian's, driven by Playwright): `dreambooth ui` is
started as a user starts it; the test uploads photos, trains the micro world for a few steps, sees
progress and a validation preview, stops and resumes the run (closing the page in between), renders
a gallery, and saves a screenshot of each step (to DREAMBOOTH_UI_SCREENSHOTS when set: docs/ui.md)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (`apt-get install -y chromium`; .ci/run installs it)")
STEPS = 25          # enough steps that Stop (pressed at step 4 or later) lands mid-run on a fast machine too
SLOW = 600_000      # ms: model loading on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "dreambooth", "ui", "--work-dir", str(tmp_path / "work"),
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=tmp_path)
    first = proc.stdout.readline()
    assert first.startswith("dreambooth UI at http://127.0.0.1:"), first + proc.stdout.read()[-3000:]
    yield re.search(r"http://\S+", first).group(0), tmp_path / "work"
    proc.terminate()
    proc.wait(120)


def shoot(page, name, tmp_path):
    path = tmp_path / f"ui-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("DREAMBOOTH_UI_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["DREAMBOOTH_UI_SCREENSHOTS"]) / path.name)


def field(page, name):
    return page.locator(f"#field-{name}").locator("textarea, input").first


def test_photos_train_stop_resume_gallery(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright
    from dreambooth.world.subjects import get_subject, write_photos
    url, work = server
    expect.set_options(timeout=SLOW)
    photos = write_photos(get_subject("striped_star"), 4, tmp_path / "upload")   # (their .txt captions not uploaded)
    junk = tmp_path / "upload" / "notes.md"     # not .txt: that is a caption file, no longer junk
    junk.write_text("not a photo")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(SLOW)
        page.goto(url)
        expect(page.locator("#db-header")).to_contain_text("No run yet")

        # Photos: four used, the text file skipped with intake's reason, and the crops shown
        page.locator("#db-upload input[type=file]").set_input_files([str(p) for p in photos] + [str(junk)])
        expect(page.locator("#db-photo-msg")).to_contain_text("4 photos used, 1 skipped")
        expect(page.locator("#db-photo-table")).to_contain_text("not an image")
        shoot(page, "1-photos", tmp_path)

        # Settings: the main ones, then validation under Advanced (generated from the config tree)
        page.get_by_role("tab", name="Settings").click()
        field(page, "class_name").fill("star")
        field(page, "max_train_steps").fill(str(STEPS))
        field(page, "sr_model").fill("none")
        page.locator("#field-with_prior_preservation input[type=checkbox]").uncheck()
        field(page, "validation_prompt").fill("a <id> star on the beach")
        page.get_by_text("Advanced (every other setting").click()
        for name, value in (("validation_steps", "4"), ("num_validation_images", "1"),
                            ("validation_inference_steps", "4")):
            field(page, name).fill(value)
        shoot(page, "2-settings", tmp_path)

        # Train: the plan, progress with loss and speed, a preview; then Stop
        page.get_by_role("tab", name="Train").click()
        page.locator("#db-train").click()
        expect(page.locator("#db-plan textarea")).to_have_value(re.compile("identifier"))
        expect(page.locator("#db-step")).to_have_text(re.compile(r"^([4-9]|\d\d+)$"))
        expect(page.locator("#db-previews img").first).to_be_visible()
        expect(page.locator("#db-progress")).to_contain_text("it/s")
        shoot(page, "3-training", tmp_path)
        page.locator("#db-stop").click()
        expect(page.locator("#db-status")).to_contain_text("stopped")
        expect(page.locator("#db-status")).to_contain_text("checkpoint")
        run = next((work / "runs").iterdir())
        assert list(run.glob("model/checkpoint-*")), "Stop saved no checkpoint"
        assert not (run / "model" / "model_index.json").exists()
        shoot(page, "4-stopped", tmp_path)

        # Resume, close the page mid-run, reopen: the run went on and the page shows it
        page.locator("#db-resume").click()
        expect(page.locator("#db-status")).to_contain_text("running")
        page.close()
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(SLOW)
        page.goto(url)
        page.get_by_role("tab", name="Train").click()
        expect(page.locator("#db-header")).to_contain_text(run.name)
        expect(page.locator("#db-status")).to_contain_text("done")
        expect(page.locator("#db-step")).to_have_text(str(STEPS))
        assert "Resumed from" in (run / "log.txt").read_text()
        shoot(page, "5-resumed-done", tmp_path)

        # Results: a gallery for prompts with <id>; the model zip; the run in the list
        page.get_by_role("tab", name="Results").click()
        page.locator("#db-prompts textarea").fill("a <id> star on the beach")
        page.locator("#db-n input[type=number]").fill("2")
        page.locator("#db-n input[type=number]").press("Enter")
        page.locator("#db-steps input[type=number]").fill("5")
        page.locator("#db-steps input[type=number]").press("Enter")
        page.locator("#db-render").click()
        expect(page.locator("#db-gallery img")).to_have_count(2)
        page.get_by_text("Prepare downloads").click()
        expect(page.locator("#db-results-msg")).to_contain_text(f"{run.name}-model.zip")
        shoot(page, "6-gallery", tmp_path)
        browser.close()
